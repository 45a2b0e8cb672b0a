"""Checkers for the exercises of lesson 10 variants of LoRA (DoRA, PiSSA, LoRA+).

Each exercise is a probe (runs the learner's function on the cases of a seed and records what came back)
and a judge (rebuilds the same cases, computes the reference with ``lora_basics`` and compares): see
:mod:`lora_course.checkers.common`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import lora_basics as lora

from .common import call, describe, expect_tensor, fail, generator, manual_seed, recorded_cases, register, returned

EX_DORA, EX_PISSA, EX_PLUS = "dora_weight", "pissa_split", "lora_plus_groups"


def _reference_layer(W0: torch.Tensor, r: int, scaling: float, **variant) -> lora.Linear:
    """A ``lora.Linear`` holding ``W0`` (out, in), no bias, whose scaling is ``scaling``."""
    out_features, in_features = W0.shape
    layer = lora.Linear(in_features, out_features, r=r, lora_alpha=scaling * r, bias=False, **variant)
    with torch.no_grad():
        layer.weight.copy_(W0)
    return layer


# -- 10.1 dora_weight ------------------------------------------------------------------------------

#: (out, in, r, scaling)
DORA_CASES = [(5, 4, 2, 2.0), (3, 7, 1, 0.5), (6, 6, 3, 1.5)]
DORA_FORBIDDEN = {
    "Linear": "build the weight from W0, A, B and the magnitude yourself, not with a layer.",
    "merged_weight": "that is the library's answer; build the weight yourself.",
    "weight_norm": "that is the library's norm; compute the row norms yourself (torch.linalg.vector_norm).",
}


def _dora_inputs(seed: int, case: int):
    out_features, in_features, r, scaling = DORA_CASES[case]
    g = generator(seed, case)
    W0 = torch.randn(out_features, in_features, generator=g)
    A = torch.randn(r, in_features, generator=g) * 0.5
    B = torch.randn(out_features, r, generator=g) * 0.5
    magnitude = torch.rand(out_features, generator=g) + 0.5  # not W0's norms: a trained magnitude
    return W0, A, B, magnitude, scaling


def probe_dora_weight(fn, seed: int) -> dict:
    return {"cases": [call(fn, *_dora_inputs(seed, case)).record() for case in range(len(DORA_CASES))]}


@torch.no_grad()
def judge_dora_weight(record: dict, seed: int) -> str:
    """``fn(W0, A, B, magnitude, scaling)``: DoRA's weight ``m ⊙ (W0 + s B A) / ||W0 + s B A||_row``, (out, in)."""
    for case, got in enumerate(recorded_cases(record, len(DORA_CASES))):
        W0, A, B, magnitude, scaling = _dora_inputs(seed, case)
        layer = _reference_layer(W0, A.shape[0], scaling, use_dora=True)
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
        layer.lora_magnitude.copy_(magnitude)
        expected = layer.eval().weight  # merging writes DoRA's weight
        text = f"W0 of shape {tuple(W0.shape)}, r={A.shape[0]}, scaling={scaling}"
        expect_tensor(
            EX_DORA,
            returned(EX_DORA, got, text),
            expected,
            text,
            "V = W0 + scaling * B @ A; divide each ROW of V (one output feature) by its norm "
            "(torch.linalg.vector_norm(V, dim=1, keepdim=True)), then multiply row i by magnitude[i].",
        )
    return "your weight is lora.Linear(use_dora=True)'s merged weight"


check_dora_weight = register(EX_DORA, probe_dora_weight, judge_dora_weight, forbidden=DORA_FORBIDDEN)


# -- 10.2 pissa_split ------------------------------------------------------------------------------

#: (out, in, r, scaling)
PISSA_CASES = [(6, 5, 2, 2.0), (4, 8, 3, 0.5), (7, 7, 1, 4.0)]
PISSA_FORBIDDEN = {"init_pissa": "that is the library's PiSSA; split W0 yourself with torch.linalg.svd."}


def _pissa_inputs(seed: int, case: int):
    out_features, in_features, r, scaling = PISSA_CASES[case]
    return torch.randn(out_features, in_features, generator=generator(seed, case)), r, scaling


def probe_pissa_split(fn, seed: int) -> dict:
    return {"cases": [call(fn, *_pissa_inputs(seed, case)).record() for case in range(len(PISSA_CASES))]}


@torch.no_grad()
def judge_pissa_split(record: dict, seed: int) -> str:
    """``fn(W0, r, scaling) -> (A, B, W_res)``: PiSSA's factors and residual, the singular values split evenly."""
    ex = EX_PISSA
    for case, got in enumerate(recorded_cases(record, len(PISSA_CASES))):
        W0, r, scaling = _pissa_inputs(seed, case)
        reference = lora.init_pissa(_reference_layer(W0, r, scaling))
        text = f"W0 of shape {tuple(W0.shape)}, r={r}, scaling={scaling}"
        got = returned(ex, got, text)
        if not (isinstance(got, (tuple, list)) and len(got) == 3):
            fail(ex, f"on {text}: expected a tuple (A, B, W_res), got {describe(got)}. Hint: return all three.")
        A, B, W_res = got
        for name, value, shape in (("A", A, (r, W0.shape[1])), ("B", B, (W0.shape[0], r))):
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
                fail(
                    ex,
                    f"on {text}: {name} should be a tensor of shape {shape}, got {describe(value)}. Hint: A is "
                    "(r, in) and B is (out, r), as lora_A and lora_B.",
                )
        # The sign of a singular vector is arbitrary: compare what does not depend on it.
        expect_tensor(
            ex,
            scaling * B.float() @ A.float(),
            scaling * reference.lora_B @ reference.lora_A,
            f"{text}, scaling * B @ A",
            "scaling * B @ A must be the top-r singular part U_r diag(S_r) V_r^T of W0 (torch.linalg.svd, "
            "full_matrices=False).",
        )
        expect_tensor(
            ex,
            W_res,
            reference.weight,
            f"{text}, W_res",
            "W_res = W0 - scaling * B @ A: what stays frozen.",
        )
        even = torch.diag(torch.linalg.svdvals(W0)[:r] / scaling)  # (r, r): sqrt(S_r / s) on each side
        for name, gram in (("A @ A.T", A.float() @ A.float().T), ("B.T @ B", B.float().T @ B.float())):
            expect_tensor(
                ex,
                gram,
                even,
                f"{text}, {name}",
                "split each singular value evenly between the factors: B = U_r * sqrt(S_r / scaling), "
                "A = sqrt(S_r / scaling)[:, None] * V_r^T, so that both hold sqrt(S_r / scaling).",
            )
    return "your split is lora.init_pissa's: the top-r part in B A, shared evenly, the residual frozen"


