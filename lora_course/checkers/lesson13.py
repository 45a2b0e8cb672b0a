"""Checkers for the exercises of lesson 13 one base, many adapters, one batch.

Each checker is three small pure parts, so that it can move to another checker format unchanged:
the cases (``*_CASES``, built from seeds), the reference answer of a case (``expected_*``, computed with
``lora_basics``' multi-adapter layers) and the comparison (``_judge_*``), which raises through ``fail`` /
``expect_tensor`` with a specific hint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import lora_basics as lora

from .common import expect_tensor, fail, keeps_rng, run_learner, say_passed, seeded

EX_STACK, EX_LINEAR, EX_EMBEDDING = "stack_adapters", "mixed_linear", "mixed_embedding"

Factors = list[tuple[torch.Tensor, torch.Tensor, float]]


def _factors(fan_in: int, fan_out: int, ranks: list[int], seed: int) -> Factors:
    """Random ``(A (r, fan_in), B (fan_out, r), scaling)`` of each rank (rank 0: an empty slot, scaling 0)."""
    generator = seeded(seed)
    return [
        (
            torch.randn(r, fan_in, generator=generator),
            torch.randn(fan_out, r, generator=generator),
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


@keeps_rng
def check_stack_adapters(fn: Callable) -> None:
    """``fn(factors) -> (A_T, B_T, scaling)``: every adapter's factors stacked, ranks zero-padded."""
    for fan_in, fan_out, ranks, seed in STACK_CASES:
        case = f"in={fan_in}, out={fan_out}, adapters of ranks {ranks}"
        factors = _factors(fan_in, fan_out, ranks, seed)
        got = run_learner(EX_STACK, fn, [(A.clone(), B.clone(), s) for A, B, s in factors], case=case)
        _judge_stack(got, expected_stack(fan_in, fan_out, ranks, seed), case)
    say_passed(EX_STACK, "your stacks are MultiLoRALinear's: A^T and B^T of every adapter, zero-padded to one rank")


# -- 13.2 mixed_linear -----------------------------------------------------------------------------

#: (batch, tokens, in, out, ranks of the slots (slot 0: the base), the slot of each row, seed)
LINEAR_CASES = [
    (4, 3, 6, 5, [0, 2, 3], [1, 2, 0, 1], 3),
    (5, 2, 4, 8, [0, 1, 4, 2], [3, 3, 1, 2, 0], 4),
    (2, 6, 7, 3, [0, 2], [1, 1], 5),
]


def _linear_case(batch, tokens, fan_in, fan_out, ranks, slots, seed):
    """The inputs of a case and the multi-adapter layer that computes its reference answer."""
    generator = seeded(seed)
    layer = _serving(lora.MultiLoRALinear(_randomized(nn.Linear(fan_in, fan_out), generator)), ranks, slots, seed)
    x = torch.randn(batch, tokens, fan_in, generator=generator)
    base = layer.base_layer
    return (x, base.weight.detach(), base.bias.detach(), layer.lora_A_T, layer.lora_B_T, layer.scaling), layer


LINEAR_HINT = (
    "y = x @ W.T + b + scaling[slots] * (x @ A_T[slots]) @ B_T[slots]: A_T[slots] gathers each row's own A^T, "
    "(batch, in, R); torch.bmm multiplies row by row; scaling[slots].view(-1, 1, 1) broadcasts over tokens."
)


def _judge_mixed(ex: str, fn: Callable, inputs: tuple, layer: nn.Module, slots: list[int], case: str, hint: str):
    """``fn(*inputs, slots)`` (on copies) must give what the multi-adapter ``layer`` gives for ``inputs[0]``."""
    __tracebackhide__ = True  # IPython: show the check cell, not these helpers
    got = run_learner(ex, fn, *(t.clone() for t in inputs), torch.tensor(slots), case=case)
    with torch.no_grad():
        expected = layer(inputs[0])
    expect_tensor(ex, got, expected, case, hint)


@keeps_rng
def check_mixed_linear(fn: Callable) -> None:
    """``fn(x, W, b, A_T, B_T, scaling, slots)``: the mixed-batch forward of a linear layer, row i through slot ``slots[i]``."""
    for batch, tokens, fan_in, fan_out, ranks, slots, seed in LINEAR_CASES:
        inputs, layer = _linear_case(batch, tokens, fan_in, fan_out, ranks, slots, seed)
        case = f"x of shape {(batch, tokens, fan_in)}, out={fan_out}, slots={slots}"
        _judge_mixed(EX_LINEAR, fn, inputs, layer, slots, case, LINEAR_HINT)
    say_passed(EX_LINEAR, "your mixed batch equals MultiLoRALinear's: every row through its own adapter")


# -- 13.3 mixed_embedding --------------------------------------------------------------------------

#: (batch, tokens, num_embeddings, embedding_dim, ranks of the slots, the slot of each row, seed)
EMBEDDING_CASES = [
    (3, 4, 10, 6, [0, 2, 3], [2, 0, 1], 6),
    (4, 5, 7, 4, [0, 1, 3, 2], [3, 1, 3, 2], 7),
    (2, 3, 12, 5, [0, 4], [1, 1], 8),
]


def _embedding_case(batch, tokens, num, dim, ranks, slots, seed):
    generator = seeded(seed)
    layer = _serving(lora.MultiLoRAEmbedding(_randomized(nn.Embedding(num, dim), generator)), ranks, slots, seed)
    ids = torch.randint(0, num, (batch, tokens), generator=generator)
    return (ids, layer.base_layer.weight.detach(), layer.lora_A_T, layer.lora_B_T, layer.scaling), layer


EMBEDDING_HINT = (
    "W0[ids] + scaling[slots] * (each row looks up ITS OWN table A_T[slots[i]]: A_T[slots[:, None], ids] is "
    "(batch, tokens, R)) @ B_T[slots], with torch.bmm; scaling[slots].view(-1, 1, 1)."
)


@keeps_rng
def check_mixed_embedding(fn: Callable) -> None:
    """``fn(ids, W0, A_T, B_T, scaling, slots)``: the mixed-batch lookup of an embedding, row i through slot ``slots[i]``."""
    for batch, tokens, num, dim, ranks, slots, seed in EMBEDDING_CASES:
        inputs, layer = _embedding_case(batch, tokens, num, dim, ranks, slots, seed)
        case = f"ids of shape {(batch, tokens)}, a table {num} x {dim}, slots={slots}"
        _judge_mixed(EX_EMBEDDING, fn, inputs, layer, slots, case, EMBEDDING_HINT)
    say_passed(EX_EMBEDDING, "your mixed lookup equals MultiLoRAEmbedding's: each row's tokens through its own adapter")
