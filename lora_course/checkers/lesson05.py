"""Checkers for the exercises of lesson 05 MergedLinear."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

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

# -- 05 MergedLinear -------------------------------------------------------------------------------


@keeps_rng
def check_merged_shapes(fn: Callable) -> None:
    """``fn(in_features, out_features, r, enable_lora) -> (shape of lora_A, shape of lora_B)``."""
    ex = "merged_shapes"
    for i, o, r, en in [
        (16, 48, 4, [True, False, True]),
        (8, 24, 2, [True, True, True]),
        (10, 40, 3, [False, True, False, False]),
    ]:
        case = f"MergedLinear({i}, {o}, r={r}, enable_lora={en})"
        layer = lora.MergedLinear(i, o, r=r, enable_lora=en)
        hint = "k = sum(enable_lora) slices get an update: A is (r*k, in), B is (out/len(enable_lora)*k, r)."
        expect_lora_shapes(ex, fn, (i, o, r, list(en)), layer, case, hint)
    say_passed(ex, "you know the shapes of a fused layer's LoRA factors")


@keeps_rng
def check_merged_scatter(fn: Callable) -> None:
    """``fn(y, out_features, enable_lora)``: put ``y (..., d*k)`` into the enabled slices of ``(..., out_features)``."""
    ex = "merged_scatter"
    for seed, batch, o, en in [
        (0, (2,), 12, [True, False, True]),
        (1, (2, 3), 8, [False, True]),
        (2, (1,), 12, [True, True, True, False]),
    ]:
        d, k = o // len(en), sum(en)
        y = torch.randn(*batch, d * k, generator=seeded(seed))
        expected = y.new_zeros(*batch, o)
        slot = 0
        for s, on in enumerate(en):
            if on:
                expected[..., s * d : (s + 1) * d] = y[..., slot * d : (slot + 1) * d]
                slot += 1
        case = f"y {tuple(y.shape)}, out_features={o}, enable_lora={en}"
        got = run_learner(ex, fn, y.clone(), o, list(en), case=case)
        expect_tensor(
            ex,
            got,
            expected,
            case,
            f"slice s covers outputs s*d:(s+1)*d (d={d}); the j-th ENABLED slice gets y[..., j*d:(j+1)*d], disabled ones stay 0.",
        )
    say_passed(ex, "the enabled slices get their updates, the others stay zero")


@keeps_rng
def check_merged_forward(fn: Callable) -> None:
    """``fn(x, layer)``: the LoRA path of a ``MergedLinear`` (``layer(x)`` minus the base linear), low-rank."""
    ex = "merged_forward"
    for seed, (i, o, r, en) in enumerate([(8, 12, 2, [True, False, True]), (6, 12, 3, [False, True, True, False])]):
        torch.manual_seed(seed)
        layer = randomize_lora(lora.MergedLinear(i, o, r=r, lora_alpha=2 * r, enable_lora=en), seed=seed)
        x = torch.randn(3, 5, i, generator=seeded(seed))
        with torch.no_grad():
            expected = layer(x) - F.linear(x, layer.weight, layer.bias)
            got = run_learner(ex, fn, x, layer, case=f"MergedLinear({i}, {o}, r={r}, enable_lora={en})")
        expect_tensor(
            ex,
            got,
            expected,
            f"MergedLinear({i}, {o}, r={r}, enable_lora={en}), x {tuple(x.shape)}",
            "after = x @ lora_A.T is (..., r*k); slice j uses after[..., j*r:(j+1)*r] @ B_j.T with B_j = lora_B[j*d:(j+1)*d]; "
            "scatter into the enabled slices and multiply by scaling.",
        )
    say_passed(ex, "your low-rank forward matches lora_basics.MergedLinear")
