"""Checkers for the classroom exercises in ``notebooks/exercises/``: immediate, specific feedback.

Each exercise cell defines a function (or class); the check cell right after it calls one checker::

    from lora_basics.checks import check_lora_forward
    check_lora_forward(lora_forward)

A checker runs the learner's code on several small cases and compares it with ``lora_basics`` (the
reference). On success it prints one line starting with ``✓``. On failure it prints what was
expected, what came back and a hint, and raises :class:`ExerciseFailed` (an ``AssertionError``)
carrying the same message, so the notebook stops there and the grader
(``python -m lora_basics.exercises grade``) can tell the outcome:

- ``status = "not attempted"``: the learner's code still raises the stub's ``NotImplementedError``,
- ``status = "error"``: the learner's code raised some other exception,
- ``status = "failed"``: it ran but gave a wrong answer.

The message's first line names the status, so it also survives in a saved notebook's error output.
"""

from __future__ import annotations

import functools
import math
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import lora_basics as lora

STATUS_WORDS = {
    "not attempted": "not implemented yet",
    "error": "your code raised",
    "failed": "wrong answer",
}


class ExerciseFailed(AssertionError):
    """A checker's verdict on a wrong, crashing or unwritten answer; ``status`` says which."""

    def __init__(self, message: str, status: str = "failed"):
        super().__init__(message)
        self.status = status


# -- shared machinery ------------------------------------------------------------------------------


def _fail(exercise: str, message: str, status: str = "failed") -> None:
    """Print the verdict and raise it as an :class:`ExerciseFailed` (``from None``: a short traceback)."""
    __tracebackhide__ = True  # IPython: show the check cell, not these helpers
    if status == "not attempted":
        text = (
            f"✗ {exercise}: {STATUS_WORDS[status]}. Replace the `raise NotImplementedError(...)` line "
            "with your code, run that cell, then run this check again."
        )
    else:
        text = f"✗ {exercise}: {STATUS_WORDS[status]}: {message}"
    print(text)
    raise ExerciseFailed(text, status) from None


def _call(exercise: str, fn: Callable, *args: Any, case: str = "", **kwargs: Any) -> Any:
    """Run the learner's ``fn``; turn a stub or a crash into a friendly :class:`ExerciseFailed`."""
    __tracebackhide__ = True  # IPython: show the check cell, not these helpers
    if not callable(fn):
        _fail(exercise, f"expected a function or class, got {type(fn).__name__}. Pass the function itself.", "error")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        _fail(exercise, "", "not attempted")
    except ExerciseFailed:
        raise
    except Exception as error:  # noqa: BLE001 - any crash of the learner's code is reported, not raised
        where = f" on {case}" if case else ""
        frames = [
            f for f in traceback.extract_tb(error.__traceback__) if f.filename != __file__ and "torch" not in f.filename
        ]
        line = f" at `{frames[-1].line}`" if frames and frames[-1].line else ""
        _fail(exercise, f"{type(error).__name__}: {error}{line}{where}. Check the shapes in your code.", "error")


def _passed(exercise: str, message: str) -> None:
    print(f"✓ {exercise}: {message}")


def _preview(t: torch.Tensor) -> str:
    flat = t.detach().flatten()[:4].tolist()
    return "[" + ", ".join(f"{v:.4f}" for v in flat) + (", ...]" if t.numel() > 4 else "]")


def _tensor(exercise: str, got: Any, expected: torch.Tensor, case: str, hint: str, atol: float = 1e-5) -> None:
    """Fail unless ``got`` is a tensor of ``expected``'s shape and values."""
    __tracebackhide__ = True  # IPython: show the check cell, not these helpers
    if not isinstance(got, torch.Tensor):
        _fail(exercise, f"on {case}: expected a torch.Tensor, got {type(got).__name__}. Hint: {hint}")
    if tuple(got.shape) != tuple(expected.shape):
        _fail(
            exercise,
            f"on {case}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}. Hint: {hint}",
        )
    if not torch.allclose(got.detach().to(expected.dtype), expected, atol=atol, rtol=1e-4):
        diff = (got.detach().to(expected.dtype) - expected).abs().max().item()
        _fail(
            exercise,
            f"on {case}: expected {_preview(expected)}, got {_preview(got)} (max abs diff {diff:.3g}). Hint: {hint}",
        )


def _equal(exercise: str, got: Any, expected: Any, case: str, hint: str) -> None:
    __tracebackhide__ = True  # IPython: show the check cell, not these helpers
    if got != expected:
        _fail(exercise, f"on {case}: expected {expected!r}, got {got!r}. Hint: {hint}")


def _lora_shapes(exercise: str, fn: Callable, args: tuple, layer: nn.Module, case: str, hint: str) -> None:
    """Fail unless ``fn(*args)`` gives ``(shape of lora_A, shape of lora_B)`` of ``layer``."""
    __tracebackhide__ = True  # IPython: show the check cell, not these helpers
    got = _call(exercise, fn, *args, case=case)
    got = tuple(tuple(s) for s in got) if isinstance(got, (tuple, list)) else got
    _equal(exercise, got, (tuple(layer.lora_A.shape), tuple(layer.lora_B.shape)), case, hint)


