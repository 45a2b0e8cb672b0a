"""Checkers for the exercises of lesson 02 LoRALinear from scratch."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

import lora_basics as lora

from .common import (
    Watch,
    call,
    call_watched,
    describe,
    expect_equal,
    expect_low_rank,
    expect_tensor,
    fail,
    generator,
    manual_seed,
    peek,
    recorded_cases,
    register,
    returned,
)

EX_FORWARD, EX_FREEZE, EX_CLASS = "lora_forward", "freeze_base", "lora_linear_class"

# -- 2.1 lora_forward ------------------------------------------------------------------------------

FORWARD_CASES = [((6, 5, 2, 2), (3,)), ((8, 4, 3, 6), (2, 5)), ((4, 9, 1, 4), (7,))]


def _forward_inputs(seed: int, case: int) -> dict:
    """x, W, b, A, B of one case, drawn directly (no layer: nothing in the probe computes the answer)."""
    (i, o, r, alpha), batch = FORWARD_CASES[case]
    g = generator(seed, case)
    return {
        "x": torch.randn(*batch, i, generator=g),
        "W": torch.randn(o, i, generator=g) * 0.3,
        "b": torch.randn(o, generator=g) * 0.1,
        "A": torch.randn(r, i, generator=g) * 0.02,
        "B": torch.randn(o, r, generator=g) * 0.5,
        "scaling": alpha / r,
    }


def probe_lora_forward(fn, seed: int) -> dict:
    cases = []
    for case in range(len(FORWARD_CASES)):
        v = _forward_inputs(seed, case)
        watch = Watch(A=[v["A"]], B=[v["B"]], x=[v["x"]])
        cases.append(call_watched(watch, fn, v["x"], v["W"], v["b"], v["A"], v["B"], v["scaling"])[1])
    return {"cases": cases}


def judge_lora_forward(record: dict, seed: int) -> str:
    """``fn(x, W, b, A, B, scaling)`` = ``x W^T + b + scaling * (x A^T) B^T``, against ``LoRALinear``, low-rank."""
    ex = EX_FORWARD
    for case, got in enumerate(recorded_cases(record, len(FORWARD_CASES))):
        (i, o, r, alpha), batch = FORWARD_CASES[case]
        v = _forward_inputs(seed, case)
        layer = lora.LoRALinear(i, o, lora.LoRAConfig(lora_r=r, lora_alpha=alpha))
        layer.load_state_dict({"weight": v["W"], "bias": v["b"], "A.weight": v["A"], "B.weight": v["B"]})
        text = f"in={i}, out={o}, r={r}, scaling={alpha / r}, x of shape {tuple(v['x'].shape)}"
        with torch.no_grad():
            expected = layer(v["x"])
        expect_tensor(
            ex,
            returned(ex, got, text),
            expected,
            text,
            "W is (out, in), A is (r, in), B is (out, r): x @ W.T + b + scaling * (x @ A.T) @ B.T.",
        )
        expect_low_rank(
            ex, got["watch"], text, "go through the small (..., r) activation: after_A = x @ A.T, then after_A @ B.T."
        )
    return "your forward matches lora_basics.LoRALinear"


check_lora_forward = register(EX_FORWARD, probe_lora_forward, judge_lora_forward)

# -- 2.2 freeze_base -------------------------------------------------------------------------------

FREEZE_CASE = "a Sequential(Embedding, LoRALinear, LayerNorm, LoRALinear, Linear)"


def _freeze_model(seed: int) -> nn.Module:
    manual_seed(seed, 0)
    cfg = lora.LoRAConfig(lora_r=2)
    return nn.Sequential(
        nn.Embedding(10, 8), lora.LoRALinear(8, 8, cfg), nn.LayerNorm(8), lora.LoRALinear(8, 4, cfg), nn.Linear(4, 2)
    )


def probe_freeze_base(fn, seed: int) -> dict:
    model = _freeze_model(seed)
    outcome = call(fn, model)
    return {**outcome.record(), "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad)}


def judge_freeze_base(record: dict, seed: int) -> str:
    """``fn(model)`` freezes every parameter except the LoRA factors ``A.weight``/``B.weight`` of ``LoRALinear``s."""
    ex = EX_FREEZE
    returned(ex, record, FREEZE_CASE)
    model = _freeze_model(seed)
    expect_equal(
        ex,
        list(record["trainable"]),
        sorted(lora.lora_parameter_names(model)),
        FREEZE_CASE + " (the parameters with requires_grad=True)",
        "set requires_grad = False on every parameter, then True on each LoRALinear's A.weight and B.weight "
        "(not the biases, not the other layers).",
    )
    trainable = sum(model.get_parameter(n).numel() for n in record["trainable"])
    return f"{trainable} of {sum(p.numel() for p in model.parameters())} parameters train"


check_freeze_base = register(EX_FREEZE, probe_freeze_base, judge_freeze_base)

# -- 2.3 lora_linear_class -------------------------------------------------------------------------

#: (in, out, r, alpha, bias, dropout). The first, large one measures A's initialisation; the last checks that
#: dropout acts on x before A (in train mode, with the same random seed as the reference).
CLASS_CASES = [(256, 64, 16, None, True, 0.0), (6, 5, 2, None, True, 0.0), (8, 3, 4, 8, False, 0.5)]
INIT_STD = 0.02


def _class_case(case: int) -> tuple[str, lora.LoRAConfig, tuple]:
    i, o, r, alpha, bias, p = CLASS_CASES[case]
    text = f"MyLoRALinear({i}, {o}, LoRAConfig(lora_r={r}, lora_alpha={alpha}, lora_dropout={p}), bias={bias})"
    return text, lora.LoRAConfig(lora_r=r, lora_alpha=alpha, lora_dropout=p), (i, o, r, alpha, bias, p)


def _class_state(seed: int, case: int) -> tuple[dict, torch.Tensor]:
    """Random values for every tensor of the layer (B non-zero, else any LoRA path passes), and an input."""
    i, o, r, _, bias, _ = CLASS_CASES[case]
    g = generator(seed, case)
    state = {"weight": torch.randn(o, i, generator=g) * 0.3}
    if bias:
        state["bias"] = torch.randn(o, generator=g) * 0.1
    state["A.weight"] = torch.randn(r, i, generator=g) * 0.3
    state["B.weight"] = torch.randn(o, r, generator=g) * 0.3
    return state, torch.randn(4, i, generator=g)


def probe_lora_linear_class(cls, seed: int) -> dict:
    cases = []
    for case in range(len(CLASS_CASES)):
        _, cfg, (i, o, *_, bias, _p) = _class_case(case)
        manual_seed(seed, case)
        outcome = call(cls, i, o, cfg, bias=bias)
        seen = outcome.record()
        if not outcome.ok:
            cases.append(seen)
            continue
        layer = outcome.value
        seen["is_linear"] = isinstance(layer, nn.Linear)
        seen["parts"] = {n: type(getattr(layer, n, None)).__name__ for n in ("A", "B", "dropout")}
        seen["shapes"] = peek(lambda layer=layer: {k: tuple(v.shape) for k, v in layer.state_dict().items()})
        seen["A"] = peek(lambda layer=layer: layer.A.weight)
        seen["B"] = peek(lambda layer=layer: layer.B.weight)
        seen["p"] = peek(lambda layer=layer: layer.dropout.p)
        seen["scaling"] = peek(lambda layer=layer: layer.scaling)
        state, x = _class_state(seed, case)
        seen["load"] = call(layer.load_state_dict, state).record() if isinstance(layer, nn.Module) else None
        if isinstance(layer, nn.Module):
            with torch.no_grad():
                layer.eval()
                seen["eval"] = call(layer, x).record()
                layer.train()
                manual_seed(seed, 100 + case)  # the dropout mask: the judge draws the same one
                seen["train"] = call(layer, x).record()
        cases.append(seen)
    return {"cases": cases}


def _dropout_variants(layer: lora.LoRALinear, x: torch.Tensor, reseed) -> dict[str, torch.Tensor]:
    """The output of ``layer`` with dropout in each wrong place, under the same random seed: names the mistake."""
    base = F.linear(x, layer.weight, layer.bias)
    variants = {}
    reseed()
    variants["after A"] = base + layer.scaling * layer.B(layer.dropout(layer.A(x)))
    reseed()
    variants["on the output"] = layer.dropout(base + layer.scaling * layer.B(layer.A(x)))
    reseed()
    variants["on the LoRA output"] = base + layer.dropout(layer.scaling * layer.B(layer.A(x)))
    reseed()
    dropped = layer.dropout(x)
    variants["on the frozen path too"] = F.linear(dropped, layer.weight, layer.bias) + layer.scaling * layer.B(
        layer.A(dropped)
    )
    variants["absent"] = base + layer.scaling * layer.B(layer.A(x))
    return variants


DROPOUT_HINTS = {
    "after A": "your dropout acts on A's output (r features); apply it to x, before A: B(A(dropout(x))).",
    "on the output": "your dropout acts on the layer's output; apply it to x, on the LoRA path only: B(A(dropout(x))).",
    "on the LoRA output": "your dropout acts on the LoRA path's output; apply it to x, before A: B(A(dropout(x))).",
    "on the frozen path too": "the frozen layer sees dropout(x) too; only the LoRA path does: "
    "F.linear(x, weight, bias) + scaling * B(A(dropout(x))).",
    "absent": "your layer never applies dropout in train mode: the LoRA path is B(A(self.dropout(x))).",
}


def judge_lora_linear_class(record: dict, seed: int) -> str:
    """``cls(in, out, config)``: a textbook LoRALinear (``A``, ``B``, ``dropout``, ``scaling``), against the library's."""
    ex = EX_CLASS
    for case, seen in enumerate(recorded_cases(record, len(CLASS_CASES))):
        text, cfg, (i, o, r, alpha, bias, p) = _class_case(case)
        returned(ex, seen, text)
        if not seen["is_linear"]:
            fail(
                ex,
                f"on {text}: expected an nn.Linear subclass, got {describe(seen['value'])}. Hint: subclass nn.Linear.",
            )
        for name, kind in (("A", "Linear"), ("B", "Linear"), ("dropout", "Dropout")):
            if seen["parts"][name] != kind:
                fail(
                    ex,
                    f"on {text}: self.{name} is {seen['parts'][name]}, expected an nn.{kind}. "
                    "Hint: A and B are bias-free nn.Linear, dropout an nn.Dropout.",
                )
        reference = lora.LoRALinear(i, o, cfg, bias=bias)
        expect_equal(
            ex,
            returned(ex, seen["shapes"], text),
            {k: tuple(v.shape) for k, v in reference.state_dict().items()},
            text + " (state dict: names and shapes)",
            "A: nn.Linear(in, r, bias=False); B: nn.Linear(r, out, bias=False).",
        )
        if returned(ex, seen["B"], text).abs().sum().item() != 0:
            fail(ex, f"on {text}: B.weight should start at zero. Hint: nn.init.zeros_(self.B.weight).")
        A = returned(ex, seen["A"], text)
        if case == 0:  # 4,096 entries: the std is measured to about 1 %
            std, mean = A.std().item(), A.mean().item()
            if not (0.9 * INIT_STD < std < 1.1 * INIT_STD and abs(mean) < 0.1 * INIT_STD):
                fail(
                    ex,
                    f"on {text}: A.weight has mean {mean:.4f} and std {std:.4f}, expected mean 0 and std {INIT_STD}. "
                    f"Hint: nn.init.normal_(self.A.weight, std={INIT_STD}).",
                )
        expect_equal(
            ex, returned(ex, seen["p"], text), p, text + " (self.dropout.p)", "nn.Dropout(config.lora_dropout)."
        )
        expect_equal(
            ex,
            returned(ex, seen["scaling"], text),
            reference.scaling,
            text,
            "scaling = lora_alpha / r (alpha = r when None).",
        )
        state, x = _class_state(seed, case)
        returned(ex, seen["load"], text + " loading a state dict")
        reference.load_state_dict(state)
        with torch.no_grad():
            reference.eval()
            expect_tensor(
                ex,
                returned(ex, seen["eval"], text + " in eval mode"),
                reference(x),
                text + " with random A and B, in eval mode",
                "forward = F.linear(x, self.weight, self.bias) + scaling * B(A(dropout(x))).",
            )
            reference.train()
            got = returned(ex, seen["train"], text + " in train mode")
            manual_seed(seed, 100 + case)
            expected = reference(x)
            if p > 0 and isinstance(got, torch.Tensor) and got.shape == expected.shape:
                for where, variant in _dropout_variants(
                    reference, x, functools.partial(manual_seed, seed, 100 + case)
                ).items():
                    if torch.allclose(got, variant, atol=1e-5, rtol=1e-4) and not torch.allclose(variant, expected):
                        fail(ex, f"on {text}, in train mode: dropout is {where}. Hint: {DROPOUT_HINTS[where]}")
            expect_tensor(
                ex,
                got,
                expected,
                text + " with random A and B, in train mode",
                "dropout acts on x before A, on the LoRA path only: base + scaling * B(A(dropout(x))).",
            )
    return "your class behaves like lora_basics.LoRALinear"


check_lora_linear_class = register(EX_CLASS, probe_lora_linear_class, judge_lora_linear_class)
