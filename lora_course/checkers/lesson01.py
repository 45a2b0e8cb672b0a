"""Checkers for the exercises of lesson 01 why low rank."""

from __future__ import annotations

import torch

from .common import (
    call,
    expect_equal,
    expect_tensor,
    generator,
    is_number,
    register,
    returned,
    wrong_type,
)

EX_PARAM_COUNTS, EX_BEST_RANK_R, EX_RANK_FOR_ENERGY = "param_counts", "best_rank_r", "rank_for_energy"

# -- 1.1 param_counts ------------------------------------------------------------------------------

PARAM_COUNT_CASES = [(768, 768, 8), (4096, 11008, 16), (10, 3, 1), (12288, 12288, 4)]


def probe_param_counts(fn, seed: int) -> dict:
    return {"cases": [call(fn, d, k, r).record() for d, k, r in PARAM_COUNT_CASES]}


def judge_param_counts(record: dict, seed: int) -> str:
    """``fn(d, k, r) -> (full, lora)``: entries of a full ``d x k`` update and of ``B (d x r) @ A (r x k)``."""
    ex = EX_PARAM_COUNTS
    for (d, k, r), got in zip(PARAM_COUNT_CASES, record["cases"], strict=True):
        case = f"d={d}, k={k}, r={r}"
        got = returned(ex, got, case)
        if not (isinstance(got, (tuple, list)) and len(got) == 2 and all(is_number(v) for v in got)):
            wrong_type(ex, case, "a pair (full, lora) of ints", got)
        expect_equal(ex, tuple(got), (d * k, r * (d + k)), case, "B is d x r and A is r x k; add their sizes.")
    return "a rank-8 update of a 4096 x 4096 matrix has 65,536 entries instead of 16,777,216"


check_param_counts = register(EX_PARAM_COUNTS, probe_param_counts, judge_param_counts)

# -- 1.2 best_rank_r -------------------------------------------------------------------------------

BEST_RANK_CASES = [((6, 4), 2), ((5, 9), 3), ((8, 8), 1), ((4, 7), 4)]


def _matrix(seed: int, case: int, shape: tuple[int, int]) -> torch.Tensor:
    return torch.randn(*shape, generator=generator(seed, case), dtype=torch.float64)


def probe_best_rank_r(fn, seed: int) -> dict:
    cases = []
    for i, (shape, r) in enumerate(BEST_RANK_CASES):
        cases.append(call(fn, _matrix(seed, i, shape), r).record())
    return {"cases": cases}


def judge_best_rank_r(record: dict, seed: int) -> str:
    """``fn(M, r)`` returns the best rank-``r`` approximation of ``M`` (truncated SVD, Eckart-Young)."""
    ex = EX_BEST_RANK_R
    for i, ((shape, r), got) in enumerate(zip(BEST_RANK_CASES, record["cases"], strict=True)):
        U, S, Vh = torch.linalg.svd(_matrix(seed, i, shape), full_matrices=False)
        case = f"a {shape[0]}x{shape[1]} matrix, r={r}"
        expect_tensor(
            ex,
            returned(ex, got, case),
            U[:, :r] @ torch.diag(S[:r]) @ Vh[:r],
            case,
            "keep the r largest singular values: U[:, :r] @ diag(S[:r]) @ Vh[:r] (torch.linalg.svd returns Vh, "
            "already transposed).",
        )
    return "truncated SVD gives the best rank-r approximation"


check_best_rank_r = register(EX_BEST_RANK_R, probe_best_rank_r, judge_best_rank_r)

# -- 1.3 rank_for_energy ---------------------------------------------------------------------------

ENERGY_CASES = [
    ([3.0, 2.0, 1.0, 0.5], 0.9),
    ([3.0, 2.0, 1.0, 0.5], 0.5),
    ([1.0, 1.0, 1.0, 1.0], 0.75),
    ([10.0, 1.0, 0.1], 0.99),
    ([2.0, 1.0], 1.0),
]


def probe_rank_for_energy(fn, seed: int) -> dict:
    return {"cases": [call(fn, torch.tensor(S), energy).record() for S, energy in ENERGY_CASES]}


def judge_rank_for_energy(record: dict, seed: int) -> str:
    """``fn(S, energy)``: the smallest ``r`` with ``sum(S[:r]**2) / sum(S**2) >= energy``."""
    ex = EX_RANK_FOR_ENERGY
    for (S, energy), got in zip(ENERGY_CASES, record["cases"], strict=True):
        S_ = torch.tensor(S)
        fractions = torch.cumsum(S_**2, 0) / (S_**2).sum()
        expected = int((fractions < energy - 1e-9).sum().item()) + 1
        case = f"S={S}, energy={energy}"
        got = returned(ex, got, case)
        if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point():
            got = int(got.item())
        if not is_number(got):
            wrong_type(ex, case, "an int", got)
        expect_equal(
            ex,
            got,
            expected,
            case,
            "energy is the sum of SQUARED singular values; r counts values kept, starting from 1.",
        )
    return "you can read off how many directions hold most of an update"


check_rank_for_energy = register(EX_RANK_FOR_ENERGY, probe_rank_for_energy, judge_rank_for_energy)
