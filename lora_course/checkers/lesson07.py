"""Checkers for the exercises of lesson 07 Conv LoRA."""

from __future__ import annotations

from collections.abc import Callable

import torch

import lora_basics as lora

from .common import (
    expect_lora_shapes,
    expect_tensor,
    keeps_rng,
    randomize_lora,
    run_learner,
    say_passed,
    seeded,
)

# -- 07 Conv LoRA ----------------------------------------------------------------------------------


@keeps_rng
def check_conv_shapes(fn: Callable) -> None:
    """``fn(in_channels, out_channels, kernel_size, r, groups) -> (shape of lora_A, shape of lora_B)``."""
    ex = "conv_shapes"
    cases = [
        (lora.Conv2d, 4, 6, 3, 2, 1),
        (lora.Conv1d, 3, 5, 5, 1, 1),
        (lora.Conv2d, 4, 6, (3, 2), 2, 2),
        (lora.Conv3d, 2, 4, (3, 2, 2), 2, 1),
    ]
    for cls, i, o, ks, r, groups in cases:
        layer = cls(i, o, ks, r=r, groups=groups)
        case = f"{cls.__name__}({i}, {o}, kernel_size={layer.conv.kernel_size}, r={r}, groups={groups})"
        hint = "with k0 = kernel_size[0] and rest = prod(kernel_size[1:]): A (r*k0, in*rest), B (out/groups*k0, r*k0)."
        expect_lora_shapes(ex, fn, (i, o, layer.conv.kernel_size, r, groups), layer, case, hint)
    say_passed(ex, "one rule gives A and B for Conv1d, Conv2d and Conv3d")


@keeps_rng
def check_conv_delta(fn: Callable) -> None:
    """``fn(lora_A, lora_B, scaling, weight_shape)``: the kernel-shaped update ``scaling * (B @ A)``."""
    ex = "conv_delta"
    for seed, (cls, i, o, ks, groups) in enumerate(
        [(lora.Conv2d, 4, 6, 3, 1), (lora.Conv1d, 3, 4, 5, 1), (lora.Conv2d, 4, 6, (3, 2), 2)]
    ):
        torch.manual_seed(seed)
        layer = randomize_lora(cls(i, o, ks, r=2, lora_alpha=3, groups=groups), seed=seed)
        weight_shape = tuple(layer.conv.weight.shape)
        case = f"{cls.__name__}({i}, {o}, kernel_size={ks}, r=2, groups={groups}) with weight {weight_shape}"
        with torch.no_grad():
            got = run_learner(ex, fn, layer.lora_A, layer.lora_B, layer.scaling, weight_shape, case=case)
            expected = layer.delta_weight()
        expect_tensor(
            ex,
            got,
            expected,
            case,
            "(lora_B @ lora_A) has exactly as many entries as the kernel: .view(weight_shape), times scaling.",
        )
    say_passed(ex, "your kernel update matches ConvLoRA.delta_weight")


@keeps_rng
def check_conv_forward(fn: Callable) -> None:
    """``fn(x, layer)``: a LoRA ``Conv2d``'s output with ``F.conv2d`` and the merged kernel, honouring the settings
    of ``layer.conv`` (stride, padding, dilation, groups)."""
    ex = "conv_forward"
    for seed, kw in enumerate([dict(padding=1), dict(stride=2, groups=2), dict(padding=2, dilation=2)]):
        torch.manual_seed(seed)
        layer = randomize_lora(lora.Conv2d(4, 6, 3, r=2, lora_alpha=4, **kw), seed=seed)
        x = torch.randn(2, 4, 9, 9, generator=seeded(seed))
        case = f"Conv2d(4, 6, 3, r=2, {', '.join(f'{k}={v}' for k, v in kw.items())})"
        with torch.no_grad():
            expected = layer(x)
            got = run_learner(ex, fn, x, layer, case=case)
        expect_tensor(
            ex,
            got,
            expected,
            case,
            "the torch convolution is layer.conv: F.conv2d(x, conv.weight + delta, conv.bias, conv.stride, "
            "conv.padding, conv.dilation, conv.groups).",
        )
    say_passed(ex, "your convolution matches lora_basics.Conv2d")