@torch.no_grad()
def _randomize(module: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Give every LoRA factor random values, so the update is not zero (at init B = 0: any answer passes)."""
    generator = torch.Generator().manual_seed(seed)
    for name in lora.lora_parameter_names(module):
        param = module.get_parameter(name)
        param.copy_(torch.randn(param.shape, generator=generator) * std)
    return module


def _keeps_rng(checker: Callable) -> Callable:
    """Run ``checker`` with torch's global RNG saved and restored: checking must not change the learner's random stream."""

    @functools.wraps(checker)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        __tracebackhide__ = True  # IPython: show the check cell, not these helpers
        with torch.random.fork_rng(devices=[]):
            return checker(*args, **kwargs)

    return wrapper


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- 01 why low rank -------------------------------------------------------------------------------


@_keeps_rng
def check_param_counts(fn: Callable) -> None:
    """``fn(d, k, r) -> (full, lora)``: entries of a full ``d x k`` update and of ``B (d x r) @ A (r x k)``."""
    ex = "param_counts"
    for d, k, r in [(768, 768, 8), (4096, 11008, 16), (10, 3, 1), (12288, 12288, 4)]:
        got = _call(ex, fn, d, k, r, case=f"d={d}, k={k}, r={r}")
        _equal(ex, got, (d * k, r * (d + k)), f"d={d}, k={k}, r={r}", "B is d x r and A is r x k; add their sizes.")
    _passed(ex, "a rank-8 update of a 4096 x 4096 matrix has 65,536 entries instead of 16,777,216")


@_keeps_rng
def check_best_rank_r(fn: Callable) -> None:
    """``fn(M, r)`` returns the best rank-``r`` approximation of ``M`` (truncated SVD, Eckart-Young)."""
    ex = "best_rank_r"
    for seed, (m, n), r in [(0, (6, 4), 2), (1, (5, 9), 3), (2, (8, 8), 1), (3, (4, 7), 4)]:
        M = torch.randn(m, n, generator=_gen(seed), dtype=torch.float64)
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        expected = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]
        got = _call(ex, fn, M.clone(), r, case=f"a {m}x{n} matrix, r={r}")
        _tensor(
            ex,
            got,
            expected,
            f"a {m}x{n} matrix, r={r}",
            "keep the r largest singular values: U[:, :r] @ diag(S[:r]) @ Vh[:r] (torch.linalg.svd returns Vh, "
            "already transposed).",
        )
    _passed(ex, "truncated SVD gives the best rank-r approximation")


@_keeps_rng
def check_rank_for_energy(fn: Callable) -> None:
    """``fn(S, energy)``: the smallest ``r`` with ``sum(S[:r]**2) / sum(S**2) >= energy``."""
    ex = "rank_for_energy"
    cases = [
        (torch.tensor([3.0, 2.0, 1.0, 0.5]), 0.9),
        (torch.tensor([3.0, 2.0, 1.0, 0.5]), 0.5),
        (torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.75),
        (torch.tensor([10.0, 1.0, 0.1]), 0.99),
        (torch.tensor([2.0, 1.0]), 1.0),
    ]
    for S, energy in cases:
        fractions = torch.cumsum(S**2, 0) / (S**2).sum()
        expected = int((fractions < energy - 1e-9).sum().item()) + 1
        got = _call(ex, fn, S.clone(), energy, case=f"S={S.tolist()}, energy={energy}")
        if isinstance(got, torch.Tensor):
            got = got.item()
        _equal(
            ex,
            got,
            expected,
            f"S={S.tolist()}, energy={energy}",
            "energy is the sum of SQUARED singular values; r counts values kept, starting from 1.",
        )
    _passed(ex, "you can read off how many directions hold most of an update")


# -- 02 LoRALinear from scratch --------------------------------------------------------------------


@_keeps_rng
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
            got = _call(ex, fn, x, layer.weight, layer.bias, layer.A.weight, layer.B.weight, layer.scaling, case=case)
        _tensor(
            ex,
            got,
            expected,
            case,
            "W is (out, in), A is (r, in), B is (out, r): x @ W.T + b + scaling * (x @ A.T) @ B.T.",
        )
    _passed(ex, "your forward matches lora_basics.LoRALinear")


@_keeps_rng
def check_freeze_base(fn: Callable) -> None:
    """``fn(model)`` freezes every parameter except the LoRA factors ``A.weight``/``B.weight`` of ``LoRALinear``s."""
    ex = "freeze_base"
    torch.manual_seed(0)
    cfg = lora.LoRAConfig(lora_r=2)
    model = nn.Sequential(
        nn.Embedding(10, 8), lora.LoRALinear(8, 8, cfg), nn.LayerNorm(8), lora.LoRALinear(8, 4, cfg), nn.Linear(4, 2)
    )
    _call(ex, fn, model, case="Embedding, LoRALinear, LayerNorm, LoRALinear, Linear")
    got = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    expected = sorted(lora.lora_parameter_names(model))
    _equal(
        ex,
        got,
        expected,
        "a Sequential(Embedding, LoRALinear, LayerNorm, LoRALinear, Linear)",
        "set requires_grad = False on every parameter, then True on each LoRALinear's A.weight and B.weight "
        "(not the biases, not the other layers).",
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    _passed(ex, f"{trainable} of {total} parameters train")


@_keeps_rng
def check_lora_linear_class(cls: type) -> None:
    """``cls(in, out, config)``: a textbook LoRALinear (``A``, ``B``, ``dropout``, ``scaling``), against the library's."""
    ex = "lora_linear_class"
    for seed, (i, o, r, alpha, bias) in enumerate([(6, 5, 2, None, True), (8, 3, 4, 8, False)]):
        cfg = lora.LoRAConfig(lora_r=r, lora_alpha=alpha)
        case = f"{cls.__name__ if isinstance(cls, type) else cls}({i}, {o}, LoRAConfig(lora_r={r}, lora_alpha={alpha}), bias={bias})"
        torch.manual_seed(seed)
        layer = _call(ex, cls, i, o, cfg, bias=bias, case=case)
        if not isinstance(layer, nn.Linear):
            _fail(
                ex, f"on {case}: expected an nn.Linear subclass, got {type(layer).__name__}. Hint: subclass nn.Linear."
            )
        reference = lora.LoRALinear(i, o, cfg, bias=bias)
        for name in ("A", "B", "dropout"):
            if not isinstance(getattr(layer, name, None), (nn.Linear, nn.Dropout)):
                _fail(ex, f"on {case}: the layer has no submodule {name!r}. Hint: A and B are bias-free nn.Linear.")
        shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
        expected_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
        _equal(ex, shapes, expected_shapes, case, "A: nn.Linear(in, r, bias=False); B: nn.Linear(r, out, bias=False).")
        if layer.B.weight.abs().sum().item() != 0:
            _fail(ex, f"on {case}: B.weight should start at zero. Hint: nn.init.zeros_(self.B.weight).")
        std = layer.A.weight.std().item()
        if not 0.005 < std < 0.06:
            _fail(ex, f"on {case}: A.weight has std {std:.3f}, expected about 0.02. Hint: nn.init.normal_(std=0.02).")
        _equal(
            ex,
            getattr(layer, "scaling", None),
            reference.scaling,
            case,
            "scaling = lora_alpha / r (alpha = r when None).",
        )
        _randomize(reference, seed=seed)
        layer.load_state_dict(reference.state_dict())
        x = torch.randn(4, i, generator=_gen(seed))
        with torch.no_grad():
            got = _call(ex, layer, x, case=case + " called on x")
            expected = reference(x)
        _tensor(ex, got, expected, case + " with random A and B", "forward = base linear + scaling * B(A(dropout(x))).")
    _passed(ex, "your class behaves like lora_basics.LoRALinear")


# -- 03 rank, scaling and init ---------------------------------------------------------------------


@_keeps_rng
def check_scaling(fn: Callable) -> None:
    """``fn(alpha, r, rslora=False)``: ``alpha / r``, or rsLoRA's ``alpha / sqrt(r)``."""
    ex = "scaling"
    for alpha, r, rs in [(16, 8, False), (16, 8, True), (8, 64, False), (8, 64, True), (1, 1, True), (32, 4, False)]:
        expected = alpha / math.sqrt(r) if rs else alpha / r
        case = f"alpha={alpha}, r={r}, rslora={rs}"
        got = _call(ex, fn, alpha, r, rslora=rs, case=case)
        if not isinstance(got, (int, float)) or not math.isclose(got, expected, rel_tol=1e-9):
            _fail(ex, f"on {case}: expected {expected:.4f}, got {got!r}. Hint: rsLoRA divides by sqrt(r), LoRA by r.")
    _passed(ex, "alpha/r for LoRA, alpha/sqrt(r) for rsLoRA")


@_keeps_rng
def check_lora_grads(fn: Callable) -> None:
    """``fn(x, grad_out, A, B, scaling) -> (dA, dB)`` for ``y = scaling * x A^T B^T``, against autograd."""
    ex = "lora_grads"
    cases = [(0, 5, 6, 4, 2, 2.0, "random A and B"), (1, 3, 4, 5, 3, 0.5, "B = 0 (LoRA's init)")]
    cases.append((2, 4, 3, 3, 2, 1.0, "A = 0 and B = 0"))
    for seed, n, i, o, r, s, what in cases:
        g = _gen(seed)
        x, grad_out = torch.randn(n, i, generator=g), torch.randn(n, o, generator=g)
        A, B = torch.randn(r, i, generator=g), torch.randn(o, r, generator=g)
        if "B = 0" in what:
            B.zero_()
        if "A = 0" in what:
            A.zero_()
        A_, B_ = A.clone().requires_grad_(), B.clone().requires_grad_()
        (s * x @ A_.T @ B_.T).backward(grad_out)
        case = f"x {tuple(x.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, scaling={s}, {what}"
        got = _call(ex, fn, x, grad_out, A.clone(), B.clone(), s, case=case)
        if not isinstance(got, tuple) or len(got) != 2:
            _fail(ex, f"on {case}: expected a tuple (dA, dB), got {type(got).__name__}.")
        hint_a = "dA = scaling * (grad_out @ B).T @ x, shape (r, in)."
        hint_b = "dB = scaling * grad_out.T @ (x @ A.T), shape (out, r)."
        _tensor(ex, got[0], A_.grad, case + ", dA", hint_a)
        _tensor(ex, got[1], B_.grad, case + ", dB", hint_b)
    _passed(ex, "with B = 0 only B gets a gradient at first; with A = B = 0 nothing ever moves")


@_keeps_rng
def check_budget(fn: Callable) -> None:
    """``fn(layers, budget, target_scaling) -> (r, alpha)``: largest r whose LoRA fits, alpha = target_scaling * r."""
    ex = "budget"
    cases = [
        ([(768, 768)] * 4, 50_000, 2.0),
        ([(768, 2304), (768, 768)], 100_000, 1.0),
        ([(16, 16)], 32, 0.5),
        ([(512, 512), (512, 2048), (2048, 512)], 1_000_000, 2.0),
    ]
    for layers, budget, target in cases:
        per_rank = sum(i + o for i, o in layers)
        r = budget // per_rank
        case = f"layers={layers[:2]}{'...' if len(layers) > 2 else ''}, budget={budget:,}, target scaling={target}"
        got = _call(ex, fn, list(layers), budget, target, case=case)
        if not isinstance(got, tuple) or len(got) != 2:
            _fail(ex, f"on {case}: expected a tuple (r, alpha), got {got!r}.")
        got_r, got_alpha = got
        used = got_r * per_rank if isinstance(got_r, int) else None
        _equal(
            ex,
            got_r,
            r,
            case,
            f"one unit of rank costs sum(in + out) = {per_rank:,} parameters; take the largest r within budget"
            + (f" (your r uses {used:,})" if used is not None else ""),
        )
        if not isinstance(got_alpha, (int, float)) or not math.isclose(got_alpha / got_r, target):
            _fail(
                ex,
                f"on {case}: alpha={got_alpha!r} gives scaling {got_alpha}/{got_r}, expected {target}. Hint: alpha = target * r.",
            )
    _passed(ex, "the largest rank that fits, with the scaling you wanted")


# -- 04 loralib-style Linear -----------------------------------------------------------------------


@_keeps_rng
def check_fifo_delta(fn: Callable) -> None:
    """``fn(lora_A, lora_B, scaling, fan_in_fan_out)``: the update in the layout of ``weight``."""
    ex = "fifo_delta"
    for seed, fifo in [(0, False), (1, True), (2, True)]:
        torch.manual_seed(seed)
        layer = _randomize(lora.Linear(6 + seed, 4, r=2, lora_alpha=3, fan_in_fan_out=fifo), seed=seed)
        case = f"Linear({6 + seed}, 4, r=2, lora_alpha=3, fan_in_fan_out={fifo})"
        with torch.no_grad():
            got = _call(ex, fn, layer.lora_A, layer.lora_B, layer.scaling, fifo, case=case)
            expected = layer.delta_weight()
        _tensor(
            ex, got, expected, case, "scaling * B @ A is (out, in); GPT-2 stores weights (in, out): transpose then."
        )
    _passed(ex, "your update has the shape and layout of weight in both layouts")


@_keeps_rng
def check_lora_state_dict(fn: Callable) -> None:
    """``fn(model, bias)`` returns the LoRA tensors (and biases per ``bias`` mode), like ``lora.lora_state_dict``."""
    ex = "lora_state_dict"
    torch.manual_seed(0)
    model = nn.Sequential(lora.Linear(8, 8, r=2), nn.ReLU(), nn.Linear(8, 8), lora.Linear(8, 3, r=2, bias=False))
    for bias in ("none", "all", "lora_only"):
        got = _call(ex, fn, model, bias, case=f"bias={bias!r}")
        if not isinstance(got, dict):
            _fail(ex, f"on bias={bias!r}: expected a dict, got {type(got).__name__}.")
        expected = lora.lora_state_dict(model, bias=bias)
        hints = {
            "none": "keep only keys containing 'lora_'.",
            "all": "keep 'lora_' keys and every key ending in 'bias'.",
            "lora_only": "keep 'lora_' keys and the biases of layers that have LoRA (here only '0.bias').",
        }
        _equal(ex, sorted(got), sorted(expected), f"bias={bias!r}", hints[bias])
        for key in expected:
            _tensor(
                ex, got[key], expected[key], f"bias={bias!r}, key {key!r}", "copy the values from model.state_dict()."
            )
    _passed(ex, "your adapter checkpoint holds exactly what lora_state_dict saves")


@_keeps_rng
def check_wrap_linears(fn: Callable) -> None:
    """``fn(model, r, lora_alpha)`` replaces every ``nn.Linear`` (recursively) by ``lora.Linear``, keeping weights."""
    ex = "wrap_linears"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)), nn.Linear(8, 2))
    x = torch.randn(5, 6)
    with torch.no_grad():
        before = model(x)
    case = "Sequential(Linear, Tanh, Sequential(Linear, LayerNorm), Linear), r=4, lora_alpha=8"
    got = _call(ex, fn, model, 4, 8, case=case)
    if not isinstance(got, nn.Module):
        _fail(ex, f"on {case}: expected the model back, got {type(got).__name__}. Hint: return model.")
    plain = [name for name, m in got.named_modules() if type(m) is nn.Linear]
    if plain:
        _fail(
            ex,
            f"on {case}: expected every Linear to be a lora.Linear, but these are still plain nn.Linear: {plain}. "
            "Hint: replace nested layers too (recurse into children: named_children + setattr), "
            "each with lora.Linear.from_module(child, r=..., lora_alpha=...).",
        )
    bad = [name for name, m in got.named_modules() if isinstance(m, lora.Linear) and (m.r, m.lora_alpha) != (4, 8)]
    if bad:
        _fail(ex, f"on {case}: {bad} do not have r=4, lora_alpha=8.")
    with torch.no_grad():
        after = got(x)
    _tensor(
        ex,
        after,
        before,
        case + ", output right after wrapping",
        "keep the pretrained weights: from_module copies them.",
    )
    _randomize(got)
    with torch.no_grad():
        changed = not torch.allclose(got(x), before)
    if not changed:
        _fail(ex, f"on {case}: a non-zero LoRA update did not change the output. Hint: is the LoRA path used?")
    _passed(ex, "every Linear is a LoRA Linear now, and the model computes what it did before")


