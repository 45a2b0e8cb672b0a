"""PiSSA (Meng et al., 2024): start ``B A`` at the top-``r`` singular part of the pretrained weight.

Vanilla LoRA starts with ``B A = 0`` and learns the change. PiSSA splits the pretrained weight instead:

    W0 = U S V^T,     B = U_r sqrt(S_r / s),     A = sqrt(S_r / s) V_r^T,     W_res = W0 - s B A

(``s = lora_alpha / r``, the layer's scaling; ``U_r, S_r, V_r`` the top ``r`` singular vectors and
values). The frozen weight becomes the residual ``W_res`` and the trainable factors hold the principal
part, so at initialisation the layer computes exactly ``W0`` (up to rounding) while training moves the
directions that matter most first. This is PEFT's ``init_lora_weights="pissa"``, and the tests compare
the factors, the residual and the outputs with PEFT's.

What it means for saving: the *frozen* weight changed. An adapter file (the factors alone) restores
the fine-tuned model only on top of the residual, not on top of the original base: save the residual
with it (the model's whole ``state_dict()``), or the merged model (:func:`lora_basics.merge_and_export`).
The layer remembers it (``layer.init_lora_weights == "pissa"``): :func:`lora_basics.save_adapter` records
it, and :func:`lora_basics.load_adapter` refuses such an adapter on a model without those residuals (an
unmodified base) with an error that says so. PEFT converts a PiSSA adapter into a plain LoRA adapter for
that reason (or, loading one whose config says ``"pissa"``, redoes the split on the base it is given;
:func:`lora_basics.from_peft` does the same).

``add_lora(model, targets, init_lora_weights="pissa")`` applies it to every target.
"""

from __future__ import annotations

import torch

from . import dora
from .embedding import Embedding
from .linear import Linear
from .merged_linear import MergedLinear


@torch.no_grad()
def init_pissa(layer: Linear) -> Linear:
    """Re-initialise ``layer`` (a :class:`Linear` with ``r > 0``, unmerged) with PiSSA, in place; returns it.

    With DoRA, the magnitude is then measured again on ``W_res + s B A`` (PEFT's order; it equals
    ``||W0||_row`` up to rounding).
    """
    if not isinstance(layer, Linear) or isinstance(layer, MergedLinear) or isinstance(layer, Embedding):
        raise TypeError(
            "PiSSA initialises lora_basics.Linear layers (full-precision nn.Linear and GPT-2 Conv1D targets, "
            f"without enable_lora), got {type(layer).__name__}"
        )
    if not layer.has_lora:
        raise ValueError("PiSSA needs a layer with r > 0")
    if layer.merged:
        raise ValueError("PiSSA needs an unmerged layer: call layer.train() first")
    weight = layer.weight_out_in().float()  # (out, in), whatever the storage layout
    U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
    root = (S[: layer.r] / layer.scaling).sqrt()  # (r,): s * B A then equals U_r S_r V_r^T
    B = U[:, : layer.r] * root  # (out, r)
    A = root[:, None] * Vh[: layer.r]  # (r, in)
    residual = weight - layer.scaling * B @ A  # (out, in)
    layer.lora_A.copy_(A)
    layer.lora_B.copy_(B)
    layer.weight.copy_(residual.t() if layer.fan_in_fan_out else residual)
    layer.init_lora_weights = "pissa"  # the frozen weight is no longer W0: adapter files must know
    if layer.use_dora:
        dora.init_magnitude(layer)
    return layer
