"""Merge-on-eval: fold a LoRA layer's update into its frozen weight, and take it out again.

A LoRA layer computes ``x W0^T + scaling * x A^T B^T``: two extra small matmuls per call. For
inference the update can be folded into the weight once,

    merge:    W  <-  W0 + ΔW(A, B),      ΔW = scaling * B @ A   (reshaped to the layout of the weight)
    unmerge:  W0 <-  W  - ΔW(A, B)       with the (A, B) that were merged

after which the layer is exactly as fast as the plain torch layer. :class:`~lora_basics.LoRALayer`
calls :func:`merge_layer` on ``eval()`` and :func:`unmerge_layer` on ``train()`` (when
``merge_weights=True``); each layer only says how to build its ``ΔW`` from a pair of factors (its
``delta_weight``) and where its frozen weight lives (``frozen_weight``).

Training mistakes never destroy the frozen weight:

- Merging records a copy of the factors it merged (``r * (in + out)`` numbers, small), and unmerging
  subtracts exactly that update. ``optimizer.step()`` after ``eval()``, or ``lora_B.zero_()`` on a
  merged layer, changes the factors but not what ``train()`` takes out, so ``W0`` comes back.
- An update that is not finite (NaN or inf in a factor, or an fp16 sum that overflows) is refused
  with a ``FloatingPointError`` before anything is written: the layer stays unmerged and usable.

Precision. ``W0 + ΔW`` is rounded to the weight's dtype, so taking ``ΔW`` out again gives ``W0`` up to
that one rounding (rows whose ``ΔW`` is exactly zero come back bit for bit). The arithmetic runs in
fp32 and rounds once; with a *fixed* adapter, repeated ``train()/eval()`` toggles stay within one unit
in the last place of ``W0`` (tested in fp32, bf16 and fp16). An adapter that keeps changing between
toggles (evaluating during training) rounds a different sum each time, so in bf16/fp16 the frozen
weight random-walks a few units per hundred cycles (notebook 08 measures it); fp32 drift stays ~1e-6.
Train in low precision with ``merge_weights=False`` and merge once at the end, or export with
:func:`lora_basics.merge_and_export`.

DoRA layers (``use_dora=True``) merge ``W = (m / n) ⊙ (W0 + ΔW)`` row by row instead
(:mod:`lora_basics.dora`). That cannot be undone from ``W`` and the factors (``n`` depends on ``W0``), so
their merge record holds the magnitude ``m`` and ``W0`` itself, and unmerging puts ``W0`` back bit for bit:
the same guarantees, stronger (no rounding at all), for one copy of the weight while merged.
"""

from __future__ import annotations

import torch

from . import dora

#: What an update is built from: ``(lora_A, lora_B)``; as a DoRA layer's merge record ``(lora_A, lora_B,
#: lora_magnitude, W0)``, the frozen weight kept aside while merged (see :mod:`lora_basics.dora`).
Factors = tuple[torch.Tensor, ...]


def merge_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype merging computes in: at least fp32, so a bf16/fp16 weight is rounded once, not per matmul."""
    return torch.promote_types(weight.dtype, torch.float32)


def update_parameters(layer) -> list[torch.Tensor]:
    """The trainable tensors the layer's update is built from: ``lora_A``, ``lora_B`` (and ``lora_magnitude`` with DoRA)."""
    return [layer.lora_A, layer.lora_B] + ([layer.lora_magnitude] if layer.use_dora else [])


def current_factors(layer) -> Factors:
    """A copy of what the layer's update is built from now (detached, so it never changes).

    ``(lora_A, lora_B)``; for DoRA also ``lora_magnitude`` and a copy of the (unmerged) layer's ``W0``.
    """
    factors = tuple(p.detach().clone() for p in update_parameters(layer))
    if layer.use_dora:
        factors += (layer.frozen_weight.detach().clone(),)
    return factors


def factors_changed(layer) -> bool:
    """True when a merged layer's factors are no longer those it merged (changed in place since ``eval()``)."""
    params = update_parameters(layer)  # a DoRA record also holds W0, which is not a parameter
    return not all(
        torch.equal(param.detach(), merged.to(param))
        for param, merged in zip(params, layer.merged_factors[: len(params)], strict=True)
    )


@torch.no_grad()
def add_update(layer, weight: torch.Tensor, factors: Factors, sign: int = 1) -> torch.Tensor:
    """``weight + sign * ΔW(factors)`` as a new tensor of ``weight``'s dtype (``weight`` is untouched).

    For a DoRA layer (``factors`` with ``lora_magnitude``): ``(m / n) ⊙ (weight + ΔW)``, merging only
    (``sign = 1``: unmerging puts back the recorded ``W0``). Computed in fp32 (or wider) and rounded once.
    Raises ``FloatingPointError`` when the result is not finite where ``weight`` was: the update holds
    NaN/inf, or the sum overflows the dtype.
    """
    dtype = merge_dtype(weight)
    if layer.use_dora and len(factors) > 2:
        if sign != 1:
            raise ValueError("a DoRA merge is undone with the W0 it recorded, not by subtraction")
        result = dora.merged_weight(layer, weight.detach().to(dtype), factors).to(weight.dtype)
    else:
        A, B = (factor.to(weight.device) for factor in factors)
        result = (weight.detach().to(dtype) + sign * layer.delta_weight(dtype, factors=(A, B))).to(weight.dtype)
    broken = ~torch.isfinite(result) & torch.isfinite(weight)
    if broken.any():
        raise FloatingPointError(
            f"{type(layer).__name__}: the LoRA update is not finite ({int(broken.sum())} entries would become "
            f"NaN/inf in the {weight.dtype} weight: NaN/inf in lora_A/lora_B, or an overflow); refusing to "
            "write it into the frozen weight, which is left as it was. Check the factors (a diverged "
            "training step?) or keep the layer unmerged (merge_weights=False)."
        )
    return result


def weight_without_update(layer) -> torch.Tensor:
    """``W0``: the frozen weight without the merged update (a new tensor if merged; the weight itself if not)."""
    weight = layer.frozen_weight
    if not layer.merged:
        return weight.detach()
    if layer.use_dora:  # DoRA's merge record kept W0 itself
        return layer.merged_factors[-1].clone()
    return add_update(layer, weight, layer.merged_factors, sign=-1)


@torch.no_grad()
def merge_layer(layer) -> None:
    """``W <- W0 + ΔW`` in place and record the factors merged; sets ``layer.merged``.

    Merging a merged layer (or one without LoRA) does nothing. A non-finite update raises
    ``FloatingPointError`` and leaves the layer unmerged.
    """
    if layer.merged or not layer.has_lora:
        return
    factors = current_factors(layer)
    weight = layer.frozen_weight
    weight.copy_(add_update(layer, weight, factors))
    layer.merged_factors = factors
    layer.merged = True


@torch.no_grad()
def unmerge_layer(layer) -> None:
    """``W0 <- W - ΔW`` in place, with the factors that were merged; clears ``layer.merged``. A no-op when not merged."""
    if not layer.merged:
        return
    layer.frozen_weight.copy_(weight_without_update(layer))
    layer.merged_factors = None
    layer.merged = False
