"""Checkers for the exercises of lesson 03 rank, scaling and init."""

from __future__ import annotations

import math

import torch

from .common import (
    call,
    expect_equal,
    expect_tensor,
    fail,
    generator,
    is_number,
    recorded_cases,
    register,
    returned,
    wrong_type,
)

EX_SCALING, EX_GRADS, EX_BUDGET = "scaling", "lora_grads", "budget"

# -- 3.1 scaling -----------------------------------------------------------------------------------

SCALING_CASES = [(16, 8, False), (16, 8, True), (8, 64, False), (8, 64, True), (1, 1, True), (32, 4, False)]


def probe_scaling(fn, seed: int) -> dict:
    return {"cases": [call(fn, alpha, r, rslora=rs).record() for alpha, r, rs in SCALING_CASES]}


def judge_scaling(record: dict, seed: int) -> str:
    """``fn(alpha, r, rslora=False)``: ``alpha / r``, or rsLoRA's ``alpha / sqrt(r)``."""
    ex = EX_SCALING
    for (alpha, r, rs), got in zip(SCALING_CASES, recorded_cases(record, len(SCALING_CASES)), strict=True):
        expected = alpha / math.sqrt(r) if rs else alpha / r
        case = f"alpha={alpha}, r={r}, rslora={rs}"
        got = returned(ex, got, case)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not is_number(got):
            wrong_type(ex, case, "a float", got)
        if not math.isclose(got, expected, rel_tol=1e-9):
            fail(ex, f"on {case}: expected {expected:.4f}, got {got!r}. Hint: rsLoRA divides by sqrt(r), LoRA by r.")
    return "alpha/r for LoRA, alpha/sqrt(r) for rsLoRA"


check_scaling = register(EX_SCALING, probe_scaling, judge_scaling)

# -- 3.2 lora_grads --------------------------------------------------------------------------------

GRAD_CASES = [(5, 6, 4, 2, 2.0, "random A and B"), (3, 4, 5, 3, 0.5, "B = 0 (LoRA's init)")]
GRAD_CASES.append((4, 3, 3, 2, 1.0, "A = 0 and B = 0"))


def _grad_inputs(seed: int, case: int) -> tuple[torch.Tensor, ...]:
    n, i, o, r, _, what = GRAD_CASES[case]
    g = generator(seed, case)
    x, grad_out = torch.randn(n, i, generator=g), torch.randn(n, o, generator=g)
    A, B = torch.randn(r, i, generator=g), torch.randn(o, r, generator=g)
    if "B = 0" in what:
        B.zero_()
    if "A = 0" in what:
        A.zero_()
    return x, grad_out, A, B


def probe_lora_grads(fn, seed: int) -> dict:
    cases = []
    for case, (*_, s, _what) in enumerate(GRAD_CASES):
        cases.append(call(fn, *_grad_inputs(seed, case), s).record())
    return {"cases": cases}


def judge_lora_grads(record: dict, seed: int) -> str:
    """``fn(x, grad_out, A, B, scaling) -> (dA, dB)`` for ``y = scaling * x A^T B^T``, against autograd."""
    ex = EX_GRADS
    for case, got in enumerate(recorded_cases(record, len(GRAD_CASES))):
        *_, s, what = GRAD_CASES[case]
        x, grad_out, A, B = _grad_inputs(seed, case)
        A_, B_ = A.clone().requires_grad_(), B.clone().requires_grad_()
        (s * x @ A_.T @ B_.T).backward(grad_out)
        text = f"x {tuple(x.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, scaling={s}, {what}"
        got = returned(ex, got, text)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            wrong_type(ex, text, "a pair (dA, dB) of tensors", got)
        expect_tensor(ex, got[0], A_.grad, text + ", dA", "dA = scaling * (grad_out @ B).T @ x, shape (r, in).")
        expect_tensor(ex, got[1], B_.grad, text + ", dB", "dB = scaling * grad_out.T @ (x @ A.T), shape (out, r).")
    return "with B = 0 only B gets a gradient at first; with A = B = 0 nothing ever moves"


check_lora_grads = register(EX_GRADS, probe_lora_grads, judge_lora_grads)

# -- 3.3 budget ------------------------------------------------------------------------------------

BUDGET_CASES = [
    ([(768, 768)] * 4, 50_000, 2.0),
    ([(768, 2304), (768, 768)], 100_000, 1.0),
    ([(16, 16)], 32, 0.5),
    ([(512, 512), (512, 2048), (2048, 512)], 1_000_000, 2.0),
]


def probe_budget(fn, seed: int) -> dict:
    return {"cases": [call(fn, list(layers), budget, target).record() for layers, budget, target in BUDGET_CASES]}


def judge_budget(record: dict, seed: int) -> str:
    """``fn(layers, budget, target_scaling) -> (r, alpha)``: largest r whose LoRA fits, alpha = target_scaling * r."""
    ex = EX_BUDGET
    for (layers, budget, target), got in zip(BUDGET_CASES, recorded_cases(record, len(BUDGET_CASES)), strict=True):
        per_rank = sum(i + o for i, o in layers)
        r = budget // per_rank
        case = f"layers={layers[:2]}{'...' if len(layers) > 2 else ''}, budget={budget:,}, target scaling={target}"
        got = returned(ex, got, case)
        if not (isinstance(got, (tuple, list)) and len(got) == 2 and all(is_number(v) for v in got)):
            wrong_type(ex, case, "a pair (r, alpha) of numbers", got)
        got_r, got_alpha = got
        if not isinstance(got_r, int):
            wrong_type(ex, case, "an int r (use // for the division)", got_r)
        expect_equal(
            ex,
            got_r,
            r,
            case,
            f"one unit of rank costs sum(in + out) = {per_rank:,} parameters; take the largest r within budget "
            f"(your r uses {got_r * per_rank:,})",
        )
        if not math.isclose(got_alpha / got_r, target):
            fail(
                ex,
                f"on {case}: alpha={got_alpha!r} gives scaling {got_alpha}/{got_r}, expected {target}. "
                "Hint: alpha = target * r.",
            )
    return "the largest rank that fits, with the scaling you wanted"


check_budget = register(EX_BUDGET, probe_budget, judge_budget)
