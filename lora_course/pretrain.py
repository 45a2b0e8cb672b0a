"""Pretrain the tiny GPT of notebook 09 and write ``data/tiny_gpt.pt`` (``python -m lora_course.pretrain``).

The model (:class:`lora_course.gpt.GPT`, default :class:`GPTConfig`) learns the pretraining corpus
of :mod:`lora_course.tasks` (copy, reverse and shift lines) with AdamW, a short warm-up and a cosine
learning-rate decay. Everything is seeded, so the same machine and torch version give the same
weights bit for bit.

Checksum: ``torch.save`` files are zip archives whose bytes may change with the torch version, so
the checksum in ``data/tiny_gpt.sha256`` is :func:`state_checksum`: SHA-256 over every tensor of
the state dict in sorted key order (name, dtype, shape, then the raw bytes, little-endian).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .gpt import CHECKPOINT, GPT, GPTConfig
from .tasks import ANY, IGNORE, OPERATORS, TASKS, VOCAB, exact_match, pretrain_batch, task_tensors, task_words

STEPS = 3000
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
WARMUP = 50
SEED = 0


def state_checksum(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors of ``state_dict`` in sorted key order (name, dtype, shape and bytes of each)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def pretrain_scores(model: GPT, n: int = 300) -> dict[str, float]:
    """Exact match of ``model`` on ``n`` held-out lines of each operator (``?`` meaning reverse: task A)."""
    model.eval()
    words = task_words(n, seed=123)
    scores = {op: exact_match(model, *task_tensors(words, op)) for op in OPERATORS}
    scores[ANY] = exact_match(model, *task_tensors(words, ANY, TASKS["A"]))
    return scores


def pretrain(steps: int = STEPS, seed: int = SEED, config: GPTConfig | None = None, log_every: int = 0) -> GPT:
    """Train a fresh :class:`GPT` on the pretraining corpus for ``steps`` steps; returns it in eval mode."""
    config = config or GPTConfig(vocab_size=len(VOCAB))
    torch.manual_seed(seed)
    model = GPT(config)
    rng = random.Random(seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LEARNING_RATE,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < WARMUP:
            return LEARNING_RATE * (step + 1) / WARMUP
        progress = (step - WARMUP) / max(1, steps - WARMUP)
        return LEARNING_RATE * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    start = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        x, y = pretrain_batch(rng, BATCH_SIZE)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            scores = "  ".join(f"{op} {score:.3f}" for op, score in pretrain_scores(model).items())
            print(f"step {step:5d}  loss {loss.item():.4f}  exact match {scores}  {time.perf_counter() - start:.0f} s")
            model.train()
    return model.eval()


def save(model: GPT, path: Path = CHECKPOINT) -> str:
    """Write ``model`` to ``path`` and its checksum next to it (``.sha256``); returns the checksum."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config.to_dict(), "state_dict": state}, path)
    checksum = state_checksum(state)
    path.with_suffix(".sha256").write_text(f"{checksum}  {path.name} (state_checksum: tensors, not file bytes)\n")
    return checksum


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--out", type=Path, default=CHECKPOINT)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the checkpoint was made with 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = pretrain(args.steps, log_every=100)
    print(f"wrote {args.out}  checksum {save(model, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
