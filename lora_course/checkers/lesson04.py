"""Checkers for the exercises of lesson 04 loralib-style Linear."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import lora_basics as lora

from .common import (
    expect_equal,
    expect_tensor,
    fail,
    keeps_rng,
    randomize_lora,
    run_learner,
    say_passed,
)

# -- 04 loralib-style Linear -----------------------------------------------------------------------


@keeps_rng
def check_fifo_delta(fn: Callable) -> None:
    """``fn(lora_A, lora_B, scaling, fan_in_fan_out)``: the update in the layout of ``weight``."""
    ex = "fifo_delta"
    for seed, fifo in [(0, False), (1, True), (2, True)]:
        torch.manual_seed(seed)
        layer = randomize_lora(lora.Linear(6 + seed, 4, r=2, lora_alpha=3, fan_in_fan_out=fifo), seed=seed)
        case = f"Linear({6 + seed}, 4, r=2, lora_alpha=3, fan_in_fan_out={fifo})"
        with torch.no_grad():
            got = run_learner(ex, fn, layer.lora_A, layer.lora_B, layer.scaling, fifo, case=case)
            expected = layer.delta_weight()
        expect_tensor(
            ex, got, expected, case, "scaling * B @ A is (out, in); GPT-2 stores weights (in, out): transpose then."
        )
    say_passed(ex, "your update has the shape and layout of weight in both layouts")


@keeps_rng
def check_lora_state_dict(fn: Callable) -> None:
    """``fn(model, bias)`` returns the LoRA tensors (and biases per ``bias`` mode), like ``lora.lora_state_dict``."""
    ex = "lora_state_dict"
    torch.manual_seed(0)
    model = nn.Sequential(lora.Linear(8, 8, r=2), nn.ReLU(), nn.Linear(8, 8), lora.Linear(8, 3, r=2, bias=False))
    for bias in ("none", "all", "lora_only"):
        got = run_learner(ex, fn, model, bias, case=f"bias={bias!r}")
        if not isinstance(got, dict):
            fail(ex, f"on bias={bias!r}: expected a dict, got {type(got).__name__}.")
        expected = lora.lora_state_dict(model, bias=bias)
        hints = {
            "none": "keep only keys containing 'lora_'.",
            "all": "keep 'lora_' keys and every key ending in 'bias'.",
            "lora_only": "keep 'lora_' keys and the biases of layers that have LoRA (here only '0.bias').",
        }
        expect_equal(ex, sorted(got), sorted(expected), f"bias={bias!r}", hints[bias])
        for key in expected:
            expect_tensor(
                ex, got[key], expected[key], f"bias={bias!r}, key {key!r}", "copy the values from model.state_dict()."
            )
    say_passed(ex, "your adapter checkpoint holds exactly what lora_state_dict saves")


@keeps_rng
def check_wrap_linears(fn: Callable) -> None:
    """``fn(model, r, lora_alpha)`` replaces every ``nn.Linear`` (recursively) by ``lora.Linear``, keeping weights."""
    ex = "wrap_linears"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)), nn.Linear(8, 2))
    x = torch.randn(5, 6)
    with torch.no_grad():
        before = model(x)
    case = "Sequential(Linear, Tanh, Sequential(Linear, LayerNorm), Linear), r=4, lora_alpha=8"
    got = run_learner(ex, fn, model, 4, 8, case=case)
    if not isinstance(got, nn.Module):
        fail(ex, f"on {case}: expected the model back, got {type(got).__name__}. Hint: return model.")
    plain = [name for name, m in got.named_modules() if type(m) is nn.Linear]
    if plain:
        fail(
            ex,
            f"on {case}: expected every Linear to be a lora.Linear, but these are still plain nn.Linear: {plain}. "
            "Hint: replace nested layers too (recurse into children: named_children + setattr), "
            "each with lora.Linear.from_module(child, r=..., lora_alpha=...).",
        )
    bad = [name for name, m in got.named_modules() if isinstance(m, lora.Linear) and (m.r, m.lora_alpha) != (4, 8)]
    if bad:
        fail(ex, f"on {case}: {bad} do not have r=4, lora_alpha=8.")
    with torch.no_grad():
        after = got(x)
    expect_tensor(
        ex,
        after,
        before,
        case + ", output right after wrapping",
        "keep the pretrained weights: from_module copies them.",
    )
    randomize_lora(got)
    with torch.no_grad():
        changed = not torch.allclose(got(x), before)
    if not changed:
        fail(ex, f"on {case}: a non-zero LoRA update did not change the output. Hint: is the LoRA path used?")
    say_passed(ex, "every Linear is a LoRA Linear now, and the model computes what it did before")
