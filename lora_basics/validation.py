"""Argument validation shared by the layers: bad input fails at construction, with an error that names
the argument, the value and what is allowed (instead of a shape error deep inside torch later)."""

from __future__ import annotations

import math
import numbers


def validate_rank(r: object, *, allow_zero: bool = True) -> int:
    """Return ``r`` if it is a valid LoRA rank, else raise a ``TypeError``/``ValueError``."""
    if isinstance(r, bool) or not isinstance(r, numbers.Integral):
        raise TypeError(f"r must be an int, got {r!r} ({type(r).__name__})")
    smallest = 0 if allow_zero else 1
    if r < smallest:
        allowed = "r >= 0 (r = 0 turns LoRA off)" if allow_zero else "r >= 1"
        raise ValueError(f"r must be {allowed}, got r={r}")
    return int(r)


def validate_alpha(lora_alpha: object, r: int) -> float:
    """Return ``lora_alpha`` if it is a positive number (only checked when ``r > 0``)."""
    if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, numbers.Real):
        raise TypeError(f"lora_alpha must be a number, got {lora_alpha!r} ({type(lora_alpha).__name__})")
    if r > 0 and not lora_alpha > 0:
        raise ValueError(f"lora_alpha must be > 0 when r > 0, got lora_alpha={lora_alpha} with r={r}")
    if r > 0 and not math.isfinite(lora_alpha):
        # An infinite scale makes every update inf (or NaN where a factor is 0): nothing trains or merges.
        raise ValueError(f"lora_alpha must be finite, got lora_alpha={lora_alpha} with r={r}")
    return lora_alpha


def validate_dropout(lora_dropout: object) -> float:
    """Return ``lora_dropout`` if it is a probability in [0, 1)."""
    if isinstance(lora_dropout, bool) or not isinstance(lora_dropout, numbers.Real):
        raise TypeError(f"lora_dropout must be a float in [0, 1), got {lora_dropout!r} ({type(lora_dropout).__name__})")
    if not 0.0 <= lora_dropout < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1), got lora_dropout={lora_dropout}")
    return float(lora_dropout)


def as_bool(value: object) -> bool | None:
    """``value`` as a bool if it is one: a Python bool or a NumPy bool (``numpy.True_``), else None.

    NumPy is not imported: its bool scalar is recognised by its type's module and name.
    """
    if isinstance(value, bool):
        return value
    kind = type(value)
    if kind.__module__ == "numpy" and kind.__name__ in ("bool_", "bool"):
        return bool(value)
    return None


def validate_flag(name: str, value: object) -> bool:
    """Return ``value`` as a bool: True/False, a NumPy bool, or the integers 0/1 (what loralib code passes).

    Anything else (``"yes"``, ``2``, ``0.5``, ``None``) is refused: its meaning as a flag is a guess.
    """
    flag = as_bool(value)
    if flag is None and isinstance(value, numbers.Integral) and value in (0, 1):
        flag = bool(value)
    if flag is None:
        raise TypeError(f"{name} must be True or False (or 0/1), got {value!r} ({type(value).__name__})")
    return flag


def validate_enable_lora(enable_lora: object, out_features: int) -> list[bool]:
    """Return ``enable_lora`` (one flag per slice of a fused output) as a list of bools, or raise."""
    if isinstance(enable_lora, (str, bytes)) or not hasattr(enable_lora, "__iter__"):
        raise TypeError(f"enable_lora must be a list of bools such as [True, False, True], got {enable_lora!r}")
    given = list(enable_lora)
    if not given:
        raise ValueError(
            "enable_lora must not be empty: give one bool per slice of out_features, e.g. [True, False, True]"
        )
    # Bools only (NumPy bools too). Integers are refused: loralib indexes with them, so [1, 0, 1] would
    # silently mean "slices 1, 0, 1" there, not "on, off, on".
    flags = [as_bool(flag) for flag in given]
    if any(flag is None for flag in flags):
        raise TypeError(f"enable_lora must contain only True/False, got {given!r}")
    if out_features % len(flags) != 0:
        raise ValueError(
            f"len(enable_lora)={len(flags)} must divide out_features={out_features} "
            f"(the fused output is cut into {len(flags)} equal slices)"
        )
    return flags


def refuse_fan_in_fan_out(layer_name: str, kwargs: dict) -> None:
    """``fan_in_fan_out`` only makes sense for (Merged)Linear; say so instead of a torch TypeError."""
    if "fan_in_fan_out" in kwargs:
        raise TypeError(
            f"{layer_name} got fan_in_fan_out={kwargs['fan_in_fan_out']!r}, but fan_in_fan_out is only for "
            "Linear and MergedLinear (weights stored (in, out) like GPT-2's Conv1D)"
        )


def refuse_dora(layer_name: str, kwargs: dict) -> None:
    """Take ``use_dora`` out of ``kwargs`` (it is not a torch argument); ``use_dora=True`` is refused.

    DoRA is implemented for :class:`~lora_basics.Linear` (``nn.Linear`` and GPT-2 ``Conv1D`` targets) only.
    """
    if validate_flag("use_dora", kwargs.pop("use_dora", False)):
        raise ValueError(
            f"{layer_name} does not support use_dora=True: DoRA is implemented for Linear layers only "
            "(nn.Linear and GPT-2 Conv1D targets, without enable_lora)"
        )