# -- 05 MergedLinear -------------------------------------------------------------------------------


@_keeps_rng
def check_merged_shapes(fn: Callable) -> None:
    """``fn(in_features, out_features, r, enable_lora) -> (shape of lora_A, shape of lora_B)``."""
    ex = "merged_shapes"
    for i, o, r, en in [
        (16, 48, 4, [True, False, True]),
        (8, 24, 2, [True, True, True]),
        (10, 40, 3, [False, True, False, False]),
    ]:
        case = f"MergedLinear({i}, {o}, r={r}, enable_lora={en})"
        layer = lora.MergedLinear(i, o, r=r, enable_lora=en)
        hint = "k = sum(enable_lora) slices get an update: A is (r*k, in), B is (out/len(enable_lora)*k, r)."
        _lora_shapes(ex, fn, (i, o, r, list(en)), layer, case, hint)
    _passed(ex, "you know the shapes of a fused layer's LoRA factors")


@_keeps_rng
def check_merged_scatter(fn: Callable) -> None:
    """``fn(y, out_features, enable_lora)``: put ``y (..., d*k)`` into the enabled slices of ``(..., out_features)``."""
    ex = "merged_scatter"
    for seed, batch, o, en in [
        (0, (2,), 12, [True, False, True]),
        (1, (2, 3), 8, [False, True]),
        (2, (1,), 12, [True, True, True, False]),
    ]:
        d, k = o // len(en), sum(en)
        y = torch.randn(*batch, d * k, generator=_gen(seed))
        expected = y.new_zeros(*batch, o)
        slot = 0
        for s, on in enumerate(en):
            if on:
                expected[..., s * d : (s + 1) * d] = y[..., slot * d : (slot + 1) * d]
                slot += 1
        case = f"y {tuple(y.shape)}, out_features={o}, enable_lora={en}"
        got = _call(ex, fn, y.clone(), o, list(en), case=case)
        _tensor(
            ex,
            got,
            expected,
            case,
            f"slice s covers outputs s*d:(s+1)*d (d={d}); the j-th ENABLED slice gets y[..., j*d:(j+1)*d], disabled ones stay 0.",
        )
    _passed(ex, "the enabled slices get their updates, the others stay zero")


