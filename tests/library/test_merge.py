"""Merge on eval: exactness, the state machine, drift, and safe state dicts."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import lora_basics as lora
from tests.helpers import LAYER_KINDS, make_layer, randomize_lora


def test_eval_merges_train_unmerges_and_outputs_agree(kind):
    layer, x = make_layer(kind)
    w0 = layer.frozen_weight.detach().clone()
    train_out = layer(x)
    layer.eval()
    assert layer.merged
    assert not torch.equal(layer.frozen_weight, w0)
    torch.testing.assert_close(layer(x), train_out, rtol=1e-5, atol=1e-5)
    layer.train()
    assert not layer.merged
    torch.testing.assert_close(layer.frozen_weight, w0, rtol=0, atol=1e-6)


def test_merged_weight_is_base_plus_delta(kind):
    layer, _ = make_layer(kind)
    w0 = layer.frozen_weight.detach().clone()
    layer.eval()
    expected = w0 + layer.delta_weight()
    if layer.use_dora:  # DoRA merges (m / n) ⊙ (W0 + ΔW), n the norm of each output feature's weights
        dim = 0 if layer.fan_in_fan_out else 1
        expected = expected * (layer.lora_magnitude / expected.norm(dim=dim)).unsqueeze(dim)
    torch.testing.assert_close(layer.frozen_weight, expected)


def test_parent_eval_and_train_reach_the_layers():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(randomize_lora(lora.Linear(8, 8, r=2))), nn.ReLU(), randomize_lora(lora.Linear(8, 4, r=2))
    )
    model.eval()
    assert all(m.merged for m in model.modules() if isinstance(m, lora.LoRALayer))
    model.train()
    assert not any(m.merged for m in model.modules() if isinstance(m, lora.LoRALayer))


def test_merging_twice_adds_once(kind):
    layer, x = make_layer(kind)
    expected = layer(x)
    layer.eval()
    layer.eval()
    layer.merge()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_merge_weights_false_never_merges(kind):
    layer, x = make_layer(kind, merge_weights=False)
    expected = layer(x)
    layer.eval()
    assert not layer.merged
    torch.testing.assert_close(layer(x), expected)


def test_explicit_merge_and_unmerge(kind):
    layer, x = make_layer(kind)
    expected = layer(x)
    layer.merge()
    assert layer.merged and layer.training
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


# -- 1. drift after many toggles ----------------------------------------------------------------


def test_fp32_hundred_toggles_do_not_drift(kind):
    layer, x = make_layer(kind)
    w0 = layer.frozen_weight.detach().clone()
    reference = layer(x).detach()
    for _ in range(100):
        layer.eval()
        layer.train()
    assert (layer.frozen_weight - w0).abs().max().item() < 1e-6
    torch.testing.assert_close(layer(x), reference, rtol=0, atol=1e-5)
    layer.eval()
    torch.testing.assert_close(layer(x), reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_drift_is_bounded(kind, dtype):
    """In bf16/fp16 a merge rounds once; the unmerge may land one rounding step off, but further
    toggles do not walk away: the drift after 100 toggles is no larger than after the first one,
    and stays within one unit in the last place of the weight's dtype (2**-8 bf16, 2**-11 fp16)."""
    layer, _ = make_layer(kind, dtype=dtype)
    w0 = layer.frozen_weight.detach().float().clone()
    layer.eval()
    layer.train()
    after_one = (layer.frozen_weight.float() - w0).abs().max().item()
    for _ in range(99):
        layer.eval()
        layer.train()
    after_hundred = (layer.frozen_weight.float() - w0).abs().max().item()
    ulp = torch.finfo(dtype).eps * w0.abs().max().item()
    assert after_hundred <= max(after_one, ulp)
    assert after_hundred <= ulp


# -- 2. MergedLinear blocks --------------------------------------------------------------------