check_pissa_split = register(EX_PISSA, probe_pissa_split, judge_pissa_split, forbidden=PISSA_FORBIDDEN)


# -- 10.3 lora_plus_groups -------------------------------------------------------------------------

PLUS_CASES = ["Linear LoRA, bias trained", "MergedLinear and Embedding LoRA", "DoRA, one layer left frozen"]
PLUS_FORBIDDEN = {"lora_plus_param_groups": "that is the library's answer; build the groups yourself."}
NOT_A_PARAMETER = "<not a parameter of the model>"


def _plus_model(seed: int, case: int) -> tuple[nn.Module, float, float]:
    manual_seed(seed, case)
    what = PLUS_CASES[case]
    if what.startswith("Linear"):
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
        lora.add_lora(model, ["0", "2"], r=2, lora_alpha=4, bias="all")
    elif what.startswith("MergedLinear"):
        model = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 12))
        lora.add_lora(model, ["0", "1"], r=2, lora_alpha=4, enable_lora={"1": [True, False, True]})
    else:
        model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
        lora.add_lora(model, ["0"], r=3, lora_alpha=6, use_dora=True)
    return model, 1e-3 * (case + 1), 16.0 / (case + 1)


def _rates(model: nn.Module, groups: Any) -> dict:
    """``{"rates": {name: [lr, ...]}, "problem": str | None}``: the learning rate each parameter got, by name."""
    names = {id(p): name for name, p in model.named_parameters()}
    rates: dict[str, list] = {}
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, dict) for g in groups):
        return {"rates": {}, "problem": f"expected a list of dicts, got {describe(groups)}"}
    for group in groups:
        params = group.get("params")
        if isinstance(params, torch.Tensor) or not isinstance(params, (list, tuple)):
            return {"rates": {}, "problem": "each group's 'params' must be a list of the model's parameters"}
        for p in params:
            rates.setdefault(names.get(id(p), NOT_A_PARAMETER), []).append(group.get("lr"))
    return {"rates": rates, "problem": None}


def probe_lora_plus_groups(fn, seed: int) -> dict:
    cases = []
    for case in range(len(PLUS_CASES)):
        model, lr, ratio = _plus_model(seed, case)
        outcome = call(fn, model, lr, ratio)
        cases.append(outcome.record() if not outcome.ok else {"value": _rates(model, outcome.value)})
    return {"cases": cases}


def judge_lora_plus_groups(record: dict, seed: int) -> str:
    """``fn(model, lr, ratio)``: optimizer groups, every trainable ``lora_B`` at ``ratio * lr``, the rest at ``lr``."""
    ex = EX_PLUS
    hint = (
        "every parameter with requires_grad goes in exactly one group: names ending in 'lora_B' at lr * ratio, "
        "all the others (lora_A, DoRA's lora_magnitude, trained biases) at lr; frozen ones in none."
    )
    for case, got in enumerate(recorded_cases(record, len(PLUS_CASES))):
        model, lr, ratio = _plus_model(seed, case)
        text = f"{PLUS_CASES[case]}, lr={lr:g}, ratio={ratio:g}"
        got = returned(ex, got, text)
        if not isinstance(got, dict) or got.get("problem"):
            fail(ex, f"on {text}: {got.get('problem') if isinstance(got, dict) else describe(got)}. Hint: {hint}")
        rates = got["rates"]
        expected = {}
        for group in lora.lora_plus_param_groups(model, lr=lr, ratio=ratio):
            expected.update(_rates(model, [group])["rates"])
        for name, lrs in rates.items():
            if name not in expected:
                what = "is not one of the model's parameters" if name == NOT_A_PARAMETER else "is frozen"
                fail(ex, f"on {text}: a tensor in your groups {what} ({name}). Hint: {hint}")
            if len(lrs) > 1:
                fail(ex, f"on {text}: {name} is in {len(lrs)} groups. Hint: {hint}")
        for name, (want,) in expected.items():
            if name not in rates:
                fail(ex, f"on {text}: the trainable {name} is in no group. Hint: {hint}")
            have = rates[name][0]
            if not isinstance(have, (int, float)) or abs(have - want) > 1e-12 * want:
                fail(ex, f"on {text}: {name} got lr {have!r}, expected {want:g}. Hint: {hint}")
    return "your groups are lora_plus_param_groups': B at ratio * lr, everything else that trains at lr"


check_lora_plus_groups = register(EX_PLUS, probe_lora_plus_groups, judge_lora_plus_groups, forbidden=PLUS_FORBIDDEN)
