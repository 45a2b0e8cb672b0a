"""Checkers for the exercises of lesson 08 merge on eval."""

from __future__ import annotations

import torch
from torch import nn

import lora_basics as lora

from .common import (
    call,
    expect_tensor,
    fail,
    generator,
    manual_seed,
    peek,
    randomize_lora,
    recorded_cases,
    register,
    returned,
    wrong_type,
)

EX_MERGE, EX_EXPORT = "no_double_merge", "export_linear"


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


# -- 8.1 no_double_merge ---------------------------------------------------------------------------

STEPS = ["eval", "eval", "train", "train", "eval", "train", "eval", "eval", "eval"]
LAYER_CASE = "cls(6, 4, r=2, lora_alpha=4)"


def _merge_state(seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Random weight, bias and LoRA factors for the layer (set in train mode, unmerged), and an input."""
    g = generator(seed, 0)
    state = {
        "weight": torch.randn(4, 6, generator=g) * 0.3,
        "bias": torch.randn(4, generator=g) * 0.1,
        "lora_A": torch.randn(2, 6, generator=g) * 0.3,
        "lora_B": torch.randn(4, 2, generator=g) * 0.3,
    }
    return state, torch.randn(3, 6, generator=g)


def probe_no_double_merge(cls, seed: int) -> dict:
    manual_seed(seed, 0)
    outcome = call(cls, 6, 4, r=2, lora_alpha=4)
    seen = outcome.record()
    layer = outcome.value
    if not outcome.ok or not isinstance(layer, lora.Linear):
        return seen
    state, x = _merge_state(seed)
    with torch.no_grad():
        seen["set"] = call(lambda: [getattr(layer, k).copy_(v) for k, v in state.items()]).record()
    seen["steps"] = []
    for step in STEPS:
        done = {"call": call(getattr(layer, step)).record()}
        with torch.no_grad():
            done["out"] = call(layer, x).record()
        done["merged"] = peek(lambda: layer.merged)
        done["weight"] = peek(lambda: layer.weight)
        seen["steps"].append(done)
    return seen


def judge_no_double_merge(record: dict, seed: int) -> str:
    """``cls`` (a fixed ``NaiveMergeLinear``): any sequence of ``train()``/``eval()`` merges once, unmerges once."""
    ex = EX_MERGE
    got = returned(ex, record, LAYER_CASE)
    if "steps" not in record:
        wrong_type(ex, LAYER_CASE, "a lora.Linear subclass (class FixedMergeLinear(checkers.NaiveMergeLinear))", got)
    returned(ex, record["set"], LAYER_CASE + ", setting its weights")
    state, x = _merge_state(seed)
    reference = lora.Linear(6, 4, r=2, lora_alpha=4)
    reference.load_state_dict(state)
    W0 = state["weight"]
    merged_weight = W0 + reference.delta_weight().detach()
    done = []
    for step, seen in zip(STEPS, recorded_cases({"cases": record["steps"]}, len(STEPS)), strict=True):
        done.append(step + "()")
        case = "layer." + ".".join(done)
        returned(ex, seen["call"], case)
        getattr(reference, step)()
        with torch.no_grad():
            expected = reference(x)
        expect_tensor(
            ex,
            returned(ex, seen["out"], case),
            expected,
            case,
            "merge only if not merged yet, unmerge only if merged: keep and check self.merged.",
        )
        merged, weight = returned(ex, seen["merged"], case), returned(ex, seen["weight"], case)
        should = step == "eval"
        if merged is not should:
            fail(
                ex,
                f"after {case}: layer.merged is {merged!r}, expected {should}. Hint: eval() folds the update into "
                "the weight and sets merged = True; train() takes it out and sets merged = False.",
            )
        expect_tensor(
            ex,
            weight,
            merged_weight if should else W0,
            f"{case}: layer.weight",
            "in eval mode the weight holds W0 + delta_weight() (merged exactly once), in train mode W0: "
            "eval() must merge, not only switch the mode.",
        )
    return f"{len(STEPS)} toggles, the update counted exactly once every time"


check_no_double_merge = register(EX_MERGE, probe_no_double_merge, judge_no_double_merge)

# -- 8.2 export_linear -----------------------------------------------------------------------------

EXPORT_CASES = [(False, True, "train"), (False, True, "eval"), (True, False, "eval"), (True, True, "train")]


def _export_layer(seed: int, case: int) -> tuple[lora.Linear, torch.Tensor]:
    fifo, bias, mode = EXPORT_CASES[case]
    manual_seed(seed, case)
    layer = randomize_lora(lora.Linear(6, 4, r=2, lora_alpha=4, fan_in_fan_out=fifo, bias=bias), generator(seed, case))
    return layer.train(mode == "train"), torch.randn(3, 6, generator=generator(seed, 10 + case))


def _layer_state(layer: lora.Linear) -> dict:
    """What the caller sees of a layer: its tensors, merged flag, mode and which parameters train."""
    return {
        "tensors": {k: v.detach().clone() for k, v in layer.named_parameters()},
        "merged": layer.merged,
        "training": layer.training,
        "trainable": sorted(k for k, p in layer.named_parameters() if p.requires_grad),
    }


def probe_export_linear(fn, seed: int) -> dict:
    cases = []
    for case in range(len(EXPORT_CASES)):
        layer, x = _export_layer(seed, case)
        outcome = call(fn, layer)
        seen = outcome.record()
        seen["type"] = type(outcome.value).__name__
        seen["exact"] = type(outcome.value) is nn.Linear
        seen["layer_after"] = peek(lambda layer=layer: _layer_state(layer))
        if seen["exact"]:
            with torch.no_grad():
                seen["out"] = call(outcome.value, x).record()
        cases.append(seen)
    return {"cases": cases}


def judge_export_linear(record: dict, seed: int) -> str:
    """``fn(layer)`` turns a ``lora.Linear`` (any state, either layout) into a plain ``nn.Linear``; ``layer`` unchanged."""
    ex = EX_EXPORT
    for case, seen in enumerate(recorded_cases(record, len(EXPORT_CASES))):
        fifo, bias, mode = EXPORT_CASES[case]
        layer, x = _export_layer(seed, case)
        text = f"Linear(6, 4, r=2, fan_in_fan_out={fifo}, bias={bias}) in {mode} mode"
        got = returned(ex, seen, text)
        if not seen["exact"]:
            wrong_type(ex, text, "a plain nn.Linear (exactly that type): nn.Linear(in, out, bias=...)", got)
        with torch.no_grad():
            expected = layer(x)
        expect_tensor(
            ex,
            returned(ex, seen["out"], text),
            expected,
            text,
            "in eval mode the weight is ALREADY merged (layer.merged): do not add the update twice; "
            "with fan_in_fan_out the weight is stored (in, out), transpose it.",
        )
        after = returned(ex, seen["layer_after"], text)
        before = _layer_state(layer)
        changed = [k for k in ("merged", "training", "trainable") if after[k] != before[k]]
        changed += [
            k
            for k, v in before["tensors"].items()
            if k not in after["tensors"] or not torch.equal(after["tensors"][k], v)
        ]
        if changed:
            fail(
                ex,
                f"on {text}: your export changed `layer` ({', '.join(changed)}). Hint: read its weight and build a "
                "new one; do not call train()/eval()/merge() on the caller's layer or change its tensors in place.",
            )
    return "a plain nn.Linear that computes what the LoRA layer computed, and the layer left as it was"


check_export_linear = register(EX_EXPORT, probe_export_linear, judge_export_linear)
