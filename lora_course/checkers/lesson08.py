"""Checkers for the exercises of lesson 08 merge on eval."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import lora_basics as lora

from .common import (
    expect_tensor,
    fail,
    keeps_rng,
    randomize_lora,
    run_learner,
    say_passed,
    seeded,
)

# -- 08 merge on eval ------------------------------------------------------------------------------


class NaiveMergeLinear(lora.Linear):
    """A deliberately buggy merge-on-eval: ``train(False)`` adds the update every time it is called.

    ``model.eval(); model.eval()`` merges twice, so the update is counted twice; ``train()`` after
    two merges takes only one out. Exercise 8.1 asks for a fixed ``train``.
    """

    def train(self, mode: bool = True):
        nn.Module.train(self, mode)
        with torch.no_grad():
            if mode and self.merged:
                self.weight -= self.delta_weight()
                self.merged = False
            elif not mode:
                self.weight += self.delta_weight()
                self.merged = True
        return self


@keeps_rng
def check_no_double_merge(cls: type) -> None:
    """``cls`` (a fixed ``NaiveMergeLinear``): any sequence of ``train()``/``eval()`` keeps the output right."""
    ex = "no_double_merge"
    torch.manual_seed(0)
    layer = run_learner(ex, cls, 6, 4, r=2, lora_alpha=4, case="cls(6, 4, r=2, lora_alpha=4)")
    randomize_lora(layer)
    reference = randomize_lora(lora.Linear(6, 4, r=2, lora_alpha=4))
    with torch.no_grad():
        reference.weight.copy_(layer.weight)
        reference.bias.copy_(layer.bias)
    reference.eval()
    x = torch.randn(3, 6, generator=seeded(0))
    with torch.no_grad():
        expected = reference(x)
    steps = ["eval", "eval", "train", "train", "eval", "train", "eval", "eval", "eval"]
    done = []
    for step in steps:
        run_learner(ex, getattr(layer, step), case=f"{'.'.join(done + [step + '()'])}")
        done.append(step + "()")
        with torch.no_grad():
            got = layer(x)
        expect_tensor(
            ex,
            got,
            expected,
            "layer." + ".".join(done),
            "merge only if not merged yet, unmerge only if merged: keep and check self.merged.",
        )
    say_passed(ex, f"{len(steps)} toggles, the update counted exactly once every time")


@keeps_rng
def check_export_linear(fn: Callable) -> None:
    """``fn(layer)`` turns a ``lora.Linear`` (any state, either layout) into a plain ``nn.Linear`` with the merged weight."""
    ex = "export_linear"
    for seed, (fifo, bias, mode) in enumerate(
        [(False, True, "train"), (False, True, "eval"), (True, False, "eval"), (True, True, "train")]
    ):
        torch.manual_seed(seed)
        layer = randomize_lora(lora.Linear(6, 4, r=2, lora_alpha=4, fan_in_fan_out=fifo, bias=bias), seed=seed)
        layer.train(mode == "train")
        x = torch.randn(3, 6, generator=seeded(seed))
        with torch.no_grad():
            expected = layer(x)
        case = f"Linear(6, 4, r=2, fan_in_fan_out={fifo}, bias={bias}) in {mode} mode"
        got = run_learner(ex, fn, layer, case=case)
        if type(got) is not nn.Linear:
            fail(
                ex,
                f"on {case}: expected a plain nn.Linear, got {type(got).__name__}. Hint: build nn.Linear(in, out, bias=...).",
            )
        with torch.no_grad():
            out = got(x)
        expect_tensor(
            ex,
            out,
            expected,
            case,
            "in eval mode the weight is ALREADY merged (layer.merged): do not add the update twice; "
            "with fan_in_fan_out the weight is stored (in, out), transpose it.",
        )
    say_passed(ex, "a plain nn.Linear that computes what the LoRA layer computed")
