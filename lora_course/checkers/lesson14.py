"""Checkers for the exercises of lesson 14 LoRA on many processes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import lora_basics as lora

from ..memory import finetune_memory
from .common import (
    call,
    expect_tensor,
    fail,
    generator,
    is_number,
    manual_seed,
    recorded_cases,
    register,
    returned,
    wrong_type,
)

EX_SHARD_LOSS, EX_ALLREDUCE_BYTES, EX_MEMORY = "shard_loss", "allreduce_bytes", "memory_per_gpu"
IGNORE = -100

# -- 14.1 shard_loss -------------------------------------------------------------------------------

SHARD_CASES = [(2, 3, 5, 7), (4, 2, 6, 5), (1, 4, 4, 3)]  # (world, rows per rank, time, vocab)


def _shard_inputs(seed: int, case: int):
    world, rows, time, vocab = SHARD_CASES[case]
    g = generator(seed, case)
    logits = torch.randn(rows, time, vocab, generator=g)
    targets = torch.randint(0, vocab, (rows, time), generator=g)
    targets[torch.rand(rows, time, generator=g) < 0.4] = IGNORE  # only some positions are answer tokens
    answer_tokens = int((targets != IGNORE).sum()) * world + case + 1  # the global count: all ranks' tokens
    return logits, targets, answer_tokens, world


def probe_shard_loss(fn, seed: int) -> dict:
    return {"cases": [call(fn, *_shard_inputs(seed, case)).record() for case in range(len(SHARD_CASES))]}


def judge_shard_loss(record: dict, seed: int) -> str:
    """``fn(logits, targets, answer_tokens, world)``: this rank's loss, such that DDP's average over the ranks
    is the mean cross-entropy over every answer token of the global batch."""
    ex = EX_SHARD_LOSS
    for case, got in enumerate(recorded_cases(record, len(SHARD_CASES))):
        logits, targets, answer_tokens, world = _shard_inputs(seed, case)
        text = f"world={world}, {targets.shape[0]} rows here, answer_tokens={answer_tokens} in the global batch"
        got = returned(ex, got, text)
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            wrong_type(ex, text, "a scalar tensor (the loss to call backward on)", got)
        summed = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")
        expect_tensor(
            ex,
            got.reshape(()),
            summed * world / answer_tokens,
            text,
            "sum this rank's token losses (reduction='sum', ignore_index=-100), divide by the GLOBAL number of "
            "answer tokens and multiply by world: DDP's averaging divides by world again.",
        )
    return "DDP's average of your rank losses is the global mean over answer tokens"


check_shard_loss = register(EX_SHARD_LOSS, probe_shard_loss, judge_shard_loss)

# -- 14.2 allreduce_bytes --------------------------------------------------------------------------

BYTES_CASES = ["lora", "lora fp16", "full", "nothing trainable"]


def _bytes_model(seed: int, case: int) -> nn.Module:
    manual_seed(seed, case)
    model = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 20))
    what = BYTES_CASES[case]
    if what.startswith("lora"):
        lora.add_lora(model, ["1", "3"], r=2 + case, lora_alpha=4)
    if what == "lora fp16":
        model.half()
    if what == "nothing trainable":
        model.requires_grad_(False)
    return model


def probe_allreduce_bytes(fn, seed: int) -> dict:
    return {"cases": [call(fn, _bytes_model(seed, case)).record() for case in range(len(BYTES_CASES))]}


def judge_allreduce_bytes(record: dict, seed: int) -> str:
    """``fn(model)``: the bytes DDP all-reduces per step: the gradients of the trainable parameters."""
    ex = EX_ALLREDUCE_BYTES
    for case, got in enumerate(recorded_cases(record, len(BYTES_CASES))):
        model = _bytes_model(seed, case)
        expected = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        text = f"a small model, {BYTES_CASES[case]}"
        got = returned(ex, got, text)
        if not is_number(got) or isinstance(got, float) and not got.is_integer():
            wrong_type(ex, text, "an int (bytes)", got)
        if int(got) != expected:
            fail(
                ex,
                f"on {text}: expected {expected:,} bytes, got {got!r}. Hint: only parameters with requires_grad have "
                "a gradient to send, and each gradient has its parameter's dtype (p.element_size() bytes per number).",
            )
    return "only the trainable parameters' gradients travel"


check_allreduce_bytes = register(EX_ALLREDUCE_BYTES, probe_allreduce_bytes, judge_allreduce_bytes)

# -- 14.3 memory_per_gpu ---------------------------------------------------------------------------

MEMORY_CASES = [(7e9, 4e7, "full", 1), (7e9, 4e7, "lora", 1), (7e9, 4e7, "lora", 8), (65e9, 8e8, "full", 64)]


def probe_memory_per_gpu(fn, seed: int) -> dict:
    return {"cases": [call(fn, *case).record() for case in MEMORY_CASES]}


def judge_memory_per_gpu(record: dict, seed: int) -> str:
    """``fn(n_params, n_trainable, method, gpus)``: GB per GPU of weights + gradients + Adam state, sharded."""
    ex = EX_MEMORY
    for (n, t, method, gpus), got in zip(MEMORY_CASES, recorded_cases(record, len(MEMORY_CASES)), strict=True):
        text = f"n_params={n:.0e}, n_trainable={t:.0e}, method={method!r}, gpus={gpus}"
        got = returned(ex, got, text)
        if not is_number(got):
            wrong_type(ex, text, "a float (GB)", got)
        expected = finetune_memory(n, method, t, gpus)["total"]
        if not math.isclose(got, expected, rel_tol=1e-3):
            fail(
                ex,
                f"on {text}: expected {expected:.2f} GB, got {got!r}. Hint: 16 bytes per trainable parameter (weight, "
                "gradient, fp32 master copy, two Adam moments), 2 per frozen bf16 weight, 1 GB = 1e9 bytes, divided "
                "by the number of GPUs.",
            )
    return "16 bytes per trained parameter, 2 per frozen one, divided over the GPUs"


check_memory_per_gpu = register(EX_MEMORY, probe_memory_per_gpu, judge_memory_per_gpu)
