"""Merge-on-eval: fold a LoRA layer's update into its frozen weight, and take it out again.

A LoRA layer computes ``x W0^T + scaling * x A^T B^T``: two extra small matmuls per call. For
inference the update can be folded into the weight once,

    merge:    W  <-  W0 + ΔW,        ΔW = scaling * B @ A   (reshaped to the layout of ``weight``)
    unmerge:  W0 <-  W  - ΔW

after which the layer is exactly as fast as the plain torch layer. :class:`~lora_basics.LoRALayer`
calls :func:`merge_layer` on ``eval()`` and :func:`unmerge_layer` on ``train()`` (when
``merge_weights=True``); each layer only says how to build its ``ΔW`` (its ``delta_weight``).

Precision. ``W0 + ΔW`` is rounded to the weight's dtype, so taking ``ΔW`` out again gives ``W0`` up to
that one rounding (rows whose ``ΔW`` is exactly zero come back bit for bit). The arithmetic runs in
fp32 and rounds once; with a *fixed* adapter, repeated ``train()/eval()`` toggles stay within one unit
in the last place of ``W0`` (tested in fp32, bf16 and fp16). An adapter that keeps changing between
toggles (evaluating during training) rounds a different sum each time, so in bf16/fp16 the frozen
weight random-walks a few units per hundred cycles (notebook 08 measures it); fp32 drift stays ~1e-6.
Train in low precision with ``merge_weights=False`` and merge once at the end, or export with
:func:`lora_basics.merge_and_export`.
"""

from __future__ import annotations

import torch


def merge_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype merging computes in: at least fp32, so a bf16/fp16 weight is rounded once, not per matmul."""
    return torch.promote_types(weight.dtype, torch.float32)


def weight_without_update(layer) -> torch.Tensor:
    """``W - ΔW``: the layer's weight with its update taken out (a new tensor; ``weight`` is untouched)."""
    dtype = merge_dtype(layer.weight)
    return (layer.weight.detach().to(dtype) - layer.delta_weight(dtype).detach()).to(layer.weight.dtype)


@torch.no_grad()
def merge_layer(layer) -> None:
    """``W <- W0 + ΔW`` in place; sets ``layer.merged``. Merging a merged layer (or one without LoRA) does nothing."""
    if layer.merged or not layer.has_lora:
        return
    dtype = merge_dtype(layer.weight)
    layer.weight.copy_((layer.weight.to(dtype) + layer.delta_weight(dtype)).to(layer.weight.dtype))
    layer.merged = True


@torch.no_grad()
def unmerge_layer(layer) -> None:
    """``W0 <- W - ΔW`` in place; clears ``layer.merged``. A no-op when the layer is not merged."""
    if not layer.merged:
        return
    layer.weight.copy_(weight_without_update(layer))
    layer.merged = False
