"""QLoRALinear: LoRA on a frozen NF4 base, compared with PEFT's LoRA on a bitsandbytes Linear4bit (both on
CPU here), and through add_lora on the tiny GPT: same outputs as LoRA on the dequantized base, no merging,
adapters, export, and state dicts that carry the 4-bit weight."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lora_basics as lora
from lora_basics.nf4 import dequantize_nf4, quantize_nf4, storage_bytes
from tests.helpers import base_model, randomize_lora, tokens

# bitsandbytes 0.50's CPU dequantize_4bit misplaces blocks when rows are a multiple of 16 long but not of
# 64 (its AVX-512 path; see test_nf4.py). The shapes compared with it avoid that: rows (in_features) of
# 128 (a multiple of 64) and of 72 (not a multiple of 16, so 64-blocks straddle rows, the general case).
BNB_SHAPES = [(128, 48), (72, 40)]


def peft_on_linear4bit(linear: nn.Linear, double_quant: bool, compute_dtype: torch.dtype, r: int = 4):
    """PEFT's LoRA on a bitsandbytes ``Linear4bit`` (NF4) holding ``linear``'s weight and bias."""
    instead = "test_forward_is_lora_on_the_dequantized_weight checks the layer against dequantize + F.linear instead"
    bnb = pytest.importorskip("bitsandbytes", reason=f"bitsandbytes is not installed; {instead}")
    peft = pytest.importorskip("peft", reason=f"peft is not installed; {instead}")
    quantized = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        compute_dtype=compute_dtype,
        quant_type="nf4",
        compress_statistics=double_quant,
    )
    quantized.weight = bnb.nn.Params4bit(
        linear.weight.detach().clone(), requires_grad=False, quant_type="nf4", compress_statistics=double_quant
    )
    quantized.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    model = nn.Sequential(quantized.to("cpu"))  # .to() quantizes the weight
    model.is_loaded_in_4bit = True  # what transformers sets: PEFT then wraps it in its bnb Linear4bit layer
    theirs = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["0"]))
    assert type(theirs.base_model.model[0]).__module__ == "peft.tuners.lora.bnb"
    return theirs, theirs.base_model.model[0]


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("double_quant", [False, True], ids=["nf4", "nf4-dq"])
@pytest.mark.parametrize("shape", BNB_SHAPES, ids=lambda s: f"{s[0]}->{s[1]}")
def test_qlora_equals_peft_lora_on_a_bitsandbytes_linear4bit(shape, double_quant, compute_dtype):
    torch.manual_seed(0)
    linear = nn.Linear(*shape)
    with torch.no_grad():
        linear.weight.normal_(std=0.05)
    theirs, theirs_layer = peft_on_linear4bit(linear, double_quant, compute_dtype)
    ours = lora.QLoRALinear.from_module(
        linear, r=4, lora_alpha=8, double_quant=double_quant, compute_dtype=compute_dtype
    )
    # The same 4-bit weight: our codes and statistics are bitsandbytes' (test_nf4.py), so the layers match.
    assert torch.equal(ours.weight_packed, theirs_layer.base_layer.weight.view(-1))
    randomize_lora(ours, std=0.2)
    with torch.no_grad():
        theirs_layer.lora_A["default"].weight.copy_(ours.lora_A)
        theirs_layer.lora_B["default"].weight.copy_(ours.lora_B)
    x = torch.randn(3, 5, shape[0])
    y_ours, y_theirs = ours(x), theirs(x)
    target = torch.randn_like(y_ours)
    nn.functional.mse_loss(y_ours, target).backward()
    nn.functional.mse_loss(y_theirs, target).backward()
    differences = {
        "output": (y_ours - y_theirs).abs().max().item(),
        "lora_A.grad": (ours.lora_A.grad - theirs_layer.lora_A["default"].weight.grad).abs().max().item(),
        "lora_B.grad": (ours.lora_B.grad - theirs_layer.lora_B["default"].weight.grad).abs().max().item(),
    }
    print(
        f"QLoRA vs PEFT on bnb Linear4bit {shape}: largest differences", {k: f"{v:.2e}" for k, v in differences.items()}
    )
    assert max(differences.values()) <= 1e-5


def test_forward_is_lora_on_the_dequantized_weight():
    torch.manual_seed(0)
    linear = nn.Linear(72, 40)
    ours = randomize_lora(lora.QLoRALinear.from_module(linear, r=4, lora_alpha=8))
    W_hat = dequantize_nf4(quantize_nf4(linear.weight.detach()))
    assert 0 < (W_hat - linear.weight).norm() / linear.weight.norm() < 0.15  # close, not equal
    x = torch.randn(6, 72, requires_grad=True)
    expected = nn.functional.linear(x, W_hat, linear.bias) + ours.scaling * x @ ours.lora_A.T @ ours.lora_B.T
    torch.testing.assert_close(ours(x), expected)
    ours(x).sum().backward()  # the input gradient flows through the 4-bit base
    torch.testing.assert_close(x.grad, (W_hat + ours.scaling * ours.lora_B @ ours.lora_A).sum(dim=0).expand(6, -1))


@pytest.mark.parametrize("quantize_base", ["nf4", "nf4-dq"])
def test_add_lora_quantizes_the_tiny_gpt_and_computes_lora_on_the_dequantized_base(quantize_base, tmp_path):
    targets = ["c_attn", "c_proj", "c_fc", "lm_head"]  # Conv1D (weight (in, out); attn.c_proj square) and nn.Linear
    model = lora.add_lora(base_model(), targets, r=2, lora_alpha=4, quantize_base=quantize_base)
    layer = model.get_submodule("h.0.attn.c_attn")
    assert isinstance(layer, lora.QLoRALinear) and layer.fan_in_fan_out and not layer.merge_weights
    assert layer.quant_format == quantize_base and not model.training and not layer.merged  # eval(): no merge
    # The reference: the same model with each target's weight replaced by its dequantized NF4 (quantized
    # in the (out, in) layout) and plain LoRA layers holding the same factors.
    reference = base_model()
    with torch.no_grad():
        for name, module in reference.named_modules():
            if any(name.endswith(t) for t in targets):
                fifo = not isinstance(module, nn.Linear)
                W = module.weight.t() if fifo else module.weight
                W_hat = dequantize_nf4(quantize_nf4(W.detach(), double_quant=quantize_base == "nf4-dq"))
                module.weight.copy_(W_hat.t() if fifo else W_hat)
    reference = lora.add_lora(reference, targets, r=2, lora_alpha=4)
    randomize_lora(model, std=0.3)
    randomize_lora(reference.train(), std=0.3)
    torch.testing.assert_close(model(tokens()), reference.eval()(tokens()))
    # It trains: one step moves the loss, and only LoRA factors get gradients.
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(tokens()).flatten(0, 1), tokens().flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]
    assert {n for n, p in model.named_parameters() if p.grad is not None} == set(lora.lora_parameter_names(model))
    # Adapter files reproduce it on a fresh base; export gives a plain model with Ŵ + ΔW.
    model.eval()
    expected = model(tokens())
    lora.save_adapter(model, tmp_path / "qlora.pt")
    loaded = lora.load_adapter(base_model(), tmp_path / "qlora.pt")
    assert loaded.get_submodule("h.1.mlp.c_fc").quant_format == quantize_base
    torch.testing.assert_close(loaded(tokens()), expected)
    exported = lora.merge_and_export(model)
    assert type(exported.get_submodule("h.0.attn.c_attn")) is type(base_model().get_submodule("h.0.attn.c_attn"))
    torch.testing.assert_close(exported(tokens()), expected, rtol=1e-5, atol=1e-5)


def test_the_4bit_weight_is_a_buffer_that_moves_saves_and_loads():
    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    layer = lora.QLoRALinear.from_module(linear, r=4, double_quant=True)
    state = layer.state_dict()
    assert {k for k in state if k.startswith("weight_")} == {
        "weight_packed",
        "weight_absmax_codes",
        "weight_absmax_scale",
        "weight_absmax_offset",
    }
    assert state["weight_packed"].dtype == torch.uint8 and state["weight_packed"].numel() == 128 * 64 // 2
    stored = sum(t.numel() * t.element_size() for k, t in state.items() if k.startswith("weight_"))
    assert stored == storage_bytes(128 * 64, "nf4-dq")
    fresh = lora.QLoRALinear(128, 64, r=4, double_quant=True)
    fresh.load_state_dict(state)
    x = torch.randn(2, 128)
    torch.testing.assert_close(fresh(x), layer(x))
    # A full-precision checkpoint (nn.Linear's weight and bias) is quantized on load.
    from_checkpoint = lora.QLoRALinear(128, 64, r=4, double_quant=True)
    from_checkpoint.load_state_dict(linear.state_dict(), strict=False)
    torch.testing.assert_close(from_checkpoint(x), layer(x))
    # .to(dtype) casts the bias and the factors, never the 4-bit weight or its statistics.
    W_hat = layer.dequantized_weight()
    layer.to(torch.bfloat16)
    assert layer.weight_absmax_scale.dtype == torch.float32 and layer.lora_A.dtype == torch.bfloat16
    assert torch.equal(layer.dequantized_weight(), W_hat)


def test_a_conv1d_checkpoint_loads_into_a_fan_in_fan_out_layer():
    torch.manual_seed(0)
    conv1d = base_model().h[0].attn.c_proj  # GPT-2's Conv1D, weight (in, out) = (16, 16)
    from_module = lora.QLoRALinear.from_module(conv1d, fan_in_fan_out=True, r=2)
    from_checkpoint = lora.QLoRALinear(16, 16, r=2, fan_in_fan_out=True)
    from_checkpoint.load_state_dict(conv1d.state_dict(), strict=False)
    assert torch.equal(from_checkpoint.weight_packed, from_module.weight_packed)
    x = torch.randn(3, 16)
    torch.testing.assert_close(from_checkpoint(x), conv1d(x), rtol=0, atol=0.05)  # up to the quantization error
    torch.testing.assert_close(from_checkpoint.frozen_weight, conv1d.weight, rtol=0, atol=0.05)
    with pytest.raises(ValueError, match=r"needs a weight of shape \(16, 16\), \(in, out\) as fan_in_fan_out=True"):
        from_checkpoint.quantize_weight(torch.zeros(16, 17))


def test_trainable_summary_counts_the_4bit_weights():
    model = lora.add_lora(base_model(), ["c_fc"], r=2, quantize_base="nf4")
    plain = lora.add_lora(base_model(), ["c_fc"], r=2)
    assert lora.parameter_counts(model) == lora.parameter_counts(plain)


def test_what_a_4bit_base_cannot_do_is_refused():
    with pytest.raises(ValueError, match="QLoRALinear needs merge_weights=False"):
        lora.QLoRALinear(64, 8, r=2, merge_weights=True)
    with pytest.raises(ValueError, match="QLoRALinear does not merge"):
        lora.QLoRALinear(64, 8, r=2).merge()
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        lora.QLoRALinear(64, 8, r=2, compute_dtype=torch.int8)
    model = base_model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TypeError, match="cannot add LoRA to module 'wte' .*quantizes linear layers"):
        lora.add_lora(model, ["c_fc", "wte"], quantize_base="nf4")
    with pytest.raises(TypeError, match="cannot add LoRA to module 'h.0.attn.c_attn' .*without enable_lora"):
        lora.add_lora(model, ["c_attn"], quantize_base="nf4", enable_lora={"c_attn": [True, False, True]})
    with pytest.raises(ValueError, match="cannot add LoRA to module 'h.0.mlp.c_fc' .*merge_weights=False"):
        lora.add_lora(model, ["c_fc"], quantize_base="nf4", merge_weights=True)
    with pytest.raises(ValueError, match="does not support use_dora=True"):
        lora.add_lora(model, ["c_fc"], quantize_base="nf4", use_dora=True)
    with pytest.raises(ValueError, match=r"quantize_base must be None or one of \('nf4', 'nf4-dq'\), got 'int4'"):
        lora.add_lora(model, ["c_fc"], quantize_base="int4")
    assert not lora.lora_layers(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
