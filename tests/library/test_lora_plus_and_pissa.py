"""LoRA+ parameter groups and PiSSA initialisation (by hand and through add_lora), each compared with PEFT on
the same weights."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lora_basics as lora
from lora_basics.adapter_file import _check_base, read_adapter
from lora_basics.lora_plus import lora_plus_param_groups
from lora_basics.pissa import init_pissa
from tests.helpers import base_model, randomize_lora, tokens


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


# -- PiSSA through add_lora -------------------------------------------------------------------------


def test_add_lora_with_pissa_keeps_what_the_model_computes_and_changes_the_frozen_weights():
    base = base_model()
    expected = base(tokens())
    model = lora.add_lora(copy.deepcopy(base), ["c_attn", "lm_head"], r=2, lora_alpha=4, init_lora_weights="pissa")
    torch.testing.assert_close(model(tokens()), expected, rtol=0, atol=1e-5)
    layer = model.get_submodule("h.0.attn.c_attn").train()  # unmerged: the frozen weight itself
    assert layer.init_lora_weights == "pissa" and layer.fan_in_fan_out  # the tiny GPT's Conv1D
    original = base.get_submodule("h.0.attn.c_attn").weight
    assert not torch.allclose(layer.weight, original, atol=1e-3)  # the residual, not W0
    # Exactly what init_pissa does to that layer alone.
    alone = init_pissa(
        lora.Linear.from_module(copy.deepcopy(base.h[0].attn.c_attn), fan_in_fan_out=True, r=2, lora_alpha=4)
    )
    torch.testing.assert_close(layer.weight, alone.weight)
    torch.testing.assert_close(layer.lora_B, alone.lora_B)


def test_add_lora_with_pissa_refuses_other_layer_types_and_leaves_the_model_as_it_was():
    model = base_model()
    before = copy.deepcopy(model.state_dict())
    for targets, settings, module in (
        (["c_attn", "wte"], {}, "wte"),
        (["c_attn"], {"enable_lora": {"c_attn": [True, False, True]}}, "h.0.attn.c_attn"),
        (["c_fc"], {"quantize_base": "nf4"}, "h.0.mlp.c_fc"),
    ):
        with pytest.raises(
            TypeError, match=f"cannot add LoRA to module '{module}' .*PiSSA initialises lora_basics.Linear"
        ):
            lora.add_lora(model, targets, init_lora_weights="pissa", **settings)
    assert not lora.lora_layers(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="init_lora_weights must be True .* or 'pissa', got 'gaussian'"):
        lora.add_lora(model, ["c_attn"], init_lora_weights="gaussian")


def test_a_pissa_adapter_is_refused_on_an_unmodified_base(tmp_path):
    model = lora.add_lora(base_model().train(), ["c_attn"], r=2, lora_alpha=4, init_lora_weights="pissa")
    randomize_lora(model, std=0.3)
    model.eval()
    expected = model(tokens())
    lora.save_adapter(model, tmp_path / "pissa.pt")
    assert lora.adapter_settings(model)["h.0.attn.c_attn"]["init_lora_weights"] == "pissa"
    base = base_model()
    with pytest.raises(ValueError, match="trained on PiSSA-initialised layers .* cannot restore the model"):
        lora.load_adapter(base, tmp_path / "pissa.pt")
    assert not lora.lora_layers(base)
    # The base fingerprint would have caught it as well: the residuals are other weights than W0.
    with pytest.raises(ValueError, match="wrong base model: the adapter was trained on other pretrained weights"):
        _check_base(read_adapter(tmp_path / "pissa.pt"), base)
    # The model that holds the residuals takes it (switching adapters on it works as on any model).
    randomize_lora(model.train(), std=0.1, seed=5)
    lora.load_adapter(model, tmp_path / "pissa.pt")
    torch.testing.assert_close(model.eval()(tokens()), expected)
