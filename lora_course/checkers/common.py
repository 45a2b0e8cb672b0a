"""What every checker shares: the verdict (:class:`ExerciseFailed`), running the learner's code, comparing."""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lora_basics as lora

#: Frames in this folder are the checkers' own: a crash report points at the learner's line instead.
CHECKERS_DIR = str(Path(__file__).resolve().parent)

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


def fail(exercise: str, message: str, status: str = "failed") -> None:
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


def run_learner(exercise: str, fn: Callable, *args: Any, case: str = "", **kwargs: Any) -> Any:
    """Run the learner's ``fn``; turn a stub or a crash into a friendly :class:`ExerciseFailed`."""
    __tracebackhide__ = True  # IPython: show the check cell, not these helpers
    if not callable(fn):
        fail(exercise, f"expected a function or class, got {type(fn).__name__}. Pass the function itself.", "error")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        fail(exercise, "", "not attempted")
    except ExerciseFailed:
        raise
    except Exception as error:  # noqa: BLE001 - any crash of the learner's code is reported, not raised
        where = f" on {case}" if case else ""
        frames = [
            f
            for f in traceback.extract_tb(error.__traceback__)
            if not f.filename.startswith(CHECKERS_DIR) and "torch" not in f.filename
        ]
        line = f" at `{frames[-1].line}`" if frames and frames[-1].line else ""
        fail(exercise, f"{type(error).__name__}: {error}{line}{where}. Check the shapes in your code.", "error")


def say_passed(exercise: str, message: str) -> None:
    print(f"✓ {exercise}: {message}")


def preview(t: torch.Tensor) -> str:
    flat = t.detach().flatten()[:4].tolist()
    return "[" + ", ".join(f"{v:.4f}" for v in flat) + (", ...]" if t.numel() > 4 else "]")


def expect_tensor(exercise: str, got: Any, expected: torch.Tensor, case: str, hint: str, atol: float = 1e-5) -> None:
    """Fail unless ``got`` is a tensor of ``expected``'s shape and values."""
    __tracebackhide__ = True  # IPython: show the check cell, not these helpers
    if not isinstance(got, torch.Tensor):
        fail(exercise, f"on {case}: expected a torch.Tensor, got {type(got).__name__}. Hint: {hint}")
    if tuple(got.shape) != tuple(expected.shape):
        fail(
            exercise,
            f"on {case}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}. Hint: {hint}",
        )
    if not torch.allclose(got.detach().to(expected.dtype), expected, atol=atol, rtol=1e-4):
        diff = (got.detach().to(expected.dtype) - expected).abs().max().item()
        fail(
            exercise,
            f"on {case}: expected {preview(expected)}, got {preview(got)} (max abs diff {diff:.3g}). Hint: {hint}",
        )


def expect_equal(exercise: str, got: Any, expected: Any, case: str, hint: str) -> None:
    __tracebackhide__ = True  # IPython: show the check cell, not these helpers
    if got != expected:
        fail(exercise, f"on {case}: expected {expected!r}, got {got!r}. Hint: {hint}")


def expect_lora_shapes(exercise: str, fn: Callable, args: tuple, layer: nn.Module, case: str, hint: str) -> None:
    """Fail unless ``fn(*args)`` gives ``(shape of lora_A, shape of lora_B)`` of ``layer``."""
    __tracebackhide__ = True  # IPython: show the check cell, not these helpers
    got = run_learner(exercise, fn, *args, case=case)
    got = tuple(tuple(s) for s in got) if isinstance(got, (tuple, list)) else got
    expect_equal(exercise, got, (tuple(layer.lora_A.shape), tuple(layer.lora_B.shape)), case, hint)


@torch.no_grad()
def randomize_lora(module: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Give every LoRA factor random values, so the update is not zero (at init B = 0: any answer passes)."""
    generator = torch.Generator().manual_seed(seed)
    for name in lora.lora_parameter_names(module):
        param = module.get_parameter(name)
        param.copy_(torch.randn(param.shape, generator=generator) * std)
    return module


def keeps_rng(checker: Callable) -> Callable:
    """Run ``checker`` with torch's global RNG saved and restored: checking must not change the learner's random stream."""

    @functools.wraps(checker)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        __tracebackhide__ = True  # IPython: show the check cell, not these helpers
        with torch.random.fork_rng(devices=[]):
            return checker(*args, **kwargs)

    return wrapper


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
