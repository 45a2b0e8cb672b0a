"""Checkers for the exercises of lesson 03 rank, scaling and init."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .common import (
    expect_equal,
    expect_tensor,
    fail,
    keeps_rng,
    run_learner,
    say_passed,
    seeded,
)

# -- 03 rank, scaling and init ---------------------------------------------------------------------


@keeps_rng
def check_scaling(fn: Callable) -> None:
    """``fn(alpha, r, rslora=False)``: ``alpha / r``, or rsLoRA's ``alpha / sqrt(r)``."""
    ex = "scaling"
    for alpha, r, rs in [(16, 8, False), (16, 8, True), (8, 64, False), (8, 64, True), (1, 1, True), (32, 4, False)]:
        expected = alpha / math.sqrt(r) if rs else alpha / r
        case = f"alpha={alpha}, r={r}, rslora={rs}"
        got = run_learner(ex, fn, alpha, r, rslora=rs, case=case)
        if not isinstance(got, (int, float)) or not math.isclose(got, expected, rel_tol=1e-9):
            fail(ex, f"on {case}: expected {expected:.4f}, got {got!r}. Hint: rsLoRA divides by sqrt(r), LoRA by r.")
    say_passed(ex, "alpha/r for LoRA, alpha/sqrt(r) for rsLoRA")


@keeps_rng
def check_lora_grads(fn: Callable) -> None:
    """``fn(x, grad_out, A, B, scaling) -> (dA, dB)`` for ``y = scaling * x A^T B^T``, against autograd."""
    ex = "lora_grads"
    cases = [(0, 5, 6, 4, 2, 2.0, "random A and B"), (1, 3, 4, 5, 3, 0.5, "B = 0 (LoRA's init)")]
    cases.append((2, 4, 3, 3, 2, 1.0, "A = 0 and B = 0"))
    for seed, n, i, o, r, s, what in cases:
        g = seeded(seed)
        x, grad_out = torch.randn(n, i, generator=g), torch.randn(n, o, generator=g)
        A, B = torch.randn(r, i, generator=g), torch.randn(o, r, generator=g)
        if "B = 0" in what:
            B.zero_()
        if "A = 0" in what:
            A.zero_()
        A_, B_ = A.clone().requires_grad_(), B.clone().requires_grad_()
        (s * x @ A_.T @ B_.T).backward(grad_out)
        case = f"x {tuple(x.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, scaling={s}, {what}"
        got = run_learner(ex, fn, x, grad_out, A.clone(), B.clone(), s, case=case)
        if not isinstance(got, tuple) or len(got) != 2:
            fail(ex, f"on {case}: expected a tuple (dA, dB), got {type(got).__name__}.")
        hint_a = "dA = scaling * (grad_out @ B).T @ x, shape (r, in)."
        hint_b = "dB = scaling * grad_out.T @ (x @ A.T), shape (out, r)."
        expect_tensor(ex, got[0], A_.grad, case + ", dA", hint_a)
        expect_tensor(ex, got[1], B_.grad, case + ", dB", hint_b)
    say_passed(ex, "with B = 0 only B gets a gradient at first; with A = B = 0 nothing ever moves")


@keeps_rng
def check_budget(fn: Callable) -> None:
    """``fn(layers, budget, target_scaling) -> (r, alpha)``: largest r whose LoRA fits, alpha = target_scaling * r."""
    ex = "budget"
    cases = [
        ([(768, 768)] * 4, 50_000, 2.0),
        ([(768, 2304), (768, 768)], 100_000, 1.0),
        ([(16, 16)], 32, 0.5),
        ([(512, 512), (512, 2048), (2048, 512)], 1_000_000, 2.0),
    ]
    for layers, budget, target in cases:
        per_rank = sum(i + o for i, o in layers)
        r = budget // per_rank
        case = f"layers={layers[:2]}{'...' if len(layers) > 2 else ''}, budget={budget:,}, target scaling={target}"
        got = run_learner(ex, fn, list(layers), budget, target, case=case)
        if not isinstance(got, tuple) or len(got) != 2:
            fail(ex, f"on {case}: expected a tuple (r, alpha), got {got!r}.")
        got_r, got_alpha = got
        used = got_r * per_rank if isinstance(got_r, int) else None
        expect_equal(
            ex,
            got_r,
            r,
            case,
            f"one unit of rank costs sum(in + out) = {per_rank:,} parameters; take the largest r within budget"
            + (f" (your r uses {used:,})" if used is not None else ""),
        )
        if not isinstance(got_alpha, (int, float)) or not math.isclose(got_alpha / got_r, target):
            fail(
                ex,
                f"on {case}: alpha={got_alpha!r} gives scaling {got_alpha}/{got_r}, expected {target}. Hint: alpha = target * r.",
            )
    say_passed(ex, "the largest rank that fits, with the scaling you wanted")
