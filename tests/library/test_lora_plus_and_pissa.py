"""LoRA+ parameter groups and PiSSA initialisation, each compared with PEFT on the same weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lora_basics as lora
from lora_basics.lora_plus import lora_plus_param_groups
from lora_basics.pissa import init_pissa


def model_with_lora():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return lora.add_lora(model, ["0", "2"], r=2, lora_alpha=4)


def test_lora_plus_gives_B_ratio_times_the_learning_rate_of_A():
    model = model_with_lora()
    groups = lora_plus_param_groups(model, lr=1e-3, ratio=16)
    rate = {id(p): group["lr"] for group in groups for p in group["params"]}
    named = dict(model.named_parameters())
    assert rate[id(named["0.lora_A"])] == 1e-3 and rate[id(named["0.lora_B"])] == pytest.approx(1.6e-2)
    assert set(rate) == {id(p) for p in model.parameters() if p.requires_grad}  # frozen weights left out
    optimizer = torch.optim.AdamW(groups)  # any torch optimizer takes them
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([1e-3, 1.6e-2])
    with pytest.raises(ValueError, match="ratio must be a positive number"):
        lora_plus_param_groups(model, lr=1e-3, ratio=0)


def test_lora_plus_rates_equal_peft_create_loraplus_optimizer():
    peft = pytest.importorskip("peft")
    from peft.optimizers import create_loraplus_optimizer

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    theirs = peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"]))
    optimizer = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16)
    their_rate = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            their_rate[param.shape, "lora_B" if param.shape[-1] == 2 else "lora_A"] = group["lr"]
    ours = model_with_lora()
    our_rate = {}
    named = {id(p): n for n, p in ours.named_parameters()}
    for group in lora_plus_param_groups(ours, lr=1e-3, ratio=16):
        for param in group["params"]:
            our_rate[param.shape, named[id(param)].split(".")[-1]] = group["lr"]
    assert our_rate == pytest.approx(their_rate)


@pytest.mark.parametrize("fan_in_fan_out", [False, True])
def test_pissa_starts_at_the_pretrained_function_with_the_principal_part_in_B_A(fan_in_fan_out):
    torch.manual_seed(0)
    layer = lora.Linear(12, 10, r=3, lora_alpha=6, fan_in_fan_out=fan_in_fan_out)
    W0 = layer.weight_out_in().detach().clone()
    x = torch.randn(5, 12)
    before = nn.functional.linear(x, W0, layer.bias)
    init_pissa(layer)
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)
    U, S, Vh = torch.linalg.svd(W0)
    principal = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]
    torch.testing.assert_close(layer.delta_weight() if not fan_in_fan_out else layer.delta_weight().t(), principal)
    # The residual has the other singular values: the top three moved into B A.
    torch.testing.assert_close(torch.linalg.svdvals(layer.weight_out_in())[:7], S[3:], rtol=1e-4, atol=1e-5)


def test_pissa_equals_peft_on_the_same_weights():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(12, 10))
    theirs = peft.get_peft_model(
        base, peft.LoraConfig(r=3, lora_alpha=6, target_modules=["0"], init_lora_weights="pissa")
    )
    torch.manual_seed(0)
    ours = init_pissa(lora.Linear.from_module(nn.Linear(12, 10), r=3, lora_alpha=6))
    peft_layer = theirs.base_model.model[0]
    torch.testing.assert_close(ours.lora_A, peft_layer.lora_A["default"].weight, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.lora_B, peft_layer.lora_B["default"].weight, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.weight, peft_layer.base_layer.weight, rtol=0, atol=1e-5)
    x = torch.randn(4, 12)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)


def test_pissa_refuses_what_it_cannot_initialise():
    with pytest.raises(TypeError, match="PiSSA initialises lora_basics.Linear"):
        init_pissa(lora.Embedding(10, 4, r=2))
    with pytest.raises(ValueError, match="r > 0"):
        init_pissa(lora.Linear(4, 4, r=0))
    with pytest.raises(ValueError, match="unmerged"):
        init_pissa(lora.Linear(4, 4, r=2).eval())
