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

    y = scale ⊙ (x W0^T + s x A^T B^T) + b                                  (no dropout)
    y = x W0^T + b + (scale - 1) ⊙ x_d W0^T + scale ⊙ s x_d A^T B^T       (training, lora_dropout > 0)

With dropout, ``x_d = dropout(x)``: the frozen layer sees the whole input and DoRA's correction sees the
dropped-out one (PEFT's rule; the first line is the second with ``x_d = x``).

Merging writes ``W = scale ⊙ (W0 + ΔW)`` into the weight, row by row. Unlike LoRA's ``W0 + ΔW`` this
cannot be undone from ``W`` and the factors alone: ``n`` depended on ``W0``. So the merge record is
``(lora_A, lora_B, lora_magnitude, n)``, and unmerging computes ``W0 = W / scale - ΔW`` with them
(:mod:`lora_basics.merge`). A DoRA layer's state dict always holds ``W0`` (recorded as unmerged), because
a merged ``W`` could not be unmerged without that ``n``.

Everything here is checked against PEFT's ``use_dora=True`` in the tests: outputs and the gradients of
``lora_A``, ``lora_B`` and the magnitude, ``fan_in_fan_out`` (GPT-2's ``Conv1D``) included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The record of a DoRA merge: ``(lora_A, lora_B, lora_magnitude, norm)``; a LoRA merge records two tensors.
DORA_RECORD_LENGTH = 4


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
    """DoRA's forward pass of an unmerged :class:`~lora_basics.Linear` (see the module docstring)."""
    W0 = layer.weight_out_in()  # (out, in)
    scale = layer.lora_magnitude / weight_norm(layer, layer.weight).to(layer.lora_magnitude.dtype)  # (out,)
    base = F.linear(x, W0)  # (..., out), the frozen layer without its bias
    if layer.training and isinstance(layer.lora_dropout, nn.Dropout):
        x_d = layer.lora_dropout(x)
        lora = F.linear(F.linear(x_d, layer.lora_A), layer.lora_B) * layer.scaling  # (..., out)
        result = base + (scale - 1) * F.linear(x_d, W0) + scale * lora
    else:
        lora = F.linear(F.linear(x, layer.lora_A), layer.lora_B) * layer.scaling  # (..., out)
        result = scale * (base + lora)
    return result if layer.bias is None else result + layer.bias


def fold(layer, weight: torch.Tensor, record: tuple[torch.Tensor, ...], sign: int = 1) -> torch.Tensor:
    """Merge (``sign = 1``): ``scale ⊙ (W0 + ΔW)``; unmerge (``sign = -1``): ``W / scale - ΔW``.

    ``weight`` is in the dtype to compute in; ``record`` is ``(lora_A, lora_B, lora_magnitude, norm)``.
    """
    A, B, magnitude, norm = (t.to(device=weight.device) for t in record)
    delta = layer.delta_weight(weight.dtype, factors=(A, B))
    scale = per_output(layer, magnitude.to(weight.dtype) / norm.to(weight.dtype))
    return scale * (weight + delta) if sign > 0 else weight / scale - delta