@_keeps_rng
def check_merged_forward(fn: Callable) -> None:
    """``fn(x, layer)``: the LoRA path of a ``MergedLinear`` (``layer(x)`` minus the base linear), low-rank."""
    ex = "merged_forward"
    for seed, (i, o, r, en) in enumerate([(8, 12, 2, [True, False, True]), (6, 12, 3, [False, True, True, False])]):
        torch.manual_seed(seed)
        layer = _randomize(lora.MergedLinear(i, o, r=r, lora_alpha=2 * r, enable_lora=en), seed=seed)
        x = torch.randn(3, 5, i, generator=_gen(seed))
        with torch.no_grad():
            expected = layer(x) - F.linear(x, layer.weight, layer.bias)
            got = _call(ex, fn, x, layer, case=f"MergedLinear({i}, {o}, r={r}, enable_lora={en})")
        _tensor(
            ex,
            got,
            expected,
            f"MergedLinear({i}, {o}, r={r}, enable_lora={en}), x {tuple(x.shape)}",
            "after = x @ lora_A.T is (..., r*k); slice j uses after[..., j*r:(j+1)*r] @ B_j.T with B_j = lora_B[j*d:(j+1)*d]; "
            "scatter into the enabled slices and multiply by scaling.",
        )
    _passed(ex, "your low-rank forward matches lora_basics.MergedLinear")


