"""Checkers for the exercises of lesson 04 loralib-style Linear."""

from __future__ import annotations

import torch
from torch import nn

import lora_basics as lora

from .common import (
    call,
    expect_equal,
    expect_tensor,
    fail,
    generator,
    manual_seed,
    random_lora_state,
    randomize_lora,
    recorded_cases,
    register,
    returned,
    wrong_type,
)

EX_FIFO, EX_STATE, EX_WRAP = "fifo_delta", "lora_state_dict", "wrap_linears"

# -- 4.1 fifo_delta --------------------------------------------------------------------------------

FIFO_CASES = [(6, False), (7, True), (8, True)]  # (in_features, fan_in_fan_out); out = 4, r = 2, alpha = 3


def _fifo_factors(seed: int, case: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = generator(seed, case)
    i = FIFO_CASES[case][0]
    return torch.randn(2, i, generator=g) * 0.3, torch.randn(4, 2, generator=g) * 0.3


def probe_fifo_delta(fn, seed: int) -> dict:
    cases = []
    for case, (_, fifo) in enumerate(FIFO_CASES):
        A, B = _fifo_factors(seed, case)
        with torch.no_grad():
            cases.append(call(fn, A, B, 1.5, fifo).record())
    return {"cases": cases}


def judge_fifo_delta(record: dict, seed: int) -> str:
    """``fn(lora_A, lora_B, scaling, fan_in_fan_out)``: the update in the layout of ``weight``."""
    ex = EX_FIFO
    for case, got in enumerate(recorded_cases(record, len(FIFO_CASES))):
        i, fifo = FIFO_CASES[case]
        layer = lora.Linear(i, 4, r=2, lora_alpha=3, fan_in_fan_out=fifo)
        A, B = _fifo_factors(seed, case)
        with torch.no_grad():
            layer.lora_A.copy_(A)
            layer.lora_B.copy_(B)
        text = f"Linear({i}, 4, r=2, lora_alpha=3, fan_in_fan_out={fifo})"
        expect_tensor(
            ex,
            returned(ex, got, text),
            layer.delta_weight().detach(),
            text,
            "scaling * B @ A is (out, in); GPT-2 stores weights (in, out): transpose then.",
        )
    return "your update has the shape and layout of weight in both layouts"


check_fifo_delta = register(EX_FIFO, probe_fifo_delta, judge_fifo_delta)

# -- 4.2 lora_state_dict ---------------------------------------------------------------------------

BIAS_MODES = ("none", "all", "lora_only")
STATE_HINTS = {
    "none": "keep only keys containing 'lora_'.",
    "all": "keep 'lora_' keys and every key ending in 'bias'.",
    "lora_only": "keep 'lora_' keys and the biases of layers that have LoRA (here only '0.bias').",
}


def _state_model(seed: int) -> nn.Module:
    manual_seed(seed, 0)
    model = nn.Sequential(lora.Linear(8, 8, r=2), nn.ReLU(), nn.Linear(8, 8), lora.Linear(8, 3, r=2, bias=False))
    return randomize_lora(model, generator(seed, 0))


def probe_lora_state_dict(fn, seed: int) -> dict:
    model = _state_model(seed)
    return {"cases": [call(fn, model, bias).record() for bias in BIAS_MODES]}


def judge_lora_state_dict(record: dict, seed: int) -> str:
    """``fn(model, bias)`` returns the LoRA tensors (and biases per ``bias`` mode), like ``lora.lora_state_dict``."""
    ex = EX_STATE
    model = _state_model(seed)
    for bias, got in zip(BIAS_MODES, recorded_cases(record, len(BIAS_MODES)), strict=True):
        case = f"bias={bias!r}"
        got = returned(ex, got, case)
        if not isinstance(got, dict) or "__object__" in got:
            wrong_type(ex, case, "a dict of name -> tensor", got)
        expected = lora.lora_state_dict(model, bias=bias)
        expect_equal(ex, sorted(got), sorted(expected), case, STATE_HINTS[bias])
        for key in expected:
            expect_tensor(
                ex, got[key], expected[key], f"{case}, key {key!r}", "copy the values from model.state_dict()."
            )
    return "your adapter checkpoint holds exactly what lora_state_dict saves"


check_lora_state_dict = register(EX_STATE, probe_lora_state_dict, judge_lora_state_dict)

# -- 4.3 wrap_linears ------------------------------------------------------------------------------

WRAP_CASE = "Sequential(Linear, Tanh, Sequential(Linear, LayerNorm), Linear), r=4, lora_alpha=8"


def _wrap_model(seed: int) -> tuple[nn.Module, torch.Tensor]:
    manual_seed(seed, 0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)), nn.Linear(8, 2))
    return model, torch.randn(5, 6, generator=generator(seed, 0))


