"""DoRA (Liu et al., 2024): learn the magnitude of each output feature apart from its direction.

Row ``i`` of a weight matrix (the ``in`` weights of output feature ``i``) is a length times a direction.
LoRA changes both through ``B A``; DoRA ("weight-decomposed low-rank adaptation") gives the length its
own trainable number per output feature and lets ``B A`` turn the direction:

    W' = m ⊙ (W0 + s B A) / ||W0 + s B A||_row        m, ||.||_row: (out,), one per output feature

- ``m`` is the layer's ``lora_magnitude`` (shape ``(out_features,)``; its name holds ``lora_``, so it
  trains, saves and loads with the factors). It starts at ``||W0 + s B A||_row``, which is
  ``||W0||_row`` when ``B = 0``: the layer starts as exactly the pretrained one.
- The norm ``n = ||W0 + s B A||_row`` is recomputed from the current factors at every step, but treated
  as a constant in the backward pass (detached), as the paper's section 4.3 proposes and PEFT does:
  ``A`` and ``B`` get their gradient through the direction's numerator only, and no ``(out, in)`` graph
  is kept for it. Computing it needs the dense ``B A`` at every step (``out * in * r`` multiply-adds),
  what makes DoRA slower than LoRA (``make bench`` measures it).

Forward, with ``scale = m / n`` (``(out,)``, broadcast over the output features)::

    y = scale ⊙ (x W0^T + s x A^T B^T) + b
      = x W0^T + b  +  (scale - 1) ⊙ x W0^T + scale ⊙ s x A^T B^T       (the frozen layer + a correction)

The second line is how it is computed (as PEFT does): at initialisation ``scale = 1`` and ``B = 0``, so
the correction is exactly zero. With dropout (training, ``lora_dropout > 0``) the correction reads the
dropped-out ``x_d = dropout(x)`` in place of ``x`` while the frozen layer sees the whole input (PEFT's rule).

Merging writes ``W = scale ⊙ (W0 + ΔW)`` into the weight, row by row. Unlike LoRA's ``W0 + ΔW`` this
cannot be undone from ``W`` and the factors alone: ``n`` depended on ``W0``, and ``W / scale - ΔW`` rounds
twice more (measured: up to 7 units in the last place after repeated toggles, where LoRA stays within
one). So a merged DoRA layer keeps ``W0`` aside: its merge record is ``(lora_A, lora_B, lora_magnitude,
W0)`` (:mod:`lora_basics.merge`), and unmerging puts that ``W0`` back, bit for bit, whatever the factors
did meanwhile. The price is one copy of the weight while merged; for inference without it, export the
model (:func:`lora_basics.merge_and_export`). A DoRA layer's state dict always holds ``W0`` (recorded as
unmerged): a merged ``W`` alone could not be taken apart.

Everything here is checked against PEFT's ``use_dora=True`` in the tests: outputs and the gradients of
``lora_A``, ``lora_B`` and the magnitude, ``fan_in_fan_out`` (GPT-2's ``Conv1D``) included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def per_output(layer, values: torch.Tensor) -> torch.Tensor:
    """``values`` (one per output feature) shaped to broadcast over the layer's weight, in its layout."""
    return values.view(1, -1) if layer.fan_in_fan_out else values.view(-1, 1)


@torch.no_grad()
def weight_norm(layer, weight: torch.Tensor, factors: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """``||W0 + s B A||`` of each output feature: ``(out_features,)``, fp32 (or wider), no gradient.

    ``weight``: the unmerged ``W0`` in the layer's layout (``(out, in)``, or ``(in, out)`` with
    ``fan_in_fan_out``); ``factors``: the ``(lora_A, lora_B, ...)`` to use, the layer's own by default.
    """
    dtype = torch.promote_types(weight.dtype, torch.float32)
    factors = (layer.lora_A, layer.lora_B) if factors is None else factors[:2]
    direction = weight.to(dtype) + layer.delta_weight(dtype, factors=factors)  # the layout of the weight
    return torch.linalg.vector_norm(direction, dim=0 if layer.fan_in_fan_out else 1)


@torch.no_grad()
def init_magnitude(layer) -> None:
    """``lora_magnitude <- ||W0 + s B A||_row`` (PEFT's initialisation): the layer then computes ``W0 + s B A``."""
    layer.lora_magnitude.copy_(weight_norm(layer, layer.frozen_weight))


def forward(layer, x: torch.Tensor) -> torch.Tensor:
    """DoRA's forward pass of an unmerged :class:`~lora_basics.Linear` (see the module docstring).

    Written as PEFT computes it, the frozen layer's output plus DoRA's correction: with ``scale = 1``
    (at initialisation) the correction is exactly zero and the output is exactly the frozen layer's.
    """
    W0 = layer.weight_out_in()  # (out, in)
    scale = layer.lora_magnitude / weight_norm(layer, layer.weight).to(layer.lora_magnitude.dtype)  # (out,)
    result = F.linear(x, W0, layer.bias)  # (..., out), the frozen layer
    if layer.training and isinstance(layer.lora_dropout, nn.Dropout):
        x = layer.lora_dropout(x)  # DoRA's correction sees the dropped-out input
        base = F.linear(x, W0)  # (..., out)
    else:
        base = result if layer.bias is None else result - layer.bias  # x W0^T, from the output at hand
    lora = F.linear(F.linear(x, layer.lora_A), layer.lora_B) * layer.scaling  # (..., out)
    return result + (scale - 1) * base + scale * lora


def merged_weight(layer, weight: torch.Tensor, factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``(m / n) ⊙ (W0 + ΔW)`` in the layout and dtype of ``weight`` (``W0``); ``factors``: ``(lora_A, lora_B, lora_magnitude, ...)``."""
    A, B, magnitude = (t.to(device=weight.device) for t in factors[:3])
    scale = magnitude.to(weight.dtype) / weight_norm(layer, weight, (A, B)).to(weight.dtype)  # (out,)
    return per_output(layer, scale) * (weight + layer.delta_weight(weight.dtype, factors=(A, B)))
