"""Checkers for the exercises of lesson 02 LoRALinear from scratch."""

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
    seeded,
)

# -- 02 LoRALinear from scratch --------------------------------------------------------------------


@keeps_rng
def check_lora_forward(fn: Callable) -> None:
    """``fn(x, W, b, A, B, scaling)`` = ``x W^T + b + scaling * (x A^T) B^T``, against ``LoRALinear``."""
    ex = "lora_forward"
    for seed, (i, o, r, alpha), batch in [(0, (6, 5, 2, 2), (3,)), (1, (8, 4, 3, 6), (2, 5)), (2, (4, 9, 1, 4), (7,))]:
        torch.manual_seed(seed)
        layer = lora.LoRALinear(i, o, lora.LoRAConfig(lora_r=r, lora_alpha=alpha))
        with torch.no_grad():
            layer.B.weight.normal_(0, 0.5)
        x = torch.randn(*batch, i)
        case = f"in={i}, out={o}, r={r}, scaling={alpha / r}, x of shape {tuple(x.shape)}"
        with torch.no_grad():
            expected = layer(x)
            got = run_learner(
                ex, fn, x, layer.weight, layer.bias, layer.A.weight, layer.B.weight, layer.scaling, case=case
            )
        expect_tensor(
            ex,
            got,
            expected,
            case,
            "W is (out, in), A is (r, in), B is (out, r): x @ W.T + b + scaling * (x @ A.T) @ B.T.",
        )
    say_passed(ex, "your forward matches lora_basics.LoRALinear")


@keeps_rng
def check_freeze_base(fn: Callable) -> None:
    """``fn(model)`` freezes every parameter except the LoRA factors ``A.weight``/``B.weight`` of ``LoRALinear``s."""
    ex = "freeze_base"
    torch.manual_seed(0)
    cfg = lora.LoRAConfig(lora_r=2)
    model = nn.Sequential(
        nn.Embedding(10, 8), lora.LoRALinear(8, 8, cfg), nn.LayerNorm(8), lora.LoRALinear(8, 4, cfg), nn.Linear(4, 2)
    )
    run_learner(ex, fn, model, case="Embedding, LoRALinear, LayerNorm, LoRALinear, Linear")
    got = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    expected = sorted(lora.lora_parameter_names(model))
    expect_equal(
        ex,
        got,
        expected,
        "a Sequential(Embedding, LoRALinear, LayerNorm, LoRALinear, Linear)",
        "set requires_grad = False on every parameter, then True on each LoRALinear's A.weight and B.weight "
        "(not the biases, not the other layers).",
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    say_passed(ex, f"{trainable} of {total} parameters train")


@keeps_rng
def check_lora_linear_class(cls: type) -> None:
    """``cls(in, out, config)``: a textbook LoRALinear (``A``, ``B``, ``dropout``, ``scaling``), against the library's."""
    ex = "lora_linear_class"
    for seed, (i, o, r, alpha, bias) in enumerate([(6, 5, 2, None, True), (8, 3, 4, 8, False)]):
        cfg = lora.LoRAConfig(lora_r=r, lora_alpha=alpha)
        case = f"{cls.__name__ if isinstance(cls, type) else cls}({i}, {o}, LoRAConfig(lora_r={r}, lora_alpha={alpha}), bias={bias})"
        torch.manual_seed(seed)
        layer = run_learner(ex, cls, i, o, cfg, bias=bias, case=case)
        if not isinstance(layer, nn.Linear):
            fail(
                ex, f"on {case}: expected an nn.Linear subclass, got {type(layer).__name__}. Hint: subclass nn.Linear."
            )
        reference = lora.LoRALinear(i, o, cfg, bias=bias)
        for name in ("A", "B", "dropout"):
            if not isinstance(getattr(layer, name, None), (nn.Linear, nn.Dropout)):
                fail(ex, f"on {case}: the layer has no submodule {name!r}. Hint: A and B are bias-free nn.Linear.")
        shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
        expected_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
        expect_equal(
            ex, shapes, expected_shapes, case, "A: nn.Linear(in, r, bias=False); B: nn.Linear(r, out, bias=False)."
        )
        if layer.B.weight.abs().sum().item() != 0:
            fail(ex, f"on {case}: B.weight should start at zero. Hint: nn.init.zeros_(self.B.weight).")
        std = layer.A.weight.std().item()
        if not 0.005 < std < 0.06:
            fail(ex, f"on {case}: A.weight has std {std:.3f}, expected about 0.02. Hint: nn.init.normal_(std=0.02).")
        expect_equal(
            ex,
            getattr(layer, "scaling", None),
            reference.scaling,
            case,
            "scaling = lora_alpha / r (alpha = r when None).",
        )
        randomize_lora(reference, seed=seed)
        layer.load_state_dict(reference.state_dict())
        x = torch.randn(4, i, generator=seeded(seed))
        with torch.no_grad():
            got = run_learner(ex, layer, x, case=case + " called on x")
            expected = reference(x)
        expect_tensor(
            ex, got, expected, case + " with random A and B", "forward = base linear + scaling * B(A(dropout(x)))."
        )
    say_passed(ex, "your class behaves like lora_basics.LoRALinear")
