"""Checkers for the exercises of lesson 06 Embedding."""

from __future__ import annotations

from collections.abc import Callable

import torch

import lora_basics as lora

from .common import (
    expect_equal,
    expect_tensor,
    fail,
    keeps_rng,
    randomize_lora,
    run_learner,
    say_passed,
    seeded,
)

# -- 06 Embedding ----------------------------------------------------------------------------------


@keeps_rng
def check_embedding_merge(fn: Callable) -> None:
    """``fn(layer)`` returns the merged table ``W0 + scaling * (B @ A)^T`` (without changing the layer)."""
    ex = "embedding_merge"
    for seed, (n, dim, r) in enumerate([(10, 4, 2), (6, 6, 3), (20, 8, 1)]):
        torch.manual_seed(seed)
        layer = randomize_lora(lora.Embedding(n, dim, r=r, lora_alpha=2), seed=seed)
        W0 = layer.weight.detach().clone()
        case = f"Embedding({n}, {dim}, r={r}, lora_alpha=2)"
        with torch.no_grad():
            got = run_learner(ex, fn, layer, case=case)
            expected = W0 + layer.delta_weight()
        if not torch.equal(layer.weight, W0):
            fail(ex, f"on {case}: layer.weight was changed. Hint: compute a new tensor, do not add in place.")
        expect_tensor(
            ex, got, expected, case, "lora_B @ lora_A is (dim, num); the table is (num, dim): transpose, then scale."
        )
    say_passed(ex, "your merged table equals lora_basics' merge")


@keeps_rng
def check_embedding_forward(fn: Callable) -> None:
    """``fn(ids, layer)``: the unmerged forward of a LoRA ``Embedding`` without building the dense update."""
    ex = "embedding_forward"
    for seed, (n, dim, r, shape) in enumerate([(10, 4, 2, (3,)), (12, 5, 3, (2, 4))]):
        torch.manual_seed(seed)
        layer = randomize_lora(lora.Embedding(n, dim, r=r, lora_alpha=3, padding_idx=0), seed=seed)
        ids = torch.randint(0, n, shape, generator=seeded(seed))
        with torch.no_grad():
            expected = layer(ids)
            got = run_learner(ex, fn, ids, layer, case=f"Embedding({n}, {dim}, r={r}), ids {tuple(ids.shape)}")
        expect_tensor(
            ex,
            got,
            expected,
            f"Embedding({n}, {dim}, r={r}), ids {ids.tolist()}",
            "weight[ids] + scaling * lora_A.T[ids] @ lora_B.T: each token picks its column of A.",
        )
    say_passed(ex, "your lookup matches lora_basics.Embedding")


@keeps_rng
def check_changed_tokens(fn: Callable) -> None:
    """``fn(layer)``: sorted list of token ids whose row of the table the LoRA update changes."""
    ex = "changed_tokens"
    for seed, (n, cols) in enumerate([(10, [1, 4, 7]), (8, []), (6, [0, 5])]):
        torch.manual_seed(seed)
        layer = randomize_lora(lora.Embedding(n, 4, r=2), seed=seed)
        with torch.no_grad():
            layer.lora_A.zero_()
            for c in cols:
                layer.lora_A[:, c] = torch.randn(2, generator=seeded(c))
        got = run_learner(ex, fn, layer, case=f"Embedding({n}, 4, r=2) with non-zero columns {cols} of lora_A")
        got = [int(t) for t in got] if isinstance(got, (list, tuple, torch.Tensor)) else got
        expect_equal(
            ex,
            got,
            cols,
            f"columns {cols} of lora_A non-zero",
            "token t's row moves by scaling * B @ A[:, t]: look for non-zero COLUMNS of lora_A.",
        )
    say_passed(ex, "only the tokens that trained moved")
