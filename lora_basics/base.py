"""`LoRALayer`: what every loralib-style LoRA layer shares.

A LoRA layer keeps the pretrained ``weight`` frozen and learns a low-rank update

    W = W0 + scaling * delta,   delta built from lora_B @ lora_A,   scaling = lora_alpha / r

Each concrete layer (``Linear``, ``MergedLinear``, ``Embedding``, ``Conv1d/2d/3d``) subclasses
``LoRALayer`` *and* the torch layer it extends, and says how to build ``delta`` in the layout of its
``weight`` (``delta_weight``). Everything else lives here, once:

- argument checks with clear errors,
- merge-on-eval: ``eval()`` folds the update into ``weight``, ``train()`` takes it out again,
- state dicts that always hold the *unmerged* weight, so a checkpoint means the same thing
  whether it was saved in train or eval mode, and loading into a merged layer is safe.

Precision of merging. ``W0 + delta`` is rounded to the weight's dtype, so taking ``delta`` out again
gives ``W0`` up to that one rounding (rows whose ``delta`` is exactly zero come back bit for bit).
The arithmetic runs in fp32 and rounds once; with a *fixed* adapter, repeated ``train()/eval()``
toggles stay within one unit in the last place of ``W0`` (tested in fp32, bf16 and fp16). An adapter
that keeps changing between toggles (evaluating during training) rounds a different sum each time,
so in bf16/fp16 the frozen weight random-walks a few units per hundred cycles (notebook 08 measures
it); fp32 drift stays ~1e-6. Train in low precision with ``merge_weights=False`` and merge once at
the end, or export with ``lora_basics.merge_and_export``.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn


def check_rank(r: object, *, allow_zero: bool = True) -> int:
    """Return ``r`` if it is a valid LoRA rank, else raise a ``TypeError``/``ValueError``."""
    if isinstance(r, bool) or not isinstance(r, numbers.Integral):
        raise TypeError(f"r must be an int, got {r!r} ({type(r).__name__})")
    smallest = 0 if allow_zero else 1
    if r < smallest:
        allowed = "r >= 0 (r = 0 turns LoRA off)" if allow_zero else "r >= 1"
        raise ValueError(f"r must be {allowed}, got r={r}")
    return int(r)


def check_alpha(lora_alpha: object, r: int) -> float:
    """Return ``lora_alpha`` if it is a positive number (only checked when ``r > 0``)."""
    if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, numbers.Real):
        raise TypeError(f"lora_alpha must be a number, got {lora_alpha!r} ({type(lora_alpha).__name__})")
    if r > 0 and not lora_alpha > 0:
        raise ValueError(f"lora_alpha must be > 0 when r > 0, got lora_alpha={lora_alpha} with r={r}")
    return lora_alpha


def check_dropout(lora_dropout: object) -> float:
    """Return ``lora_dropout`` if it is a probability in [0, 1)."""
    if isinstance(lora_dropout, bool) or not isinstance(lora_dropout, numbers.Real):
        raise TypeError(f"lora_dropout must be a float in [0, 1), got {lora_dropout!r} ({type(lora_dropout).__name__})")
    if not 0.0 <= lora_dropout < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1), got lora_dropout={lora_dropout}")
    return float(lora_dropout)


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a real bool (``0``/``1``/``"yes"`` are refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def refuse_fan_in_fan_out(layer_name: str, kwargs: dict) -> None:
    """``fan_in_fan_out`` only makes sense for (Merged)Linear; say so instead of a torch TypeError."""
    if "fan_in_fan_out" in kwargs:
        raise TypeError(
            f"{layer_name} got fan_in_fan_out={kwargs['fan_in_fan_out']!r}, but fan_in_fan_out is only for "
            "Linear and MergedLinear (weights stored (in, out) like GPT-2's Conv1D)"
        )


@torch.no_grad()
def copy_pretrained(layer: nn.Module, module: nn.Module) -> None:
    """Copy ``module``'s ``weight`` and ``bias`` into the LoRA ``layer`` (same shapes required)."""
    for name in ("weight", "bias"):
        source, target = getattr(module, name, None), getattr(layer, name, None)
        if source is None:
            continue
        if target is None or target.shape != source.shape:
            shape = None if target is None else tuple(target.shape)
            raise ValueError(f"cannot copy {name} of shape {tuple(source.shape)} into a layer expecting {shape}")
        target.copy_(source)