# -- 06 Embedding ----------------------------------------------------------------------------------


@_keeps_rng
def check_embedding_merge(fn: Callable) -> None:
    """``fn(layer)`` returns the merged table ``W0 + scaling * (B @ A)^T`` (without changing the layer)."""
    ex = "embedding_merge"
    for seed, (n, dim, r) in enumerate([(10, 4, 2), (6, 6, 3), (20, 8, 1)]):
        torch.manual_seed(seed)
        layer = _randomize(lora.Embedding(n, dim, r=r, lora_alpha=2), seed=seed)
        W0 = layer.weight.detach().clone()
        case = f"Embedding({n}, {dim}, r={r}, lora_alpha=2)"
        with torch.no_grad():
            got = _call(ex, fn, layer, case=case)
            expected = W0 + layer.delta_weight()
        if not torch.equal(layer.weight, W0):
            _fail(ex, f"on {case}: layer.weight was changed. Hint: compute a new tensor, do not add in place.")
        _tensor(
            ex, got, expected, case, "lora_B @ lora_A is (dim, num); the table is (num, dim): transpose, then scale."
        )
    _passed(ex, "your merged table equals lora_basics' merge")


@_keeps_rng
def check_embedding_forward(fn: Callable) -> None:
    """``fn(ids, layer)``: the unmerged forward of a LoRA ``Embedding`` without building the dense update."""
    ex = "embedding_forward"
    for seed, (n, dim, r, shape) in enumerate([(10, 4, 2, (3,)), (12, 5, 3, (2, 4))]):
        torch.manual_seed(seed)
        layer = _randomize(lora.Embedding(n, dim, r=r, lora_alpha=3, padding_idx=0), seed=seed)
        ids = torch.randint(0, n, shape, generator=_gen(seed))
        with torch.no_grad():
            expected = layer(ids)
            got = _call(ex, fn, ids, layer, case=f"Embedding({n}, {dim}, r={r}), ids {tuple(ids.shape)}")
        _tensor(
            ex,
            got,
            expected,
            f"Embedding({n}, {dim}, r={r}), ids {ids.tolist()}",
            "weight[ids] + scaling * lora_A.T[ids] @ lora_B.T: each token picks its column of A.",
        )
    _passed(ex, "your lookup matches lora_basics.Embedding")


