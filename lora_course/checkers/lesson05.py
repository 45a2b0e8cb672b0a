"""Checkers for the exercises of lesson 05 MergedLinear."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import lora_basics as lora

from .common import (
    Watch,
    call,
    call_watched,
    expect_low_rank,
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

EX_SHAPES, EX_SCATTER, EX_FORWARD = "merged_shapes", "merged_scatter", "merged_forward"

# -- 5.1 merged_shapes -----------------------------------------------------------------------------

SHAPE_CASES = [
    (16, 48, 4, [True, False, True]),
    (8, 24, 2, [True, True, True]),
    (10, 40, 3, [False, True, False, False]),
]


def probe_merged_shapes(fn, seed: int) -> dict:
    return {"cases": [call(fn, i, o, r, list(en)).record() for i, o, r, en in SHAPE_CASES]}


def judge_merged_shapes(record: dict, seed: int) -> str:
    """``fn(in_features, out_features, r, enable_lora) -> (shape of lora_A, shape of lora_B)``."""
    ex = EX_SHAPES
    for (i, o, r, en), got in zip(SHAPE_CASES, recorded_cases(record, len(SHAPE_CASES)), strict=True):
        case = f"MergedLinear({i}, {o}, r={r}, enable_lora={en})"
        layer = lora.MergedLinear(i, o, r=r, enable_lora=en)
        expect_shapes(
            ex,
            returned(ex, got, case),
            (tuple(layer.lora_A.shape), tuple(layer.lora_B.shape)),
            case,
            "k = sum(enable_lora) slices get an update: A is (r*k, in), B is (out/len(enable_lora)*k, r).",
        )
    return "you know the shapes of a fused layer's LoRA factors"


check_merged_shapes = register(EX_SHAPES, probe_merged_shapes, judge_merged_shapes)

# -- 5.2 merged_scatter ----------------------------------------------------------------------------

SCATTER_CASES = [((2,), 12, [True, False, True]), ((2, 3), 8, [False, True]), ((1,), 12, [True, True, True, False])]


def _scatter_input(seed: int, case: int) -> torch.Tensor:
    batch, o, en = SCATTER_CASES[case]
    return torch.randn(*batch, o // len(en) * sum(en), generator=generator(seed, case))


def probe_merged_scatter(fn, seed: int) -> dict:
    cases = []
    for case, (_, o, en) in enumerate(SCATTER_CASES):
        cases.append(call(fn, _scatter_input(seed, case), o, list(en)).record())
    return {"cases": cases}


def judge_merged_scatter(record: dict, seed: int) -> str:
    """``fn(y, out_features, enable_lora)``: put ``y (..., d*k)`` into the enabled slices of ``(..., out_features)``."""
    ex = EX_SCATTER
    for case, got in enumerate(recorded_cases(record, len(SCATTER_CASES))):
        batch, o, en = SCATTER_CASES[case]
        y = _scatter_input(seed, case)
        d = o // len(en)
        expected = y.new_zeros(*batch, o)
        for slot, s in enumerate(s for s, on in enumerate(en) if on):
            expected[..., s * d : (s + 1) * d] = y[..., slot * d : (slot + 1) * d]
        text = f"y {tuple(y.shape)}, out_features={o}, enable_lora={en}"
        expect_tensor(
            ex,
            returned(ex, got, text),
            expected,
            text,
            f"slice s covers outputs s*d:(s+1)*d (d={d}); the j-th ENABLED slice gets y[..., j*d:(j+1)*d], "
            "disabled ones stay 0.",
        )
    return "the enabled slices get their updates, the others stay zero"


check_merged_scatter = register(EX_SCATTER, probe_merged_scatter, judge_merged_scatter)

# -- 5.3 merged_forward ----------------------------------------------------------------------------

FORWARD_CASES = [(8, 12, 2, [True, False, True]), (6, 12, 3, [False, True, True, False])]
FORBIDDEN = {
    "delta_weight": "the task forbids it: it builds the dense (out, in) update. Go through x @ lora_A.T (..., r*k).",
    "full_lora_B": "the task forbids it: place each block B_j yourself (your scatter_enabled).",
    "forward": "that is the layer itself computing the answer; compute its LoRA path from lora_A and lora_B.",
}


def _merged_layer(seed: int, case: int) -> tuple[lora.MergedLinear, torch.Tensor]:
    i, o, r, en = FORWARD_CASES[case]
    manual_seed(seed, case)
    layer = randomize_lora(lora.MergedLinear(i, o, r=r, lora_alpha=2 * r, enable_lora=en), generator(seed, case))
    return layer, torch.randn(3, 5, i, generator=generator(seed, 10 + case))


def probe_merged_forward(fn, seed: int) -> dict:
    cases = []
    for case in range(len(FORWARD_CASES)):
        layer, x = _merged_layer(seed, case)
        methods = [(lora.MergedLinear, name) for name in ("forward", "delta_weight", "full_lora_B")]
        watch = Watch(A=[layer.lora_A], B=[layer.lora_B], x=[x], methods=methods)
        cases.append(call_watched(watch, fn, x, layer)[1])
    return {"cases": cases}


def judge_merged_forward(record: dict, seed: int) -> str:
    """``fn(x, layer)``: the LoRA path of a ``MergedLinear`` (``layer(x)`` minus the base linear), low-rank."""
    ex = EX_FORWARD
    for case, got in enumerate(recorded_cases(record, len(FORWARD_CASES))):
        i, o, r, en = FORWARD_CASES[case]
        layer, x = _merged_layer(seed, case)
        text = f"MergedLinear({i}, {o}, r={r}, enable_lora={en}), x {tuple(x.shape)}"
        with torch.no_grad():
            expected = layer(x) - F.linear(x, layer.weight, layer.bias)
        expect_tensor(
            ex,
            returned(ex, got, text),
            expected,
            text,
            "after = x @ lora_A.T is (..., r*k); slice j uses after[..., j*r:(j+1)*r] @ B_j.T with "
            "B_j = lora_B[j*d:(j+1)*d]; scatter into the enabled slices and multiply by scaling.",
        )
        expect_no_shortcut(ex, got["watch"], text, FORBIDDEN)
        expect_low_rank(ex, got["watch"], text, "never multiply lora_B by lora_A; multiply x by lora_A first.")
    return "your low-rank forward matches lora_basics.MergedLinear"


check_merged_forward = register(
    EX_FORWARD,
    probe_merged_forward,
    judge_merged_forward,
    forbidden={k: FORBIDDEN[k] for k in ("delta_weight", "full_lora_B")},
)
