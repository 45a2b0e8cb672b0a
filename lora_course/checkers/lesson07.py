"""Checkers for the exercises of lesson 07 Conv LoRA."""

from __future__ import annotations

import torch

import lora_basics as lora

from .common import (
    Watch,
    call,
    call_watched,
    expect_no_shortcut,
    expect_shapes,
    expect_tensor,
    generator,
    manual_seed,
    randomize_lora,
    recorded_cases,
    register,
    returned,
)

EX_SHAPES, EX_DELTA, EX_FORWARD = "conv_shapes", "conv_delta", "conv_forward"

# -- 7.1 conv_shapes -------------------------------------------------------------------------------

SHAPE_CASES = [
    (lora.Conv2d, 4, 6, 3, 2, 1),
    (lora.Conv1d, 3, 5, 5, 1, 1),
    (lora.Conv2d, 4, 6, (3, 2), 2, 2),
    (lora.Conv3d, 2, 4, (3, 2, 2), 2, 1),
]


def _kernel(cls: type, ks) -> tuple[int, ...]:
    dims = {lora.Conv1d: 1, lora.Conv2d: 2, lora.Conv3d: 3}[cls]
    return tuple(ks) if isinstance(ks, tuple) else (ks,) * dims


def probe_conv_shapes(fn, seed: int) -> dict:
    return {"cases": [call(fn, i, o, _kernel(cls, ks), r, g).record() for cls, i, o, ks, r, g in SHAPE_CASES]}


def judge_conv_shapes(record: dict, seed: int) -> str:
    """``fn(in_channels, out_channels, kernel_size, r, groups) -> (shape of lora_A, shape of lora_B)``."""
    ex = EX_SHAPES
    for (cls, i, o, ks, r, groups), got in zip(SHAPE_CASES, recorded_cases(record, len(SHAPE_CASES)), strict=True):
        layer = cls(i, o, ks, r=r, groups=groups)
        case = f"{cls.__name__}({i}, {o}, kernel_size={layer.conv.kernel_size}, r={r}, groups={groups})"
        expect_shapes(
            ex,
            returned(ex, got, case),
            (tuple(layer.lora_A.shape), tuple(layer.lora_B.shape)),
            case,
            "with k0 = kernel_size[0] and rest = prod(kernel_size[1:]): A (r*k0, in*rest), B (out/groups*k0, r*k0).",
        )
    return "one rule gives A and B for Conv1d, Conv2d and Conv3d"


check_conv_shapes = register(EX_SHAPES, probe_conv_shapes, judge_conv_shapes)

# -- 7.2 conv_delta --------------------------------------------------------------------------------

DELTA_CASES = [(lora.Conv2d, 4, 6, 3, 1), (lora.Conv1d, 3, 4, 5, 1), (lora.Conv2d, 4, 6, (3, 2), 2)]


def _delta_layer(seed: int, case: int):
    cls, i, o, ks, groups = DELTA_CASES[case]
    manual_seed(seed, case)
    return randomize_lora(cls(i, o, ks, r=2, lora_alpha=3, groups=groups), generator(seed, case))


def probe_conv_delta(fn, seed: int) -> dict:
    cases = []
    for case in range(len(DELTA_CASES)):
        layer = _delta_layer(seed, case)
        # Copies of the factors, not the layer: nothing the learner's code can reach computes the answer.
        A, B = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
        shape, scaling = tuple(layer.conv.weight.shape), layer.scaling
        del layer
        cases.append(call(fn, A, B, scaling, shape).record())
    return {"cases": cases}


def judge_conv_delta(record: dict, seed: int) -> str:
    """``fn(lora_A, lora_B, scaling, weight_shape)``: the kernel-shaped update ``scaling * (B @ A)``."""
    ex = EX_DELTA
    for case, got in enumerate(recorded_cases(record, len(DELTA_CASES))):
        cls, i, o, ks, groups = DELTA_CASES[case]
        layer = _delta_layer(seed, case)
        text = f"{cls.__name__}({i}, {o}, kernel_size={ks}, r=2, groups={groups}) with weight {tuple(layer.conv.weight.shape)}"
        expect_tensor(
            ex,
            returned(ex, got, text),
            layer.delta_weight().detach(),
            text,
            "(lora_B @ lora_A) has exactly as many entries as the kernel: .view(weight_shape), times scaling.",
        )
    return "your kernel update matches ConvLoRA.delta_weight"


check_conv_delta = register(EX_DELTA, probe_conv_delta, judge_conv_delta)

# -- 7.3 conv_forward ------------------------------------------------------------------------------

FORWARD_CASES = [dict(padding=1), dict(stride=2, groups=2), dict(padding=2, dilation=2)]
FORBIDDEN = {"forward": "that is the layer itself computing the answer; call F.conv2d with the merged kernel."}


def _forward_inputs(seed: int, case: int) -> tuple[lora.Conv2d, torch.Tensor]:
    manual_seed(seed, case)
    layer = randomize_lora(lora.Conv2d(4, 6, 3, r=2, lora_alpha=4, **FORWARD_CASES[case]), generator(seed, case))
    return layer, torch.randn(2, 4, 9, 9, generator=generator(seed, 10 + case))


def probe_conv_forward(fn, seed: int) -> dict:
    cases = []
    for case in range(len(FORWARD_CASES)):
        layer, x = _forward_inputs(seed, case)
        cases.append(call_watched(Watch(methods=[(lora.Conv2d, "forward")]), fn, x, layer)[1])
    return {"cases": cases}


def judge_conv_forward(record: dict, seed: int) -> str:
    """``fn(x, layer)``: a LoRA ``Conv2d``'s output with ``F.conv2d`` and the merged kernel, honouring stride/padding/groups."""
    ex = EX_FORWARD
    for case, got in enumerate(recorded_cases(record, len(FORWARD_CASES))):
        layer, x = _forward_inputs(seed, case)
        text = f"Conv2d(4, 6, 3, r=2, {', '.join(f'{k}={v}' for k, v in FORWARD_CASES[case].items())})"
        with torch.no_grad():
            expected = layer(x)
        expect_tensor(
            ex,
            returned(ex, got, text),
            expected,
            text,
            "the torch convolution is layer.conv: F.conv2d(x, conv.weight + delta, conv.bias, conv.stride, "
            "conv.padding, conv.dilation, conv.groups), "
            "with delta = conv_delta(...) (the scale is already in it).",
        )
        expect_no_shortcut(ex, got["watch"], text, FORBIDDEN)
    return "your convolution matches lora_basics.Conv2d"


check_conv_forward = register(EX_FORWARD, probe_conv_forward, judge_conv_forward)