@pytest.mark.parametrize("enable_lora", [[True, False, True], [False, True, False], [True, True, True]])
@pytest.mark.parametrize("fan_in_fan_out", [True, False])
def test_merged_linear_blocks(enable_lora, fan_in_fan_out):
    torch.manual_seed(0)
    d, r = 6, 2
    layer = randomize_lora(
        lora.MergedLinear(10, 3 * d, r=r, lora_alpha=4, enable_lora=enable_lora, fan_in_fan_out=fan_in_fan_out)
    )
    x = torch.randn(4, 10)
    train_out = layer(x)
    delta = layer.delta_weight()
    delta = delta.T if fan_in_fan_out else delta  # (out, in)
    A, B = layer.lora_A.split(r), layer.lora_B.split(d)
    enabled = 0
    for i, on in enumerate(enable_lora):
        block = delta[i * d : (i + 1) * d]
        if on:
            torch.testing.assert_close(block, B[enabled] @ A[enabled] * layer.scaling)
            enabled += 1
        else:
            assert torch.all(block == 0)
    layer.eval()
    torch.testing.assert_close(layer(x), train_out, rtol=1e-5, atol=1e-5)


# -- 3. Embedding merge ------------------------------------------------------------------------


@pytest.mark.parametrize("padding_idx", [None, 0, 5])
def test_embedding_merge_is_exact(padding_idx):
    torch.manual_seed(0)
    layer = randomize_lora(lora.Embedding(12, 6, r=3, lora_alpha=3, padding_idx=padding_idx))
    torch.testing.assert_close(layer.delta_weight(), (layer.lora_B @ layer.lora_A).T * layer.scaling)
    ids = torch.arange(12).view(3, 4)
    train_out = layer(ids)
    layer.eval()
    torch.testing.assert_close(layer(ids), train_out, rtol=1e-6, atol=1e-6)


def test_embedding_padding_row_gets_no_lora_gradient():
    layer = lora.Embedding(10, 4, r=2, padding_idx=3)
    layer(torch.tensor([[3, 1, 3, 2]])).sum().backward()
    assert torch.all(layer.lora_A.grad[:, 3] == 0) and layer.lora_A.grad[:, 1].abs().sum() > 0


# -- 4. Conv: every dimension, tuple kernels, groups, dropout ----------------------------------


@pytest.mark.parametrize(
    "cls, in_shape, kwargs",
    [
        (lora.Conv1d, (2, 4, 11), dict(kernel_size=3)),
        (lora.Conv1d, (2, 4, 11), dict(kernel_size=(5,), stride=2, padding=2, dilation=2, groups=2)),
        (lora.Conv2d, (2, 4, 9, 9), dict(kernel_size=3, groups=2, stride=2, padding=1, dilation=2)),
        (lora.Conv2d, (2, 4, 9, 9), dict(kernel_size=(3, 1), padding=(1, 0))),
        (lora.Conv3d, (1, 4, 6, 7, 5), dict(kernel_size=3)),
        (lora.Conv3d, (1, 4, 6, 7, 5), dict(kernel_size=(2, 3, 1), groups=4, padding=1)),
    ],
)
def test_conv_builds_runs_merges_exactly(cls, in_shape, kwargs):
    torch.manual_seed(0)
    layer = randomize_lora(cls(4, 8, r=2, lora_alpha=2, **kwargs))
    x = torch.randn(*in_shape)
    w0 = layer.frozen_weight.detach().clone()
    plain = cls.torch_conv(4, 8, **kwargs)
    plain.load_state_dict({"weight": w0 + layer.delta_weight().detach(), "bias": layer.conv.bias.detach()})
    torch.testing.assert_close(layer(x), plain(x), rtol=1e-5, atol=1e-5)  # unmerged == conv with W0 + delta
    layer.eval()
    torch.testing.assert_close(layer(x), plain(x), rtol=1e-5, atol=1e-5)
    layer.train()
    torch.testing.assert_close(layer.frozen_weight, w0, rtol=0, atol=1e-6)


