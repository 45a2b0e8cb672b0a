"""Checkers for the exercises of lesson 13 one base, many adapters, one batch.

Each exercise is a probe (runs the learner's function on the cases of a seed and records what came back)
and a judge (rebuilds the same cases, computes the reference with ``lora_basics``' multi-adapter layers and
compares): see :mod:`lora_course.checkers.common`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import lora_basics as lora

from .common import call, expect_tensor, fail, generator, recorded_cases, register, returned

EX_STACK, EX_LINEAR, EX_EMBEDDING = "stack_adapters", "mixed_linear", "mixed_embedding"

Factors = list[tuple[torch.Tensor, torch.Tensor, float]]


def _factors(fan_in: int, fan_out: int, ranks: list[int], seed: int) -> Factors:
    """Random ``(A (r, fan_in), B (fan_out, r), scaling)`` of each rank (rank 0: an empty slot, scaling 0)."""
    g = generator(seed, 0)
    return [
        (
            torch.randn(r, fan_in, generator=g),
            torch.randn(fan_out, r, generator=g),
            2.0 / r if r else 0.0,
        )
        for r in ranks
    ]


def _stacked(layer: lora.MultiLoRALinear | lora.MultiLoRAEmbedding, factors: Factors):
    """The layer with exactly ``factors`` as its slots: its stacks are the reference answers."""
    layer.set_slots(factors)
    return layer


@torch.no_grad()
def _randomized(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """``module`` with random values in every parameter (a bias of zero would hide a forgotten ``+ b``)."""
    for param in module.parameters():
        param.copy_(torch.randn(param.shape, generator=generator))
    return module


def _serving(layer, ranks: list[int], slots: list[int], seed: int):
    """The multi-adapter ``layer`` with random adapters of ``ranks`` as its slots, row i through ``slots[i]``."""
    _stacked(layer, _factors(layer.fan_in, layer.fan_out, ranks, seed)).use_rows(torch.tensor(slots))
    return layer


# -- 13.1 stack_adapters ---------------------------------------------------------------------------

#: (fan_in, fan_out, ranks of the adapters, seed)
STACK_CASES = [(6, 4, [2, 3], 0), (5, 7, [0, 4, 1, 2], 1), (3, 3, [1], 2)]


def expected_stack(fan_in: int, fan_out: int, ranks: list[int], seed: int):
    layer = _stacked(lora.MultiLoRALinear(nn.Linear(fan_in, fan_out)), _factors(fan_in, fan_out, ranks, seed))
    return layer.lora_A_T, layer.lora_B_T, layer.scaling


def _judge_stack(got: Any, expected: tuple, case: str) -> None:
    __tracebackhide__ = True  # IPython: show the check cell, not these helpers
    if not (isinstance(got, (tuple, list)) and len(got) == 3):
        fail(
            EX_STACK,
            f"on {case}: expected a tuple (A_T, B_T, scaling), got {type(got).__name__}. Hint: return all three.",
        )
    hints = (
        "A_T[a] is A^T, (in, R): pad each A^T with zero COLUMNS up to the largest rank R (torch.zeros, then copy "
        "A.T into [:, :r]).",
        "B_T[a] is B^T, (R, out): B_T is (n, R, out), so transpose each B and pad it with zero ROWS up to R.",
        "scaling: a float tensor (n,) of each adapter's scaling, in order.",
    )
    for name, value, reference, hint in zip(("A_T", "B_T", "scaling"), got, expected, hints, strict=True):
        expect_tensor(EX_STACK, value, reference, f"{case}, {name}", hint)


def probe_stack_adapters(fn, seed: int) -> dict:
    cases = []
    for fan_in, fan_out, ranks, case_seed in STACK_CASES:
        factors = _factors(fan_in, fan_out, ranks, seed * 10 + case_seed)
        cases.append(call(fn, [(A.clone(), B.clone(), s) for A, B, s in factors]).record())
    return {"cases": cases}


def judge_stack_adapters(record: dict, seed: int) -> str:
    """``fn(factors) -> (A_T, B_T, scaling)``: every adapter's factors stacked, ranks zero-padded."""
    for (fan_in, fan_out, ranks, case_seed), got in zip(
        STACK_CASES, recorded_cases(record, len(STACK_CASES)), strict=True
    ):
        case = f"in={fan_in}, out={fan_out}, adapters of ranks {ranks}"
        got = returned(EX_STACK, got, case)
        _judge_stack(got, expected_stack(fan_in, fan_out, ranks, seed * 10 + case_seed), case)
    return "your stacks are MultiLoRALinear's: A^T and B^T of every adapter, zero-padded to one rank"


check_stack_adapters = register(EX_STACK, probe_stack_adapters, judge_stack_adapters)


# -- 13.2 mixed_linear -----------------------------------------------------------------------------

#: (batch, tokens, in, out, ranks of the slots (slot 0: the base), the slot of each row, seed)
LINEAR_CASES = [
    (4, 3, 6, 5, [0, 2, 3], [1, 2, 0, 1], 3),
    (5, 2, 4, 8, [0, 1, 4, 2], [3, 3, 1, 2, 0], 4),
    (2, 6, 7, 3, [0, 2], [1, 1], 5),
]


