"""Property-based tests (hypothesis) over random shapes, ranks, enable_lora, layouts, kernels."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lora_basics as lora
from tests.helpers import randomize_lora

SETTINGS = settings(max_examples=25, deadline=None)
dims = st.integers(1, 9)
ranks = st.integers(1, 5)


def assert_merged_equals_unmerged(layer, x):
    randomize_lora(layer)
    train_out = layer(x)
    layer.eval()
    assert layer.merged
    torch.testing.assert_close(layer(x), train_out, rtol=1e-4, atol=1e-5)
    layer.train()
    torch.testing.assert_close(layer(x), train_out, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(dims, dims, ranks, st.booleans(), st.booleans())
def test_linear(in_features, out_features, r, fan_in_fan_out, bias):
    layer = lora.Linear(in_features, out_features, r=r, lora_alpha=2 * r, fan_in_fan_out=fan_in_fan_out, bias=bias)
    assert_merged_equals_unmerged(layer, torch.randn(3, in_features))


@SETTINGS
@given(dims, st.integers(1, 4), ranks, st.lists(st.booleans(), min_size=1, max_size=4), st.booleans())
def test_merged_linear(in_features, slice_size, r, enable_lora, fan_in_fan_out):
    out_features = slice_size * len(enable_lora)
    layer = lora.MergedLinear(in_features, out_features, r=r, enable_lora=enable_lora, fan_in_fan_out=fan_in_fan_out)
    x = torch.randn(2, 3, in_features)
    if not any(enable_lora):
        assert not layer.has_lora
        return
    assert_merged_equals_unmerged(layer, x)


@SETTINGS
@given(st.integers(2, 30), dims, ranks, st.booleans())
def test_embedding(num_embeddings, embedding_dim, r, use_padding):
    padding_idx = 0 if use_padding else None
    layer = lora.Embedding(num_embeddings, embedding_dim, r=r, padding_idx=padding_idx)
    assert_merged_equals_unmerged(layer, torch.randint(0, num_embeddings, (3, 4)))


@SETTINGS
@given(
    st.sampled_from([1, 2, 3]),
    st.integers(1, 3),
    st.integers(1, 3),
    ranks,
    st.data(),
)
def test_conv(dim, groups, channels_per_group, r, data):
    kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(dim))
    in_channels, out_channels = groups * channels_per_group, groups * data.draw(st.integers(1, 3))
    cls = {1: lora.Conv1d, 2: lora.Conv2d, 3: lora.Conv3d}[dim]
    layer = cls(in_channels, out_channels, kernel, r=r, groups=groups, padding=1)
    assert layer.delta_weight().shape == layer.conv.weight.shape
    assert_merged_equals_unmerged(layer, torch.randn(2, in_channels, *[5] * dim))


@SETTINGS
@given(dims, dims, st.booleans())
def test_r0_is_the_torch_layer(in_features, out_features, bias):
    ours = lora.Linear(in_features, out_features, r=0, bias=bias)
    reference = nn.Linear(in_features, out_features, bias=bias)
    ours.load_state_dict(reference.state_dict(), strict=True)  # same keys, no LoRA tensors
    x = torch.randn(4, in_features)
    torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)
    ours.eval()
    torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)


@SETTINGS
@given(dims, st.integers(1, 3), ranks, st.lists(st.booleans(), min_size=1, max_size=3), st.booleans())
def test_zero_B_means_base_output(in_features, slice_size, r, enable_lora, fan_in_fan_out):
    out_features = slice_size * len(enable_lora)
    layer = lora.MergedLinear(in_features, out_features, r=r, enable_lora=enable_lora, fan_in_fan_out=fan_in_fan_out)
    if layer.has_lora:
        with torch.no_grad():
            layer.lora_A.normal_()  # any A: with B = 0 the update is zero
    x = torch.randn(5, in_features)
    weight = layer.weight.T if fan_in_fan_out else layer.weight
    torch.testing.assert_close(layer(x), nn.functional.linear(x, weight, layer.bias), rtol=0, atol=0)