def test_conv_dropout_is_applied_on_the_lora_path():
    torch.manual_seed(0)
    layer = randomize_lora(lora.Conv2d(3, 4, 3, r=2, lora_dropout=0.5, padding=1), std=0.5)
    x = torch.randn(2, 3, 6, 6)
    base = layer.conv(x)
    outs = [layer(x) for _ in range(2)]
    assert not torch.allclose(outs[0], outs[1])  # a different mask each call
    layer.eval()
    torch.testing.assert_close(layer(x), base + layer.conv._conv_forward(x, layer.delta_weight(), None))


# -- 5. state dicts while merged ---------------------------------------------------------------


@pytest.mark.parametrize("saved_in", ["train", "eval"])
@pytest.mark.parametrize("loaded_in", ["train", "eval"])
def test_a_checkpoint_means_the_same_whatever_mode_saved_or_loads_it(kind, saved_in, loaded_in):
    layer, x = make_layer(kind)
    w0 = layer.frozen_weight.detach().clone()
    expected = layer(x).detach()
    layer.train(saved_in == "train")
    state = layer.state_dict()
    if layer.use_dora:  # DoRA's merged weight cannot be taken apart without its norm: W0 is saved
        torch.testing.assert_close(state[layer.frozen_weight_name], w0, rtol=0, atol=1e-6)
        assert state._metadata[""]["lora_merged"] is False
    else:  # saved as held (merged in eval mode, as loralib does), and the metadata says which
        torch.testing.assert_close(state[layer.frozen_weight_name], layer.frozen_weight, rtol=0, atol=0)
        assert state._metadata[""]["lora_merged"] == (saved_in == "eval")
    fresh, _ = make_layer(kind)
    fresh.reset_parameters()
    fresh.train(loaded_in == "train")
    fresh.load_state_dict(torch.load(io.BytesIO(_saved(state)), weights_only=True))
    for mode in (loaded_in == "train", loaded_in != "train"):
        torch.testing.assert_close(fresh.train(mode)(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fresh.train().frozen_weight, w0, rtol=0, atol=1e-6)


def _saved(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)  # the metadata travels with torch.save
    return buffer.getvalue()


def test_loading_into_a_merged_layer_unmerges_first(kind):
    source, x = make_layer(kind)
    target, _ = make_layer(kind)
    randomize_lora(target, seed=1)  # a different update, merged into its weight
    target.eval()
    target.load_state_dict(source.state_dict())
    assert target.merged
    source.eval()
    torch.testing.assert_close(target(x), source(x), rtol=1e-5, atol=1e-5)
    target.train()
    torch.testing.assert_close(target.frozen_weight, source.train().frozen_weight, rtol=0, atol=1e-6)


def test_loading_only_the_lora_state_dict_into_a_merged_model():
    torch.manual_seed(0)
    trained = randomize_lora(nn.Sequential(lora.Linear(8, 8, r=2), lora.Linear(8, 3, r=2)))
    deployed = nn.Sequential(lora.Linear(8, 8, r=2), lora.Linear(8, 3, r=2))
    deployed.load_state_dict(trained.state_dict())
    randomize_lora(deployed, seed=5)
    deployed.eval()
    deployed.load_state_dict(lora.lora_state_dict(trained), strict=False)
    x = torch.randn(4, 8)
    torch.testing.assert_close(deployed(x), trained.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_state_dict_keys_are_loralib_names(kind):
    layer, _ = make_layer(kind)
    expected = {"weight", "bias", "lora_A", "lora_B"} - ({"bias"} if kind == "embedding" else set())
    if kind.startswith("conv"):  # loralib's ConvLoRA holds the torch convolution in a child ``conv``
        expected = {"conv.weight", "conv.bias", "lora_A", "lora_B"}
    if kind == "dora":  # and DoRA's magnitude, whose name holds ``lora_`` as every LoRA parameter's does
        expected.add("lora_magnitude")
    assert set(layer.state_dict()) == expected