class LoRALayer:
    """Mixin holding the LoRA settings and the merge/unmerge logic shared by every layer.

    Args:
        r: rank of the update; ``r = 0`` turns LoRA off and the layer is the plain torch layer.
        lora_alpha: the update is scaled by ``lora_alpha / r``, so changing ``r`` does not change
            the size of the update at a fixed learning rate.
        lora_dropout: dropout probability on the input of the LoRA path (train mode only).
        merge_weights: if True, ``eval()`` merges the update into ``weight`` (zero inference
            overhead) and ``train()`` unmerges it.

    Subclasses put ``LoRALayer`` *first* in their bases (``class Linear(LoRALayer, nn.Linear)``) so
    that ``train()``, ``_save_to_state_dict`` and ``_load_from_state_dict`` below run before the
    torch layer's own, and implement ``delta_weight()``.
    """

    def __init__(self, r: int, lora_alpha: float, lora_dropout: float, merge_weights: bool):
        self.r = check_rank(r)
        self.lora_alpha = check_alpha(lora_alpha, self.r)
        check_dropout(lora_dropout)
        # nn.Identity rather than loralib's ``lambda x: x``: a lambda cannot be pickled.
        self.lora_dropout = nn.Dropout(p=lora_dropout) if lora_dropout > 0.0 else nn.Identity()
        self.merge_weights = check_bool("merge_weights", merge_weights)
        self.scaling = self.lora_alpha / self.r if self.r > 0 else 0.0
        # True while scaling * delta is folded into ``weight``.
        self.merged = False

    # -- to be provided by each layer ------------------------------------------------------------
    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``scaling * delta`` with exactly the shape (and layout) of ``weight``."""
        raise NotImplementedError

    # -- shared logic ----------------------------------------------------------------------------
    @property
    def has_lora(self) -> bool:
        """True when the layer has LoRA parameters (``r > 0`` and, for MergedLinear, a slice enabled)."""
        return getattr(self, "lora_A", None) is not None

    def _merge_dtype(self) -> torch.dtype:
        # Merge arithmetic runs in at least fp32 and is rounded once to the weight's dtype, so a
        # bf16/fp16 weight is not degraded by a half-precision matmul on every toggle.
        return torch.promote_types(self.weight.dtype, torch.float32)

    def _unmerged_weight(self) -> torch.Tensor:
        """``weight`` with the update taken out (computed, ``weight`` itself is not touched)."""
        dtype = self._merge_dtype()
        return (self.weight.detach().to(dtype) - self.delta_weight(dtype).detach()).to(self.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``scaling * delta`` into ``weight``. Calling it twice merges once."""
        if self.merged or not self.has_lora:
            return
        dtype = self._merge_dtype()
        self.weight.copy_((self.weight.to(dtype) + self.delta_weight(dtype)).to(self.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take ``scaling * delta`` back out of ``weight``. A no-op when not merged."""
        if not self.merged:
            return
        self.weight.copy_(self._unmerged_weight())
        self.merged = False

    def train(self, mode: bool = True):
        """``train()`` unmerges and ``eval()`` merges (when ``merge_weights``).

        A parent's ``model.eval()`` calls ``train(False)`` on every child, so it reaches here too.
        """
        super().train(mode)
        if self.merge_weights:
            if mode:
                self.unmerge()
            else:
                self.merge()
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # A state dict always holds the *unmerged* weight: saving in eval mode (merged) and
        # loading into a fresh layer must not count the update twice (a loralib bug).
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.merged:
            destination[prefix + "weight"] = self._unmerged_weight()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # 1. Wrong LoRA shapes get a clear error naming the key and both shapes.
        for name in ("lora_A", "lora_B"):
            key = prefix + name
            mine = getattr(self, name, None)
            if key in state_dict and mine is not None and state_dict[key].shape != mine.shape:
                raise ValueError(
                    f"state dict key {key!r} has shape {tuple(state_dict[key].shape)}, but this "
                    f"{type(self).__name__} expects {tuple(mine.shape)} (r={self.r}); "
                    "was the checkpoint saved with another r, enable_lora or layer size?"
                )
        # 2. A state dict holds unmerged weights (see _save_to_state_dict). If this layer is merged,
        #    take the old update out, load, and merge the (possibly new) update back in.
        was_merged = self.merged
        self.unmerge()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if was_merged:
            self.merge()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, lora_alpha={self.lora_alpha}, merged={self.merged}"
