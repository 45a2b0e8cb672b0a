"""Checkers for the exercises of lesson 11 QLoRA from scratch: NF4 levels, blockwise quantization, packed codes."""

from __future__ import annotations

import torch

from lora_basics import nf4

from .common import (
    Watch,
    call_watched,
    expect_no_shortcut,
    expect_tensor,
    fail,
    generator,
    recorded_cases,
    register,
    returned,
    wrong_type,
)

EX_LEVELS, EX_QUANTIZE, EX_DEQUANTIZE = "nf4_levels", "quantize_blockwise", "dequantize_packed"

# -- 11.1 nf4_levels -------------------------------------------------------------------------------

LEVELS_CASES = [0.9677083, 0.99, 0.9]  # p_max: QLoRA's, and two others
LEVELS_FORBIDDEN = {
    "normal_float_levels": "the task asks you to build the levels from the normal quantiles yourself.",
    "NF4_LEVELS": "the task asks you to build the levels from the normal quantiles yourself.",
}
LEVELS_WATCH = {"functions": [(nf4, "normal_float_levels")]}


def probe_nf4_levels(fn, seed: int) -> dict:
    return {"cases": [call_watched(Watch(**LEVELS_WATCH), fn, p_max)[1] for p_max in LEVELS_CASES]}


def judge_nf4_levels(record: dict, seed: int) -> str:
    """``fn(p_max)``: the 16 sorted NF4 levels built from the quantiles of N(0, 1) with outermost probability ``p_max``."""
    ex = EX_LEVELS
    for p_max, seen in zip(LEVELS_CASES, recorded_cases(record, len(LEVELS_CASES)), strict=True):
        text = f"p_max={p_max}"
        got = returned(ex, seen, text)
        expect_no_shortcut(ex, seen["watch"], text, LEVELS_FORBIDDEN)
        expected = nf4.normal_float_levels(p_max)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and bool((got.diff() < 0).any()):
            fail(ex, f"on {text}: your levels are not sorted. Hint: sort them in increasing order (.sort().values).")
        expect_tensor(
            ex,
            got,
            expected,
            text,
            "8 positive quantiles Φ⁻¹(p) at p = linspace(p_max, 0.5, 9)[:-1], 7 negative ones -Φ⁻¹(p) at "
            "p = linspace(p_max, 0.5, 8)[:-1], and 0; sorted, then divided by the largest so that the range is [-1, 1].",
            atol=1e-6,
        )
    return "16 levels from the normal quantiles, with an exact 0, in [-1, 1]"


check_nf4_levels = register(EX_LEVELS, probe_nf4_levels, judge_nf4_levels, forbidden=LEVELS_FORBIDDEN)

# -- 11.2 quantize_blockwise -----------------------------------------------------------------------

QUANTIZE_CASES = [((8, 16), 64, False), ((6, 40), 16, False), ((4, 64), 32, True)]  # (shape, blocksize, a zero block)
SHORTCUT = "the task asks you to scale, round and pick the levels yourself."
QUANTIZE_FORBIDDEN = {
    "quantize_nf4": SHORTCUT,
    "quantize_blocks": SHORTCUT,
    "nearest_level": SHORTCUT,
    "nearest_level_on_grid": SHORTCUT,
}
QUANTIZE_WATCH = {"functions": [(nf4, name) for name in QUANTIZE_FORBIDDEN]}
# The source scan leaves out "nearest_level": a learner may well name a helper of their own so.
QUANTIZE_SOURCE = {name: why for name, why in QUANTIZE_FORBIDDEN.items() if name != "nearest_level"}


