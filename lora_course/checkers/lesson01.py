"""Checkers for the exercises of lesson 01 why low rank."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .common import (
    expect_equal,
    expect_tensor,
    keeps_rng,
    run_learner,
    say_passed,
    seeded,
)

# -- 01 why low rank -------------------------------------------------------------------------------


@keeps_rng
def check_param_counts(fn: Callable) -> None:
    """``fn(d, k, r) -> (full, lora)``: entries of a full ``d x k`` update and of ``B (d x r) @ A (r x k)``."""
    ex = "param_counts"
    for d, k, r in [(768, 768, 8), (4096, 11008, 16), (10, 3, 1), (12288, 12288, 4)]:
        got = run_learner(ex, fn, d, k, r, case=f"d={d}, k={k}, r={r}")
        expect_equal(
            ex, got, (d * k, r * (d + k)), f"d={d}, k={k}, r={r}", "B is d x r and A is r x k; add their sizes."
        )
    say_passed(ex, "a rank-8 update of a 4096 x 4096 matrix has 65,536 entries instead of 16,777,216")


@keeps_rng
def check_best_rank_r(fn: Callable) -> None:
    """``fn(M, r)`` returns the best rank-``r`` approximation of ``M`` (truncated SVD, Eckart-Young)."""
    ex = "best_rank_r"
    for seed, (m, n), r in [(0, (6, 4), 2), (1, (5, 9), 3), (2, (8, 8), 1), (3, (4, 7), 4)]:
        M = torch.randn(m, n, generator=seeded(seed), dtype=torch.float64)
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        expected = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]
        got = run_learner(ex, fn, M.clone(), r, case=f"a {m}x{n} matrix, r={r}")
        expect_tensor(
            ex,
            got,
            expected,
            f"a {m}x{n} matrix, r={r}",
            "keep the r largest singular values: U[:, :r] @ diag(S[:r]) @ Vh[:r] (torch.linalg.svd returns Vh, "
            "already transposed).",
        )
    say_passed(ex, "truncated SVD gives the best rank-r approximation")


@keeps_rng
def check_rank_for_energy(fn: Callable) -> None:
    """``fn(S, energy)``: the smallest ``r`` with ``sum(S[:r]**2) / sum(S**2) >= energy``."""
    ex = "rank_for_energy"
    cases = [
        (torch.tensor([3.0, 2.0, 1.0, 0.5]), 0.9),
        (torch.tensor([3.0, 2.0, 1.0, 0.5]), 0.5),
        (torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.75),
        (torch.tensor([10.0, 1.0, 0.1]), 0.99),
        (torch.tensor([2.0, 1.0]), 1.0),
    ]
    for S, energy in cases:
        fractions = torch.cumsum(S**2, 0) / (S**2).sum()
        expected = int((fractions < energy - 1e-9).sum().item()) + 1
        got = run_learner(ex, fn, S.clone(), energy, case=f"S={S.tolist()}, energy={energy}")
        if isinstance(got, torch.Tensor):
            got = got.item()
        expect_equal(
            ex,
            got,
            expected,
            f"S={S.tolist()}, energy={energy}",
            "energy is the sum of SQUARED singular values; r counts values kept, starting from 1.",
        )
    say_passed(ex, "you can read off how many directions hold most of an update")