def probe_wrap_linears(fn, seed: int) -> dict:
    model, x = _wrap_model(seed)
    outcome = call(fn, model, 4, 8)
    seen = outcome.record()
    got = outcome.value
    if outcome.ok and isinstance(got, nn.Module):
        seen["plain"] = [n for n, m in got.named_modules() if type(m) is nn.Linear]
        seen["settings"] = {n: (m.r, m.lora_alpha) for n, m in got.named_modules() if isinstance(m, lora.Linear)}
        seen["trainable"] = {n: p.requires_grad for n, p in got.named_parameters()}
        with torch.no_grad():
            seen["after"] = call(got, x).record()
            seen["load"] = call(
                lambda: got.load_state_dict(random_lora_state(got, generator(seed, 1)), strict=False)
            ).record()
            seen["random"] = call(got, x).record()
    return seen


def judge_wrap_linears(record: dict, seed: int) -> str:
    """``fn(model, r, lora_alpha)`` replaces every ``nn.Linear`` (recursively) by ``lora.Linear``, keeping weights."""
    ex, case = EX_WRAP, WRAP_CASE
    got = returned(ex, record, case)
    if "plain" not in record:
        wrong_type(ex, case, "the model (an nn.Module): return model", got)
    if record["plain"]:
        fail(
            ex,
            f"on {case}: expected every Linear to be a lora.Linear, but these are still plain nn.Linear: "
            f"{list(record['plain'])}. Hint: replace nested layers too (recurse into children: named_children + "
            "setattr), each with lora.Linear.from_module(child, r=..., lora_alpha=...).",
        )
    model, x = _wrap_model(seed)
    with torch.no_grad():
        before = model(x)
    reference = _wrap_reference(model)
    expect_equal(
        ex,
        dict(record["settings"]),
        {n: (4, 8) for n, m in reference.named_modules() if isinstance(m, lora.Linear)},
        case + " (the lora.Linear layers and their (r, lora_alpha))",
        "every nn.Linear becomes a lora.Linear with r=4, lora_alpha=8, at the same place in the model.",
    )
    trainable = dict(record["trainable"])
    for name, _ in reference.named_parameters():
        if (
            name.endswith(".weight")
            and "lora_" not in name
            and isinstance(reference.get_submodule(name[:-7]), lora.Linear)
        ):
            if trainable.get(name, True):
                fail(
                    ex,
                    f"on {case}: the pretrained weight {name} is trainable (requires_grad=True): LoRA trains only "
                    "the update. Hint: lora.Linear freezes its weight; copy the pretrained values into it "
                    "(from_module, or weight.copy_ under torch.no_grad()) instead of assigning the old nn.Parameter.",
                )
        elif "lora_" in name and not trainable.get(name, False):
            fail(ex, f"on {case}: the LoRA factor {name} is frozen. Hint: lora_A and lora_B must train.")
    expect_tensor(
        ex,
        returned(ex, record["after"], case + ", output right after wrapping"),
        before,
        case + ", output right after wrapping",
        "keep the pretrained weights and biases: from_module copies them.",
    )
    returned(ex, record["load"], case + ", loading random LoRA factors")
    reference.load_state_dict(random_lora_state(reference, generator(seed, 1)), strict=False)
    with torch.no_grad():
        expected = reference(x)
    expect_tensor(
        ex,
        returned(ex, record["random"], case + " with random LoRA factors"),
        expected,
        case + " with random LoRA factors",
        "each layer must compute what lora.Linear.from_module(child, r=4, lora_alpha=8) computes.",
    )
    return "every Linear is a LoRA Linear now, and the model computes what it did before"


def _wrap_reference(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            setattr(module, name, lora.Linear.from_module(child, r=4, lora_alpha=8))
        else:
            _wrap_reference(child)
    return module


check_wrap_linears = register(EX_WRAP, probe_wrap_linears, judge_wrap_linears)
