"""What every checker shares: the probe (runs the learner's answer), the judge (compares), the verdict.

A check has two halves, so that a verdict never depends on anything the learner's code can reach:

- the **probe** runs the learner's answer on inputs it builds from a seed and records what came back as plain
  data (:func:`plain`: tensors, numbers, strings, and lists, tuples and dicts of them). It never computes the
  right answer, so no reference value sits in its frames for a learner's code to find.
- the **judge** builds the same inputs from the same seed, computes the right answers with ``lora_basics`` and
  compares them with what the probe recorded. It never runs learner code.

In a notebook, ``checkers.check_lora_forward(lora_forward)`` runs both, one after the other, and prints the
verdict (feedback for the learner). The grader runs the probe in the learner's sandboxed process and the judge in
its own process, on the recorded data: patching ``checkers``, ``torch.allclose`` or the printout changes nothing
but the learner's own feedback.

Some tasks also forbid a shortcut (calling the layer itself, building the dense update, calling ``add_lora``).
The probe watches for those while the answer runs (:class:`Watch`), and the grader also scans the exercise
cell's source for forbidden names (:func:`forbidden_uses`), which no code in the learner's process can change.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import numbers
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

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


def fail(exercise: str, message: str, status: str = "failed") -> None:
    """Raise the verdict as an :class:`ExerciseFailed` whose first line names the status."""
    __tracebackhide__ = True  # IPython: show the check cell, not these helpers
    if status == "not attempted":
        text = (
            f"✗ {exercise}: {STATUS_WORDS[status]}. Replace the `raise NotImplementedError(...)` line "
            "with your code, run that cell, then run this check again."
        )
    else:
        text = f"✗ {exercise}: {STATUS_WORDS[status]}: {message}"
    raise ExerciseFailed(text, status) from None


# -- the probe: running the learner's answer -------------------------------------------------------

MAX_ELEMENTS = 1_000_000  # a returned tensor larger than this is recorded by its shape only
MAX_ITEMS = 1_000  # items of a returned list / dict
MAX_TEXT = 2_000  # characters of a returned string or an error message
OBJECT = "__object__"  # key of the record of a value that is not plain data


def plain(value: Any, depth: int = 0) -> Any:
    """What the judge may see of ``value``: plain data that ``torch.load(weights_only=True)`` reads back.

    Tensors become detached CPU copies (a subclass becomes a plain tensor), numbers Python numbers,
    ``torch.Size`` a tuple; lists, tuples and dicts are converted item by item. Anything else becomes
    ``{"__object__": "<its type name>"}``, so that the judge can say what came back instead.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.layout != torch.strided or value.is_quantized or value.device.type == "meta":
            return {OBJECT: f"{value.layout} tensor"}
        if value.numel() > MAX_ELEMENTS:
            return {OBJECT: f"tensor of shape {tuple(value.shape)} (too large to record)"}
        return value.as_subclass(torch.Tensor).to("cpu", copy=True)
    if value is None or isinstance(value, (bool, str)):
        return value[:MAX_TEXT] if isinstance(value, str) else value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if depth < 8 and isinstance(value, torch.Size):
        return tuple(int(v) for v in value)
    if depth < 8 and isinstance(value, (list, tuple)):
        items = [plain(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
        return items if isinstance(value, list) else tuple(items)
    if depth < 8 and isinstance(value, dict):
        return {str(k)[:MAX_TEXT]: plain(v, depth + 1) for k, v in list(value.items())[:MAX_ITEMS]}
    return {OBJECT: type(value).__name__}


def describe_error(error: BaseException) -> dict:
    """``{"type", "message", "line"}`` of an exception raised by the learner's code (``line``: their last line)."""
    frames = [
        f
        for f in traceback.extract_tb(error.__traceback__)
        if not f.filename.startswith(CHECKERS_DIR) and "torch" not in f.filename
    ]
    line = frames[-1].line if frames and frames[-1].line else ""
    return {"type": type(error).__name__, "message": str(error)[:MAX_TEXT], "line": line[:MAX_TEXT]}


@dataclass
class Outcome:
    """What one call of the learner's code gave: its ``value``, or the ``error`` it raised."""

    value: Any = None
    error: dict | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def record(self) -> dict:
        return {"raised": self.error} if self.error else {"value": plain(self.value)}


def call(fn: Any, *args: Any, **kwargs: Any) -> Outcome:
    """Call the learner's ``fn``; whatever it raises is recorded, never raised."""
    if not callable(fn):
        return Outcome(error={"type": "NotCallable", "message": type(fn).__name__, "line": ""})
    try:
        return Outcome(value=fn(*args, **kwargs))
    except BaseException as error:  # noqa: BLE001 - SystemExit too: the learner's code must not end the check
        return Outcome(error=describe_error(error))


def call_watched(watch: Watch, fn: Any, *args: Any, **kwargs: Any) -> tuple[Outcome, dict]:
    """Call the learner's ``fn`` (no gradients) while ``watch`` looks on: the outcome, and its record with what
    the watch saw under ``"watch"``."""
    with torch.no_grad(), watch:
        outcome = call(fn, *args, **kwargs)
    return outcome, {**outcome.record(), "watch": watch.record()}


def peek(get: Callable[[], Any]) -> dict:
    """Read an attribute of the learner's object (it may be a property that raises): a record like :meth:`Outcome.record`."""
    return call(get).record()


@contextlib.contextmanager
def probing() -> Iterator[None]:
    """Inputs are built the same way on both sides: float32 default, gradients on, torch's RNG restored afterwards."""
    dtype, grad = torch.get_default_dtype(), torch.is_grad_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.set_default_dtype(torch.float32)
        torch.set_grad_enabled(True)
        try:
            yield
        finally:
            torch.set_default_dtype(dtype)
            torch.set_grad_enabled(grad)


def generator(seed: int, case: int) -> torch.Generator:
    """The random source of case ``case``: probe and judge draw the same numbers for the same ``seed``."""
    return torch.Generator().manual_seed(seed * 1000 + case)


def manual_seed(seed: int, case: int) -> None:
    """Seed torch's global RNG (layer initialisation, dropout) for case ``case``, alike on both sides."""
    torch.manual_seed(seed * 1000 + case)


def random_lora_state(module: nn.Module, gen: torch.Generator, std: float = 0.1) -> dict[str, torch.Tensor]:
    """Random values for every LoRA factor of ``module``, drawn in the order of their sorted names.

    Drawn by name, the values are the same on both sides whenever the learner's model has the reference's
    parameter names and shapes (which the judge checks first).
    """
    shapes = {name: module.get_parameter(name).shape for name in lora.lora_parameter_names(module)}
    return {name: torch.randn(shapes[name], generator=gen) * std for name in sorted(shapes)}


@torch.no_grad()
def randomize_lora(module: nn.Module, gen: torch.Generator, std: float = 0.1) -> nn.Module:
    """Give every LoRA factor random values (at initialisation B = 0, and any answer would pass)."""
    for name, value in random_lora_state(module, gen, std).items():
        module.get_parameter(name).copy_(value)
    return module


# -- watching for forbidden shortcuts while the learner's code runs --------------------------------


class Watch(TorchFunctionMode):
    """Records the shortcuts a task forbids while the learner's code runs (``with Watch(...) as watch:``).

    - ``calls``: methods or functions named in ``methods`` (``[(lora.Embedding, "forward")]``) or
      ``functions`` (``[(lora_basics, "add_lora")]``) that the code called, by name. They are replaced by
      recording wrappers for the duration of the block and restored afterwards.
    - ``dense``: shapes of every tensor computed from both ``A`` and ``B`` and not from the input ``x``: the
      dense update ``B @ A`` however it is written (``@``, ``mm``, ``einsum``, ``delta_weight()``...). Every
      torch call made in the block passes through :meth:`__torch_function__`, which tags its results with the
      sources of its arguments.
    """

    def __init__(self, A=(), B=(), x=(), methods=(), functions=()):
        super().__init__()
        self.tags: dict[int, frozenset] = {}
        self.alive: list[torch.Tensor] = []  # keeps tagged tensors alive, so that their ids stay theirs
        for tag, tensors in (("A", A), ("B", B), ("x", x)):
            for tensor in tensors:
                self._tag(tensor, frozenset({tag}))
        self.dense: list[tuple[int, ...]] = []
        self.calls: list[str] = []
        self._patches = [(owner, name, _recording(self.calls, owner, name)) for owner, name in [*methods, *functions]]
        self._saved: list[tuple[Any, str, Any]] = []

    def _tag(self, tensor: torch.Tensor, tags: frozenset) -> None:
        self.tags[id(tensor)] = self.tags.get(id(tensor), frozenset()) | tags
        self.alive.append(tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = _tensors((args, kwargs))
        tags = frozenset().union(*(self.tags.get(id(t), frozenset()) for t in inputs))
        if tags:
            name = getattr(func, "__name__", "")
            if inputs and (name.endswith("_") and not name.startswith("__") or name == "__setitem__"):
                self._tag(inputs[0], tags)  # in place: the first argument now holds the others' values too
            for tensor in _tensors(out):
                self._tag(tensor, tags)
                if {"A", "B"} <= tags and "x" not in tags and tensor.dim() >= 2:
                    self.dense.append(tuple(tensor.shape))
        return out

    def __enter__(self):
        for owner, name, wrapper in self._patches:
            self._saved.append((owner, name, owner.__dict__.get(name, _MISSING)))
            setattr(owner, name, wrapper)
        return super().__enter__()

    def __exit__(self, *exc):
        for owner, name, saved in reversed(self._saved):
            if saved is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, saved)
        self._saved.clear()
        self.alive.clear()
        return super().__exit__(*exc)

    def record(self) -> dict:
        return {"dense": [list(s) for s in self.dense[:10]], "calls": sorted(set(self.calls))}


_MISSING = object()


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _recording(calls: list[str], owner: Any, name: str) -> Any:
    """A stand-in for ``owner.name`` that notes its name in ``calls``, then does what the original does."""
    original = getattr(owner, name)
    if isinstance(inspect.getattr_static(owner, name), classmethod):
        function = original.__func__

        def wrapper(cls, *args, **kwargs):
            calls.append(name)
            return function(cls, *args, **kwargs)

        return classmethod(wrapper)

    def recorder(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    return recorder


def forbidden_uses(source: str, names: tuple[str, ...]) -> list[str]:
    """The names of ``names`` that ``source`` mentions as code (a call, an attribute, an import), sorted.

    Comments and strings do not count. Source that does not parse mentions nothing (running it fails anyway).
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in names:
            found.add(node.id)
        elif isinstance(node, ast.Attribute) and node.attr in names:
            found.add(node.attr)
        elif isinstance(node, ast.alias) and node.name.rsplit(".", 1)[-1] in names:
            found.add(node.name.rsplit(".", 1)[-1])
    return sorted(found)


# -- the judge: comparing what came back with lora_basics ------------------------------------------


def recorded_cases(record: dict, count: int) -> list:
    """The probe's ``count`` per-case records (a record of another length did not come from the probe)."""
    cases = record["cases"]
    if not isinstance(cases, list) or len(cases) != count:
        raise ValueError(f"expected {count} recorded cases, got {describe(cases)}")
    return cases


def returned(exercise: str, record: dict, case: str) -> Any:
    """The value the learner's code returned in ``record``; a raised error becomes the verdict."""
    __tracebackhide__ = True
    if "raised" not in record:
        return record["value"]
    error = record["raised"]
    if error["type"] == "NotImplementedError":
        fail(exercise, "", "not attempted")
    if error["type"] == "NotCallable":
        fail(exercise, f"expected a function or class, got {error['message']}. Pass the function itself.", "error")
    where = f" on {case}" if case else ""
    line = f" at `{error['line']}`" if error["line"] else ""
    fail(exercise, f"{error['type']}: {error['message']}{line}{where}.", "error")


def describe(value: Any) -> str:
    """How a recorded value reads in a message: ``a tensor of shape (2, 3)``, ``a list of 2 items``, ``a MyClass``."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict) and set(value) == {OBJECT}:
        return f"a {value[OBJECT]}"
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {len(value)} item{'s' * (len(value) != 1)}"
    if value is None:
        return "None"
    return f"a {type(value).__name__} ({value!r})"


def wrong_type(exercise: str, case: str, expected: str, got: Any) -> None:
    """A type error: names what was expected and what came back, and no formula hint (the formula is not the problem)."""
    __tracebackhide__ = True
    fail(exercise, f"on {case}: wrong type: expected {expected}, got {describe(got)}.")


def preview(t: torch.Tensor) -> str:
    flat = t.detach().flatten()[:4].tolist()
    return "[" + ", ".join(f"{v:.4f}" for v in flat) + (", ...]" if t.numel() > 4 else "]")


def expect_tensor(exercise: str, got: Any, expected: torch.Tensor, case: str, hint: str, atol: float = 1e-5) -> None:
    """Fail unless ``got`` is a tensor of ``expected``'s shape and values; a difference is shown where it is largest."""
    __tracebackhide__ = True
    if not isinstance(got, torch.Tensor):
        wrong_type(exercise, case, f"a torch.Tensor of shape {tuple(expected.shape)}", got)
    if tuple(got.shape) != tuple(expected.shape):
        fail(exercise, f"on {case}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}. Hint: {hint}")
    if got.is_complex() or got.dtype == torch.bool:
        wrong_type(exercise, case, f"a real {expected.dtype} tensor", got)
    got = got.detach().to(expected.dtype)
    if not torch.allclose(got, expected, atol=atol, rtol=1e-4):
        diff = (got - expected).abs()
        diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
        worst = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape)) if diff.dim() else ()
        where = (
            f" at index {worst}: expected {expected[worst].item():.4f}, got {got[worst].item():.4f}" if worst else ""
        )
        fail(
            exercise,
            f"on {case}: expected {preview(expected)}, got {preview(got)} (largest difference {diff.max().item():.3g}"
            f"{where}). Hint: {hint}",
        )


def expect_equal(exercise: str, got: Any, expected: Any, case: str, hint: str) -> None:
    __tracebackhide__ = True
    if got != expected:
        fail(exercise, f"on {case}: expected {expected!r}, got {got!r}. Hint: {hint}")


def as_ints(value: Any, length: int | None = None) -> tuple[int, ...] | None:
    """``value`` as a tuple of ints (from a tuple, list or integer tensor), or ``None`` if it is not one."""
    if isinstance(value, torch.Tensor) and not value.is_floating_point() and value.dim() == 1:
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    return tuple(value)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def expect_shapes(exercise: str, got: Any, expected: tuple, case: str, hint: str) -> None:
    """Fail unless ``got`` is the pair ``(shape of lora_A, shape of lora_B)`` in ``expected``."""
    __tracebackhide__ = True
    pair = got if isinstance(got, (tuple, list)) and len(got) == 2 else None
    shapes = pair and (as_ints(pair[0]), as_ints(pair[1]))
    if not shapes or None in shapes:
        wrong_type(exercise, case, "a pair of shapes ((rows, cols), (rows, cols)), tuples of ints", got)
    expect_equal(exercise, shapes, expected, case, hint)


def expect_no_shortcut(exercise: str, watched: dict, case: str, forbidden: dict[str, str]) -> None:
    """Fail if the answer called a forbidden method or function (``forbidden``: name -> what the task says)."""
    __tracebackhide__ = True
    for name in watched["calls"]:
        if name in forbidden:
            fail(exercise, f"on {case}: your code calls `{name}`: {forbidden[name]}")


def expect_low_rank(exercise: str, watched: dict, case: str, hint: str) -> None:
    """Fail if the answer built a tensor from both LoRA factors without the input: the dense update."""
    __tracebackhide__ = True
    if watched["dense"]:
        shape = " x ".join(map(str, watched["dense"][0]))
        fail(exercise, f"on {case}: your code builds the dense update ({shape}) from A and B. Hint: {hint}")


# -- one exercise: its probe, its judge, and the check a notebook calls ----------------------------


@dataclass(frozen=True)
class Exercise:
    """The check of one exercise (``name`` as in its ``# Exercise N.M: name`` line).

    ``probe(answer, seed) -> dict`` runs the learner's answer; ``judge(record, seed) -> str`` returns the
    message of a pass or raises :class:`ExerciseFailed`; ``forbidden`` maps names the task forbids to the
    reason given to the learner.
    """

    name: str
    probe: Callable[[Any, int], dict]
    judge: Callable[[dict, int], str]
    forbidden: dict[str, str] | None = None

    def run_probe(self, answer: Any, seed: int = 0) -> dict:
        """What the learner's ``answer`` does on the inputs of ``seed``, as plain data (:func:`plain`)."""
        with probing():
            return plain(self.probe(answer, seed))

    def verdict(self, record: dict, seed: int = 0, source: str | None = None) -> str:
        """The pass message for ``record`` (what the probe gave), or :class:`ExerciseFailed`."""
        __tracebackhide__ = True
        if source is not None and self.forbidden:
            for name in forbidden_uses(source, tuple(self.forbidden)):
                fail(self.name, f"your code uses `{name}`: {self.forbidden[name]}")
        with probing():
            return self.judge(record, seed)

    def check(self, answer: Any) -> None:
        """What a check cell calls: probe and judge here, the verdict printed (and raised if not a pass)."""
        __tracebackhide__ = True
        try:
            source = inspect.getsource(answer)
        except (TypeError, OSError):
            source = None
        try:
            message = self.verdict(self.run_probe(answer), source=source)
        except ExerciseFailed as failure:
            print(failure)
            raise failure from None
        print(f"✓ {self.name}: {message}")


#: Every exercise's check, by name (filled by the lesson modules).
EXERCISES: dict[str, Exercise] = {}


def register(name: str, probe: Callable, judge: Callable, forbidden: dict[str, str] | None = None) -> Callable:
    """Register the exercise ``name`` and return its check function ``check_<name>(answer)``."""
    exercise = Exercise(name, probe, judge, forbidden)
    EXERCISES[name] = exercise

    def check(answer: Any) -> None:
        __tracebackhide__ = True
        exercise.check(answer)

    check.__name__ = check.__qualname__ = f"check_{name}"
    check.__doc__ = judge.__doc__
    return check