@_keeps_rng
def check_changed_tokens(fn: Callable) -> None:
    """``fn(layer)``: sorted list of token ids whose row of the table the LoRA update changes."""
    ex = "changed_tokens"
    for seed, (n, cols) in enumerate([(10, [1, 4, 7]), (8, []), (6, [0, 5])]):
        torch.manual_seed(seed)
        layer = _randomize(lora.Embedding(n, 4, r=2), seed=seed)
        with torch.no_grad():
            layer.lora_A.zero_()
            for c in cols:
                layer.lora_A[:, c] = torch.randn(2, generator=_gen(c))
        got = _call(ex, fn, layer, case=f"Embedding({n}, 4, r=2) with non-zero columns {cols} of lora_A")
        got = [int(t) for t in got] if isinstance(got, (list, tuple, torch.Tensor)) else got
        _equal(
            ex,
            got,
            cols,
            f"columns {cols} of lora_A non-zero",
            "token t's row moves by scaling * B @ A[:, t]: look for non-zero COLUMNS of lora_A.",
        )
    _passed(ex, "only the tokens that trained moved")


# -- 07 Conv LoRA ----------------------------------------------------------------------------------


@_keeps_rng
def check_conv_shapes(fn: Callable) -> None:
    """``fn(in_channels, out_channels, kernel_size, r, groups) -> (shape of lora_A, shape of lora_B)``."""
    ex = "conv_shapes"
    cases = [
        (lora.Conv2d, 4, 6, 3, 2, 1),
        (lora.Conv1d, 3, 5, 5, 1, 1),
        (lora.Conv2d, 4, 6, (3, 2), 2, 2),
        (lora.Conv3d, 2, 4, (3, 2, 2), 2, 1),
    ]
    for cls, i, o, ks, r, groups in cases:
        layer = cls(i, o, ks, r=r, groups=groups)
        case = f"{cls.__name__}({i}, {o}, kernel_size={layer.kernel_size}, r={r}, groups={groups})"
        hint = "with k0 = kernel_size[0] and rest = prod(kernel_size[1:]): A (r*k0, in*rest), B (out/groups*k0, r*k0)."
        _lora_shapes(ex, fn, (i, o, layer.kernel_size, r, groups), layer, case, hint)
    _passed(ex, "one rule gives A and B for Conv1d, Conv2d and Conv3d")


@_keeps_rng
def check_conv_delta(fn: Callable) -> None:
    """``fn(lora_A, lora_B, scaling, weight_shape)``: the kernel-shaped update ``scaling * (B @ A)``."""
    ex = "conv_delta"
    for seed, (cls, i, o, ks, groups) in enumerate(
        [(lora.Conv2d, 4, 6, 3, 1), (lora.Conv1d, 3, 4, 5, 1), (lora.Conv2d, 4, 6, (3, 2), 2)]
    ):
        torch.manual_seed(seed)
        layer = _randomize(cls(i, o, ks, r=2, lora_alpha=3, groups=groups), seed=seed)
        case = (
            f"{cls.__name__}({i}, {o}, kernel_size={ks}, r=2, groups={groups}) with weight {tuple(layer.weight.shape)}"
        )
        with torch.no_grad():
            got = _call(ex, fn, layer.lora_A, layer.lora_B, layer.scaling, tuple(layer.weight.shape), case=case)
            expected = layer.delta_weight()
        _tensor(
            ex,
            got,
            expected,
            case,
            "(lora_B @ lora_A) has exactly as many entries as the kernel: .view(weight_shape), times scaling.",
        )
    _passed(ex, "your kernel update matches ConvLoRA.delta_weight")


@_keeps_rng
def check_conv_forward(fn: Callable) -> None:
    """``fn(x, layer)``: a LoRA ``Conv2d``'s output with ``F.conv2d`` and the merged kernel, honouring stride/padding/groups."""
    ex = "conv_forward"
    for seed, kw in enumerate([dict(padding=1), dict(stride=2, groups=2), dict(padding=2, dilation=2)]):
        torch.manual_seed(seed)
        layer = _randomize(lora.Conv2d(4, 6, 3, r=2, lora_alpha=4, **kw), seed=seed)
        x = torch.randn(2, 4, 9, 9, generator=_gen(seed))
        case = f"Conv2d(4, 6, 3, r=2, {', '.join(f'{k}={v}' for k, v in kw.items())})"
        with torch.no_grad():
            expected = layer(x)
            got = _call(ex, fn, x, layer, case=case)
        _tensor(
            ex,
            got,
            expected,
            case,
            "F.conv2d(x, weight + delta, bias, layer.stride, layer.padding, layer.dilation, layer.groups).",
        )
    _passed(ex, "your convolution matches lora_basics.Conv2d")


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


@_keeps_rng
def check_no_double_merge(cls: type) -> None:
    """``cls`` (a fixed ``NaiveMergeLinear``): any sequence of ``train()``/``eval()`` keeps the output right."""
    ex = "no_double_merge"
    torch.manual_seed(0)
    layer = _call(ex, cls, 6, 4, r=2, lora_alpha=4, case="cls(6, 4, r=2, lora_alpha=4)")
    _randomize(layer)
    reference = _randomize(lora.Linear(6, 4, r=2, lora_alpha=4))
    with torch.no_grad():
        reference.weight.copy_(layer.weight)
        reference.bias.copy_(layer.bias)
    reference.eval()
    x = torch.randn(3, 6, generator=_gen(0))
    with torch.no_grad():
        expected = reference(x)
    steps = ["eval", "eval", "train", "train", "eval", "train", "eval", "eval", "eval"]
    done = []
    for step in steps:
        _call(ex, getattr(layer, step), case=f"{'.'.join(done + [step + '()'])}")
        done.append(step + "()")
        with torch.no_grad():
            got = layer(x)
        _tensor(
            ex,
            got,
            expected,
            "layer." + ".".join(done),
            "merge only if not merged yet, unmerge only if merged: keep and check self.merged.",
        )
    _passed(ex, f"{len(steps)} toggles, the update counted exactly once every time")