def _linear_case(batch, tokens, fan_in, fan_out, ranks, slots, seed):
    """The inputs of a case and the multi-adapter layer that computes its reference answer."""
    g = generator(seed, 1)
    layer = _serving(lora.MultiLoRALinear(_randomized(nn.Linear(fan_in, fan_out), g)), ranks, slots, seed)
    x = torch.randn(batch, tokens, fan_in, generator=g)
    base = layer.base_layer
    return (x, base.weight.detach(), base.bias.detach(), layer.lora_A_T, layer.lora_B_T, layer.scaling), layer


LINEAR_HINT = (
    "y = x @ W.T + b + scaling[slots] * (x @ A_T[slots]) @ B_T[slots]: A_T[slots] gathers each row's own A^T, "
    "(batch, in, R); torch.bmm multiplies row by row; scaling[slots].view(-1, 1, 1) broadcasts over tokens."
)


def _probe_mixed(fn, seed: int, cases: list, build) -> dict:
    records = []
    for *shape, ranks, slots, case_seed in cases:
        inputs, _ = build(*shape, ranks, slots, seed * 10 + case_seed)
        records.append(call(fn, *(t.clone() for t in inputs), torch.tensor(slots)).record())
    return {"cases": records}


def _judge_mixed(ex: str, record: dict, seed: int, cases: list, build, describe_case, hint: str) -> None:
    """Each recorded answer must be what the multi-adapter layer of its case gives for that case's input."""
    __tracebackhide__ = True  # IPython: show the check cell, not these helpers
    for (*shape, ranks, slots, case_seed), got in zip(cases, recorded_cases(record, len(cases)), strict=True):
        inputs, layer = build(*shape, ranks, slots, seed * 10 + case_seed)
        case = describe_case(*shape, slots)
        with torch.no_grad():
            expected = layer(inputs[0])
        expect_tensor(ex, returned(ex, got, case), expected, case, hint)


def probe_mixed_linear(fn, seed: int) -> dict:
    return _probe_mixed(fn, seed, LINEAR_CASES, _linear_case)


def judge_mixed_linear(record: dict, seed: int) -> str:
    """``fn(x, W, b, A_T, B_T, scaling, slots)``: the mixed-batch forward of a linear layer, row i through slot ``slots[i]``."""
    _judge_mixed(
        EX_LINEAR,
        record,
        seed,
        LINEAR_CASES,
        _linear_case,
        lambda batch, tokens, fan_in, fan_out, slots: (
            f"x of shape {(batch, tokens, fan_in)}, out={fan_out}, slots={slots}"
        ),
        LINEAR_HINT,
    )
    return "your mixed batch equals MultiLoRALinear's: every row through its own adapter"


check_mixed_linear = register(EX_LINEAR, probe_mixed_linear, judge_mixed_linear)


# -- 13.3 mixed_embedding --------------------------------------------------------------------------

#: (batch, tokens, num_embeddings, embedding_dim, ranks of the slots, the slot of each row, seed)
EMBEDDING_CASES = [
    (3, 4, 10, 6, [0, 2, 3], [2, 0, 1], 6),
    (4, 5, 7, 4, [0, 1, 3, 2], [3, 1, 3, 2], 7),
    (2, 3, 12, 5, [0, 4], [1, 1], 8),
]


def _embedding_case(batch, tokens, num, dim, ranks, slots, seed):
    g = generator(seed, 1)
    layer = _serving(lora.MultiLoRAEmbedding(_randomized(nn.Embedding(num, dim), g)), ranks, slots, seed)
    ids = torch.randint(0, num, (batch, tokens), generator=g)
    return (ids, layer.base_layer.weight.detach(), layer.lora_A_T, layer.lora_B_T, layer.scaling), layer


EMBEDDING_HINT = (
    "W0[ids] + scaling[slots] * (each row looks up ITS OWN table A_T[slots[i]]: A_T[slots[:, None], ids] is "
    "(batch, tokens, R)) @ B_T[slots], with torch.bmm; scaling[slots].view(-1, 1, 1)."
)


def probe_mixed_embedding(fn, seed: int) -> dict:
    return _probe_mixed(fn, seed, EMBEDDING_CASES, _embedding_case)


def judge_mixed_embedding(record: dict, seed: int) -> str:
    """``fn(ids, W0, A_T, B_T, scaling, slots)``: the mixed-batch lookup of an embedding, row i through slot ``slots[i]``."""
    _judge_mixed(
        EX_EMBEDDING,
        record,
        seed,
        EMBEDDING_CASES,
        _embedding_case,
        lambda batch, tokens, num, dim, slots: f"ids of shape {(batch, tokens)}, a table {num} x {dim}, slots={slots}",
        EMBEDDING_HINT,
    )
    return "your mixed lookup equals MultiLoRAEmbedding's: each row's tokens through its own adapter"


check_mixed_embedding = register(EX_EMBEDDING, probe_mixed_embedding, judge_mixed_embedding)
