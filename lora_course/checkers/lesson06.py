"""Checkers for the exercises of lesson 06 Embedding."""

from __future__ import annotations

import torch

import lora_basics as lora

from .common import (
    Watch,
    call,
    call_watched,
    expect_equal,
    expect_low_rank,
    expect_no_shortcut,
    expect_tensor,
    fail,
    generator,
    manual_seed,
    randomize_lora,
    recorded_cases,
    register,
    returned,
    wrong_type,
)

EX_MERGE, EX_FORWARD, EX_CHANGED = "embedding_merge", "embedding_forward", "changed_tokens"

# -- 6.1 embedding_merge ---------------------------------------------------------------------------

MERGE_CASES = [(10, 4, 2), (6, 6, 3), (20, 8, 1)]


def _merge_layer(seed: int, case: int) -> lora.Embedding:
    n, dim, r = MERGE_CASES[case]
    manual_seed(seed, case)
    return randomize_lora(lora.Embedding(n, dim, r=r, lora_alpha=2), generator(seed, case))


def probe_embedding_merge(fn, seed: int) -> dict:
    cases = []
    for case in range(len(MERGE_CASES)):
        layer = _merge_layer(seed, case)
        with torch.no_grad():
            outcome = call(fn, layer)
        cases.append({**outcome.record(), "weight_after": layer.weight.detach().clone()})
    return {"cases": cases}


def judge_embedding_merge(record: dict, seed: int) -> str:
    """``fn(layer)`` returns the merged table ``W0 + scaling * (B @ A)^T`` (without changing the layer)."""
    ex = EX_MERGE
    for case, got in enumerate(recorded_cases(record, len(MERGE_CASES))):
        n, dim, r = MERGE_CASES[case]
        layer = _merge_layer(seed, case)
        text = f"Embedding({n}, {dim}, r={r}, lora_alpha=2)"
        value = returned(ex, got, text)
        if not torch.equal(got["weight_after"], layer.weight.detach()):
            fail(ex, f"on {text}: layer.weight was changed. Hint: compute a new tensor, do not add in place.")
        with torch.no_grad():
            expected = layer.weight + layer.delta_weight()
        expect_tensor(
            ex, value, expected, text, "lora_B @ lora_A is (dim, num); the table is (num, dim): transpose, then scale."
        )
    return "your merged table equals lora_basics' merge"


check_embedding_merge = register(EX_MERGE, probe_embedding_merge, judge_embedding_merge)

# -- 6.2 embedding_forward -------------------------------------------------------------------------

FORWARD_CASES = [(10, 4, 2, (3,)), (12, 5, 3, (2, 4))]
PADDING_IDX = 0
FORBIDDEN = {"forward": "that is the layer itself computing the answer; look up weight and lora_A yourself."}


def _forward_inputs(seed: int, case: int) -> tuple[lora.Embedding, torch.Tensor]:
    """A random layer with ``padding_idx=0`` in the only state training can reach (``A[:, 0] = 0``), and ids with 0."""
    n, dim, r, shape = FORWARD_CASES[case]
    manual_seed(seed, case)
    layer = randomize_lora(lora.Embedding(n, dim, r=r, lora_alpha=3, padding_idx=PADDING_IDX), generator(seed, case))
    with torch.no_grad():
        layer.lora_A[:, PADDING_IDX] = 0  # the padding column gets no gradient: it stays at its initial zero
    ids = torch.randint(1, n, shape, generator=generator(seed, 10 + case))
    ids.view(-1)[-1] = PADDING_IDX  # a padded position
    return layer, ids


def probe_embedding_forward(fn, seed: int) -> dict:
    cases = []
    for case in range(len(FORWARD_CASES)):
        layer, ids = _forward_inputs(seed, case)
        watch = Watch(A=[layer.lora_A], B=[layer.lora_B], x=[ids], methods=[(lora.Embedding, "forward")])
        cases.append(call_watched(watch, fn, ids, layer)[1])
    return {"cases": cases}


def judge_embedding_forward(record: dict, seed: int) -> str:
    """``fn(ids, layer)``: the unmerged forward of a LoRA ``Embedding`` without building the dense update."""
    ex = EX_FORWARD
    for case, got in enumerate(recorded_cases(record, len(FORWARD_CASES))):
        n, dim, r, _ = FORWARD_CASES[case]
        layer, ids = _forward_inputs(seed, case)
        text = f"Embedding({n}, {dim}, r={r}, padding_idx={PADDING_IDX}), ids {ids.tolist()}"
        with torch.no_grad():
            expected = layer(ids)
        expect_tensor(
            ex,
            returned(ex, got, text),
            expected,
            text,
            "weight[ids] + scaling * lora_A.T[ids] @ lora_B.T: each token picks its column of A.",
        )
        expect_no_shortcut(ex, got["watch"], text, FORBIDDEN)
        expect_low_rank(
            ex,
            got["watch"],
            text,
            "look up the columns ids of lora_A first (lora_A.T[ids], (..., r)), then apply lora_B.",
        )
    return "your lookup matches lora_basics.Embedding"


check_embedding_forward = register(EX_FORWARD, probe_embedding_forward, judge_embedding_forward)

# -- 6.3 changed_tokens ----------------------------------------------------------------------------

CHANGED_CASES = [(10, [1, 4, 7]), (8, []), (6, [0, 5])]


def _changed_layer(seed: int, case: int) -> lora.Embedding:
    n, cols = CHANGED_CASES[case]
    manual_seed(seed, case)
    layer = randomize_lora(lora.Embedding(n, 4, r=2), generator(seed, case))
    g = generator(seed, 10 + case)
    with torch.no_grad():
        layer.lora_A.zero_()
        for c in cols:
            layer.lora_A[:, c] = torch.randn(2, generator=g)
    return layer


def probe_changed_tokens(fn, seed: int) -> dict:
    return {"cases": [call(fn, _changed_layer(seed, case)).record() for case in range(len(CHANGED_CASES))]}


def judge_changed_tokens(record: dict, seed: int) -> str:
    """``fn(layer)``: sorted list of token ids whose row of the table the LoRA update changes."""
    ex = EX_CHANGED
    for (n, cols), got in zip(CHANGED_CASES, recorded_cases(record, len(CHANGED_CASES)), strict=True):
        text = f"Embedding({n}, 4, r=2) with non-zero columns {cols} of lora_A"
        got = returned(ex, got, text)
        if isinstance(got, torch.Tensor) and not got.is_floating_point() and got.dim() == 1:
            got = got.tolist()
        if not isinstance(got, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in got):
            wrong_type(ex, text, "a list of ints (token ids)", got)
        expect_equal(
            ex,
            list(got),
            cols,
            f"columns {cols} of lora_A non-zero",
            "token t's row moves by scaling * B @ A[:, t]: look for non-zero COLUMNS of lora_A.",
        )
    return "only the tokens that trained moved"


check_changed_tokens = register(EX_CHANGED, probe_changed_tokens, judge_changed_tokens)