@_keeps_rng
def check_export_linear(fn: Callable) -> None:
    """``fn(layer)`` turns a ``lora.Linear`` (any state, either layout) into a plain ``nn.Linear`` with the merged weight."""
    ex = "export_linear"
    for seed, (fifo, bias, mode) in enumerate(
        [(False, True, "train"), (False, True, "eval"), (True, False, "eval"), (True, True, "train")]
    ):
        torch.manual_seed(seed)
        layer = _randomize(lora.Linear(6, 4, r=2, lora_alpha=4, fan_in_fan_out=fifo, bias=bias), seed=seed)
        layer.train(mode == "train")
        x = torch.randn(3, 6, generator=_gen(seed))
        with torch.no_grad():
            expected = layer(x)
        case = f"Linear(6, 4, r=2, fan_in_fan_out={fifo}, bias={bias}) in {mode} mode"
        got = _call(ex, fn, layer, case=case)
        if type(got) is not nn.Linear:
            _fail(
                ex,
                f"on {case}: expected a plain nn.Linear, got {type(got).__name__}. Hint: build nn.Linear(in, out, bias=...).",
            )
        with torch.no_grad():
            out = got(x)
        _tensor(
            ex,
            out,
            expected,
            case,
            "in eval mode the weight is ALREADY merged (layer.merged): do not add the update twice; "
            "with fan_in_fan_out the weight is stored (in, out), transpose it.",
        )
    _passed(ex, "a plain nn.Linear that computes what the LoRA layer computed")


# -- 09 fine-tune a tiny GPT -----------------------------------------------------------------------


def _tiny_gpt_tokens(config: Any, seed: int, batch: int = 3) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (batch, min(8, config.block_size)), generator=_gen(seed))


@_keeps_rng
def check_lora_counts(fn: Callable) -> None:
    """``fn(config, r, targets) -> (trainable, total)``: the parameter counts of ``add_lora(GPT(config), targets, r)``."""
    from lora_basics.gpt import GPT, GPTConfig

    ex = "lora_counts"
    cases = [
        (GPTConfig(), 4, ["c_attn"]),
        (GPTConfig(n_layer=3, n_embd=32), 2, ["c_fc"]),
        (GPTConfig(n_layer=2, n_embd=48, vocab_size=11), 3, ["c_proj"]),
        (GPTConfig(n_layer=1, n_embd=16), 8, ["c_attn", "c_proj", "c_fc"]),
        (GPTConfig(n_layer=2, n_embd=24, vocab_size=13), 4, ["wte", "lm_head"]),
    ]
    for config, r, targets in cases:
        torch.manual_seed(0)
        counts = lora.parameter_counts(lora.add_lora(GPT(config), list(targets), r=r))
        expected = (counts["trainable"], counts["total"])
        case = f"n_layer={config.n_layer}, n_embd={config.n_embd}, vocab_size={config.vocab_size}, r={r}, targets={targets}"
        got = _call(ex, fn, config, r, list(targets), case=case)
        got = tuple(int(v) for v in got) if isinstance(got, (tuple, list)) else got
        _equal(
            ex,
            got,
            expected,
            case,
            "each matched module (in, out) adds r * (in + out) LoRA parameters, and only those train; a target "
            "matches every module whose name ends with it: 'c_proj' is attn.c_proj (d -> d) AND mlp.c_proj "
            "(4d -> d) in every block; total = the base model's parameters + the LoRA ones.",
        )
    trainable, total = _call(ex, fn, GPTConfig(), 4, ["c_attn"])
    _passed(
        ex, f"LoRA r=4 on the whole c_attn of the tiny GPT trains {trainable:,} of {total:,} ({trainable / total:.2%})"
    )


def _reference_qv(r: int, alpha: float) -> nn.Module:
    from lora_basics.gpt import load_pretrained

    return lora.add_lora(
        load_pretrained(), ["c_attn"], r=r, lora_alpha=alpha, enable_lora={"c_attn": [True, False, True]}
    )


