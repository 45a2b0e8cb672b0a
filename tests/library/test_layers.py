"""Shapes, names, init, r = 0, from_module and the low-rank forward of every layer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lora_basics as lora
from tests.helpers import make_layer, randomize_lora

# -- the textbook LoRALinear --------------------------------------------------------------------


def test_lora_linear_init_and_forward_formula():
    torch.manual_seed(0)
    layer = lora.LoRALinear(64, 32, lora.LoRAConfig(lora_r=4, lora_dropout=0.0))
    assert layer.A.weight.shape == (4, 64) and layer.B.weight.shape == (32, 4)
    assert layer.A.bias is None and layer.B.bias is None
    assert torch.all(layer.B.weight == 0)
    assert abs(layer.A.weight.std().item() - 0.02) < 0.003  # normal(std=0.02), 256 samples
    assert layer.scaling == 1.0  # lora_alpha defaults to lora_r
    x = torch.randn(5, 64)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
    with torch.no_grad():
        layer.B.weight.normal_()
    expected = x @ layer.weight.T + layer.bias + layer.scaling * (x @ layer.A.weight.T @ layer.B.weight.T)
    torch.testing.assert_close(layer(x), expected)


def test_lora_linear_alpha_and_any_config_object():
    class Config:
        lora_r = 8
        lora_dropout = 0.1
        lora_alpha = 16

    layer = lora.LoRALinear(10, 10, Config(), bias=False)
    assert layer.scaling == 2.0 and layer.bias is None and layer.dropout.p == 0.1


def test_lora_linear_dropout_is_before_A():
    layer = lora.LoRALinear(6, 6, lora.LoRAConfig(lora_r=6, lora_dropout=0.5), bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.A.weight.copy_(torch.eye(6))
        layer.B.weight.copy_(torch.eye(6))
    x = torch.ones(200, 6)
    y = layer(x)
    assert set(y.unique().tolist()) <= {0.0, 2.0}  # dropped or scaled by 1/(1-p): dropout acts on x
    assert torch.equal(layer.eval()(x), x)


def test_lora_linear_from_linear_keeps_weights_and_freezing():
    torch.manual_seed(0)
    base = nn.Linear(8, 4)
    layer = lora.LoRALinear.from_linear(base, lora.LoRAConfig(lora_r=2))
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)
    lora.mark_only_lora_as_trainable(layer)
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["A.weight", "B.weight"]


# -- the loralib family -------------------------------------------------------------------------


def test_linear_shapes_names_and_init():
    torch.manual_seed(0)
    layer = lora.Linear(20, 30, r=4, lora_alpha=8)
    assert dict((n, tuple(p.shape)) for n, p in layer.named_parameters()) == {
        "weight": (30, 20),
        "bias": (30,),
        "lora_A": (4, 20),
        "lora_B": (30, 4),
    }
    assert layer.scaling == 2.0 and not layer.weight.requires_grad and layer.lora_A.requires_grad
    assert torch.all(layer.lora_B == 0)
    bound = 1 / math.sqrt(20)  # kaiming_uniform_(a=sqrt(5)) on fan_in 20
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > bound / 2


def test_merged_linear_shapes():
    layer = lora.MergedLinear(16, 48, r=4, enable_lora=[True, False, True])
    assert layer.lora_A.shape == (8, 16) and layer.lora_B.shape == (32, 4)
    assert layer.full_lora_B().shape == (48, 8)
    fifo = lora.MergedLinear(16, 48, r=4, enable_lora=[True, False, True], fan_in_fan_out=True)
    assert fifo.weight.shape == (16, 48)


def test_embedding_shapes_and_reverse_init():
    layer = lora.Embedding(50, 8, r=4)
    assert layer.lora_A.shape == (4, 50) and layer.lora_B.shape == (8, 4)
    assert torch.all(layer.lora_A == 0) and layer.lora_B.std() > 0.5  # normal_(0, 1)


@pytest.mark.parametrize(
    "cls, args, A, B",
    [
        (lora.Conv2d, (4, 6, 3), (2 * 3, 4 * 3), (6 * 3, 2 * 3)),  # loralib's shapes
        (lora.Conv1d, (4, 6, 3), (2 * 3, 4), (6 * 3, 2 * 3)),
        (lora.Conv3d, (4, 6, 3), (2 * 3, 4 * 9), (6 * 3, 2 * 3)),
        (lora.Conv2d, (4, 6, (3, 5)), (2 * 3, 4 * 5), (6 * 3, 2 * 3)),
    ],
)
def test_conv_shapes(cls, args, A, B):
    layer = cls(*args, r=2)
    assert layer.lora_A.shape == A and layer.lora_B.shape == B
    assert layer.delta_weight().shape == layer.conv.weight.shape
    assert type(layer.conv) is cls.torch_conv  # loralib's structure: the torch convolution is a child


def test_r0_is_exactly_the_torch_layer(kind):
    torch.manual_seed(0)
    pairs = {
        "linear": (lambda: lora.Linear(12, 10), lambda: nn.Linear(12, 10), torch.randn(3, 12)),
        "merged": (lambda: lora.MergedLinear(12, 18, r=0), lambda: nn.Linear(12, 18), torch.randn(3, 12)),
        "embedding": (lambda: lora.Embedding(20, 8), lambda: nn.Embedding(20, 8), torch.randint(0, 20, (3, 4))),
    }
    if kind not in pairs:
        pytest.skip("covered by the other kinds")
    ours_factory, torch_factory, x = pairs[kind]
    torch.manual_seed(1)
    ours = ours_factory()
    torch.manual_seed(1)
    reference = torch_factory()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in reference.named_parameters()]
    ours.load_state_dict(reference.state_dict(), strict=True)
    for mode in (True, False):
        ours.train(mode), reference.train(mode)
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)


def test_starts_as_the_base_layer(kind):
    """With the init's zero factor the output equals the base layer's, exactly."""
    layer, x = make_layer(kind)
    layer.reset_parameters()  # A or B back to zero
    base_out = layer.conv(x) if isinstance(layer, lora.ConvLoRA) else None
    if isinstance(layer, lora.Embedding):
        base_out = nn.functional.embedding(x, layer.weight, layer.padding_idx)
    if isinstance(layer, lora.Linear):
        weight = layer.weight.T if layer.fan_in_fan_out else layer.weight
        base_out = nn.functional.linear(x, weight, layer.bias)
    torch.testing.assert_close(layer(x), base_out, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["linear", "linear_fifo", "merged", "embedding", "conv1d", "conv2d", "conv3d"])
def test_from_module_keeps_pretrained_weights(kind):
    torch.manual_seed(0)
    if kind == "linear":
        base, cls, kw, x = nn.Linear(12, 10), lora.Linear, {}, torch.randn(4, 12)
    elif kind == "linear_fifo":  # a GPT-2 Conv1D-style layer: weight stored (in, out)
        base = nn.Module()
        base.weight, base.bias = nn.Parameter(torch.randn(12, 10)), nn.Parameter(torch.randn(10))
        cls, kw, x = lora.Linear, {"fan_in_fan_out": True}, torch.randn(4, 12)
    elif kind == "merged":
        base, cls, kw, x = (
            nn.Linear(12, 18),
            lora.MergedLinear,
            {"enable_lora": [True, False, True]},
            torch.randn(4, 12),
        )
    elif kind == "embedding":
        base, cls, kw, x = nn.Embedding(20, 8, padding_idx=1), lora.Embedding, {}, torch.randint(0, 20, (4,))
    else:
        torch_conv = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}[kind]
        dims = int(kind[-2])
        base = torch_conv(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, bias=True)
        cls = {"conv1d": lora.Conv1d, "conv2d": lora.Conv2d, "conv3d": lora.Conv3d}[kind]
        kw, x = {}, torch.randn(2, 4, *[7] * dims)
    layer = cls.from_module(base, r=2, lora_alpha=4, **kw)
    expected = x @ base.weight + base.bias if kind == "linear_fifo" else base(x)
    torch.testing.assert_close(layer(x), expected)
    assert not layer.frozen_weight.requires_grad
    randomize_lora(layer)
    assert not torch.allclose(layer(x), expected)


def test_from_module_refuses_wrong_modules():
    with pytest.raises(TypeError, match="nn.Conv2d"):
        lora.Conv2d.from_module(nn.Conv1d(2, 2, 3), r=2)
    with pytest.raises(TypeError, match="nn.Embedding"):
        lora.Embedding.from_module(nn.Linear(2, 2), r=2)
    with pytest.raises(TypeError, match="2-D weight"):
        lora.Linear.from_module(nn.ReLU(), r=2)


def test_merged_linear_equals_three_separate_linears():
    torch.manual_seed(0)
    fused = randomize_lora(lora.MergedLinear(8, 24, r=2, lora_alpha=4, enable_lora=[True, False, True]))
    x = torch.randn(5, 8)
    out = fused(x)
    A, B = fused.lora_A.split(2), fused.lora_B.split(8)
    for i, (rows, a_b) in enumerate([(slice(0, 8), (A[0], B[0])), (slice(8, 16), None), (slice(16, 24), (A[1], B[1]))]):
        expected = x @ fused.weight[rows].T + fused.bias[rows]
        if a_b is not None:
            expected = expected + fused.scaling * x @ a_b[0].T @ a_b[1].T
        torch.testing.assert_close(out[:, rows], expected, msg=f"slice {i}")


def test_low_rank_forward_never_builds_the_dense_update(monkeypatch):
    """Linear/MergedLinear forwards must not call delta_weight (the dense (out, in) matrix)."""
    for layer in (make_layer("linear")[0], make_layer("merged")[0]):

        def forbidden(*args, **kwargs):
            raise AssertionError("dense delta built in forward")

        monkeypatch.setattr(layer, "delta_weight", forbidden)
        layer(torch.randn(2, 12))


@pytest.mark.parametrize("kind", ["linear", "linear_fifo", "merged"])
@pytest.mark.parametrize("training", [True, False])
def test_fused_forward_equals_the_formula(kind, training):
    # forward fuses the last matmul and the addition into one addmm; forward_formula is the maths as written.
    # merge_weights=False keeps the LoRA path running in eval mode too (without dropout there).
    layer, x = make_layer(kind, lora_dropout=0.25, merge_weights=False)
    layer.train(training)
    x.requires_grad_(True)
    results = []
    for forward in (layer.forward, layer.forward_formula):
        torch.manual_seed(1)  # the same dropout mask for both
        y = forward(x)
        results.append((y, *torch.autograd.grad(y.square().sum(), [layer.lora_A, layer.lora_B, x])))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_merged_full_lora_B_places_each_block_on_its_slice():
    layer = randomize_lora(lora.MergedLinear(6, 12, r=2, enable_lora=[False, True, True, False]))
    B1, B2 = layer.lora_B.detach().split(3)  # each (d=3, r=2)
    expected = torch.zeros(12, 4)
    expected[3:6, 0:2] = B1  # slice 1 uses the columns of A_1
    expected[6:9, 2:4] = B2  # slice 2 uses the columns of A_2
    torch.testing.assert_close(layer.full_lora_B().detach(), expected, rtol=0, atol=0)
    assert torch.equal(layer.lora_ind, torch.tensor([False] * 3 + [True] * 6 + [False] * 3))