def _weight(seed: int, case: int) -> torch.Tensor:
    shape, blocksize, zero_block = QUANTIZE_CASES[case]
    weight = torch.randn(shape, generator=generator(seed, case)) * 0.05
    weight.view(-1)[blocksize // 2] = 0.3  # an outlier: its block's absmax, far above the others
    if zero_block:
        weight.view(-1)[-blocksize:] = 0.0  # a block of zeros: absmax 0
    return weight


def probe_quantize_blockwise(fn, seed: int) -> dict:
    cases = []
    for case, (_, blocksize, _) in enumerate(QUANTIZE_CASES):
        cases.append(call_watched(Watch(**QUANTIZE_WATCH), fn, _weight(seed, case), blocksize)[1])
    return {"cases": cases}


def judge_quantize_blockwise(record: dict, seed: int) -> str:
    """``fn(weight, blocksize)``: ``(codes, absmax)`` of NF4 blockwise absmax quantization of the flattened weight."""
    ex = EX_QUANTIZE
    for case, seen in enumerate(recorded_cases(record, len(QUANTIZE_CASES))):
        shape, blocksize, zero_block = QUANTIZE_CASES[case]
        weight = _weight(seed, case)
        text = f"a weight of shape {shape}, blocksize={blocksize}" + (", its last block all zeros" * zero_block)
        got = returned(ex, seen, text)
        expect_no_shortcut(ex, seen["watch"], text, QUANTIZE_FORBIDDEN)
        if not (isinstance(got, (tuple, list)) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got)):
            wrong_type(ex, text, "a pair of tensors (codes, absmax)", got)
        codes, absmax = got
        expected_codes, expected_absmax = nf4.quantize_blocks(weight, nf4.NF4_LEVELS, blocksize)
        expect_tensor(
            ex,
            absmax,
            expected_absmax,
            text,
            "flatten the weight, .view(-1, blocksize), and take each block's largest ABSOLUTE value.",
            atol=0,
        )
        if codes.is_floating_point() or codes.dtype == torch.bool or tuple(codes.shape) != (weight.numel(),):
            wrong_type(ex, text, f"codes: an integer tensor of shape ({weight.numel()},), one per weight", codes)
        wrong = (codes.long() != expected_codes).nonzero().flatten()
        # A value within float rounding of the midpoint between two levels may go either way.
        scaled = (weight.flatten().view(-1, blocksize) / expected_absmax.clamp(min=1e-38)[:, None]).flatten()
        midpoints = (nf4.NF4_LEVELS[:-1] + nf4.NF4_LEVELS[1:]) / 2
        near_midpoint = (scaled[:, None] - midpoints).abs().amin(dim=1) < 1e-6
        wrong = wrong[~near_midpoint[wrong]]
        if len(wrong):
            i = int(wrong[0])
            fail(
                ex,
                f"on {text}: {len(wrong)} codes are wrong, the first at index {i}: weight {weight.flatten()[i]:.4f} "
                f"is {scaled[i]:.4f} after scaling by its block's absmax, nearest level "
                f"{nf4.NF4_LEVELS[expected_codes[i]]:.4f} (code {int(expected_codes[i])}), got code {int(codes[i])}. "
                "Hint: divide each value by the absmax of ITS block, then take the index of the nearest of the 16 "
                "levels; a block of zeros (absmax 0) holds zeros, whose nearest level is 0.0 (code 7).",
            )
    return "the codes and absmax values of NF4 blockwise quantization"


check_quantize_blockwise = register(
    EX_QUANTIZE, probe_quantize_blockwise, judge_quantize_blockwise, forbidden=QUANTIZE_SOURCE
)

# -- 11.3 dequantize_packed ------------------------------------------------------------------------

DEQUANTIZE_CASES = [((4, 32), 64), ((6, 16), 32), ((3, 10), 2)]  # (shape, blocksize)
UNPACK = "the task asks you to unpack the codes and look up the levels yourself."
DEQUANTIZE_FORBIDDEN = {"dequantize_nf4": UNPACK, "unpack": UNPACK, "dequantize_blocks": UNPACK, "NF4_PAIRS": UNPACK}
DEQUANTIZE_WATCH = {"functions": [(nf4, "dequantize_nf4"), (nf4, "unpack"), (nf4, "dequantize_blocks")]}
# The source scan leaves out "unpack": a learner may well name a helper of their own so.
DEQUANTIZE_SOURCE = {name: why for name, why in DEQUANTIZE_FORBIDDEN.items() if name != "unpack"}


def _packed(seed: int, case: int) -> tuple[nf4.NF4Tensor, tuple[int, ...], int]:
    shape, blocksize = DEQUANTIZE_CASES[case]
    weight = torch.randn(shape, generator=generator(seed, case))
    return nf4.quantize_nf4(weight, blocksize=blocksize), shape, blocksize


def probe_dequantize_packed(fn, seed: int) -> dict:
    cases = []
    for case in range(len(DEQUANTIZE_CASES)):
        q, shape, blocksize = _packed(seed, case)
        cases.append(call_watched(Watch(**DEQUANTIZE_WATCH), fn, q.packed, q.absmax, shape, blocksize)[1])
    return {"cases": cases}


def judge_dequantize_packed(record: dict, seed: int) -> str:
    """``fn(packed, absmax, shape, blocksize)``: the weight that NF4 codes packed two per byte stand for."""
    ex = EX_DEQUANTIZE
    for case, seen in enumerate(recorded_cases(record, len(DEQUANTIZE_CASES))):
        q, shape, blocksize = _packed(seed, case)
        text = f"a weight of shape {shape} ({q.packed.numel()} bytes), blocksize={blocksize}"
        got = returned(ex, seen, text)
        expect_no_shortcut(ex, seen["watch"], text, DEQUANTIZE_FORBIDDEN)
        expect_tensor(
            ex,
            got,
            nf4.dequantize_nf4(q),
            text,
            "the FIRST code of each byte is in its HIGH 4 bits (byte >> 4), the second in the low 4 (byte & 15); "
            "then NF4_LEVELS[code] times the absmax of the code's block, and .view(shape).",
            atol=0,
        )
    return "your dequantization equals lora_basics.nf4.dequantize_nf4"


check_dequantize_packed = register(
    EX_DEQUANTIZE, probe_dequantize_packed, judge_dequantize_packed, forbidden=DEQUANTIZE_SOURCE
)