@_keeps_rng
def check_inject_qv(fn: Callable) -> None:
    """``fn(model, r, alpha)``: every block's ``c_attn`` becomes a Q/V ``MergedLinear`` with its weights; the rest frozen."""
    from lora_basics.gpt import load_pretrained

    ex = "inject_qv"
    for seed, (r, alpha) in enumerate([(4, 8), (2, 2)]):
        base = load_pretrained()
        x = _tiny_gpt_tokens(base.config, seed)
        with torch.no_grad():
            before = base(x)
        case = f"the pretrained tiny GPT, r={r}, alpha={alpha}"
        got = _call(ex, fn, base, r, alpha, case=case)
        if not isinstance(got, nn.Module):
            _fail(ex, f"on {case}: expected the model back, got {type(got).__name__}. Hint: return model.")
        reference = _reference_qv(r, alpha)
        for index, block in enumerate(got.h):
            layer = block.attn.c_attn
            name = f"h.{index}.attn.c_attn"
            if not isinstance(layer, lora.MergedLinear):
                _fail(
                    ex,
                    f"on {case}: {name} is a {type(layer).__name__}, expected a lora.MergedLinear. "
                    "Hint: assign the new layer to block.attn.c_attn for every block in model.h.",
                )
            settings = (list(layer.enable_lora), layer.fan_in_fan_out, layer.r, layer.lora_alpha)
            _equal(
                ex,
                settings,
                ([True, False, True], True, r, alpha),
                f"{case}, {name} (enable_lora, fan_in_fan_out, r, lora_alpha)",
                "Q and V only: enable_lora=[True, False, True]; Conv1D stores its weight (in, out): fan_in_fan_out=True.",
            )
        shapes = {k: tuple(p.shape) for k, p in got.named_parameters()}
        expected_shapes = {k: tuple(p.shape) for k, p in reference.named_parameters()}
        _equal(
            ex,
            shapes,
            expected_shapes,
            f"{case}: parameter names and shapes",
            "MergedLinear(d, 3 * d, r=..., lora_alpha=..., enable_lora=[True, False, True], fan_in_fan_out=True) "
            "holds the Conv1D weight as it is, (d, 3d).",
        )
        trainable = sorted(k for k, p in got.named_parameters() if p.requires_grad)
        expected_trainable = sorted(k for k, p in reference.named_parameters() if p.requires_grad)
        _equal(
            ex,
            trainable,
            expected_trainable,
            f"{case}: the parameters with requires_grad=True",
            "only the LoRA factors train: call lora.mark_only_lora_as_trainable(model) at the end.",
        )
        got.train()
        with torch.no_grad():
            after = got(x)
        _tensor(
            ex,
            after,
            before,
            f"{case}: the output right after injecting (B = 0, so nothing may change)",
            "copy the pretrained weight AND bias into the new layer (with torch.no_grad(): layer.weight.copy_(...)).",
        )
        _randomize(reference, seed=seed)
        got.load_state_dict(reference.state_dict())
        for mode in ("train", "eval"):
            got.train(mode == "train")
            reference.train(mode == "train")
            with torch.no_grad():
                _tensor(
                    ex,
                    got(x),
                    reference(x),
                    f"{case}, random LoRA factors, {mode} mode",
                    "the layer must compute what add_lora's does: same class, same settings, same weights.",
                )
    _passed(
        ex, "your Q/V injection builds the same model as add_lora(..., enable_lora={'c_attn': [True, False, True]})"
    )


@_keeps_rng
def check_export_plain(fn: Callable) -> None:
    """``fn(model)``: a copy of a LoRA-injected GPT with plain layers holding merged weights, like ``merge_and_export``."""
    from lora_basics.gpt import GPT, load_pretrained

    ex = "export_plain"
    cases = [
        (["c_attn"], {"c_attn": [True, False, True]}, "train"),
        (["c_attn"], {"c_attn": [True, False, True]}, "eval"),
        (["c_fc", "lm_head", "wte"], None, "eval"),
        (["c_proj", "wte"], None, "train"),
    ]
    for seed, (targets, enable_lora, mode) in enumerate(cases):
        model = lora.add_lora(load_pretrained(), targets, r=2, lora_alpha=4, enable_lora=enable_lora)
        _randomize(model, seed=seed)
        model.train(mode == "train")
        x = _tiny_gpt_tokens(model.config, seed)
        with torch.no_grad():
            before = model(x)
            expected = lora.merge_and_export(model).train(mode == "train")(x)
        merged = {name: layer.merged for name, layer in lora.lora_layers(model).items()}
        case = (
            f"a tiny GPT with LoRA on {targets}{' (Q/V)' if enable_lora else ''}, random LoRA factors, in {mode} mode"
        )
        got = _call(ex, fn, model, case=case)
        if not isinstance(got, nn.Module):
            _fail(ex, f"on {case}: expected a model, got {type(got).__name__}. Hint: return the exported copy.")
        left = [name for name, m in got.named_modules() if isinstance(m, lora.LoRALayer)]
        if left:
            _fail(
                ex,
                f"on {case}: the exported model still has LoRA layers: {left}. Hint: replace every LoRA layer "
                "(isinstance(m, lora.LoRALayer)) by a plain Conv1D / nn.Linear / nn.Embedding (setattr on its parent).",
            )
        now = {name: layer.merged for name, layer in lora.lora_layers(model).items()}
        with torch.no_grad():
            unchanged = now == merged and torch.allclose(model(x), before, atol=1e-6)
        if not unchanged:
            _fail(
                ex,
                f"on {case}: `model` itself was changed. Hint: work on copy.deepcopy(model) and leave the original "
                "(its layers and their merged flags) alone.",
            )
        result = GPT(model.config).load_state_dict(got.state_dict(), strict=False)
        if result.missing_keys or result.unexpected_keys:
            _fail(
                ex,
                f"on {case}: the exported state dict does not fit a fresh GPT (missing {result.missing_keys[:3]}, "
                f"unexpected {result.unexpected_keys[:3]}). Hint: a layer with fan_in_fan_out becomes "
                "lora_basics.gpt.Conv1D(nf=out_features, nx=in_features), others nn.Linear / nn.Embedding.",
            )
        got.train(mode == "train")
        with torch.no_grad():
            out = got(x)
        _tensor(
            ex,
            out,
            expected,
            case,
            "weight + layer.delta_weight() (already in the weight's layout), unless layer.merged: in eval mode the "
            "weight is ALREADY merged; copy the bias too.",
        )
    _passed(ex, "your export computes what merge_and_export's plain model computes, with no LoRA layer left")
