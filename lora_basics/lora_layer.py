"""`LoRALayer`: what every loralib-style LoRA layer shares.

A LoRA layer keeps the pretrained ``weight`` frozen and learns a low-rank update

    W = W0 + ΔW,    ΔW = scaling * B @ A  (reshaped to the layout of ``weight``),    scaling = lora_alpha / r

Each concrete layer (``Linear``, ``MergedLinear``, ``Embedding``, ``Conv1d/2d/3d``) subclasses
``LoRALayer`` *and* the torch layer it extends, and says how to build ``ΔW`` in the layout of its
``weight`` (``delta_weight``). Everything else lives here, once:

- the settings (``r``, ``lora_alpha``, ``scaling``, ``lora_dropout``, ``merge_weights``), checked,
- merge-on-eval: ``eval()`` folds ΔW into ``weight``, ``train()`` takes it out (the arithmetic is in
  :mod:`lora_basics.merge`),
- state dicts that always hold the *unmerged* weight, so a checkpoint means the same thing
  whether it was saved in train or eval mode, and loading into a merged layer is safe.
"""

from __future__ import annotations

import torch
from torch import nn

from .merge import merge_layer, unmerge_layer, weight_without_update
from .validation import validate_alpha, validate_dropout, validate_flag, validate_rank


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
    """Mixin holding the LoRA settings and the merge-on-eval logic shared by every layer.

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
        self.r = validate_rank(r)
        self.lora_alpha = validate_alpha(lora_alpha, self.r)
        validate_dropout(lora_dropout)
        # nn.Identity rather than loralib's ``lambda x: x``: a lambda cannot be pickled.
        self.lora_dropout = nn.Dropout(p=lora_dropout) if lora_dropout > 0.0 else nn.Identity()
        self.merge_weights = validate_flag("merge_weights", merge_weights)
        self.scaling = self.lora_alpha / self.r if self.r > 0 else 0.0
        # True while ΔW is folded into ``weight``.
        self.merged = False

    # -- to be provided by each layer ------------------------------------------------------------
    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``ΔW = scaling * B @ A`` with exactly the shape (and layout) of ``weight``."""
        raise NotImplementedError

    # -- shared logic ----------------------------------------------------------------------------
    @property
    def has_lora(self) -> bool:
        """True when the layer has LoRA parameters (``r > 0`` and, for MergedLinear, a slice enabled)."""
        return getattr(self, "lora_A", None) is not None

    def merge(self) -> None:
        """Fold ΔW into ``weight`` (see :mod:`lora_basics.merge`). Calling it twice merges once."""
        merge_layer(self)

    def unmerge(self) -> None:
        """Take ΔW back out of ``weight``. A no-op when not merged."""
        unmerge_layer(self)

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
            destination[prefix + "weight"] = weight_without_update(self)

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
