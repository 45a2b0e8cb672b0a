"""`Embedding`: loralib's drop-in LoRA replacement for ``nn.Embedding``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lora_layer import LoRALayer, copy_pretrained
from .validation import refuse_dora, refuse_fan_in_fan_out


def lookup_options(module: nn.Embedding) -> dict:
    """An embedding's lookup options: everything ``nn.Embedding`` takes besides its sizes and table."""
    return {
        "padding_idx": module.padding_idx,
        "max_norm": module.max_norm,  # refused by Embedding with r > 0 (see below): never silently dropped
        "norm_type": module.norm_type,
        "scale_grad_by_freq": module.scale_grad_by_freq,
        "sparse": module.sparse,
    }


class Embedding(LoRALayer, nn.Embedding):
    """``nn.Embedding`` plus a trainable low-rank update of the table (loralib-compatible).

    The table is ``W = W0 + scaling * (B @ A)^T``, ``(num_embeddings, embedding_dim)``: row ``t``
    (token ``t``'s vector) moves by ``scaling * B @ A[:, t]``, a per-token correction that lives in
    an ``r``-dimensional subspace of the embedding space.

    Shapes (``r > 0``):
        - ``weight``: ``(num_embeddings, embedding_dim)``, frozen.
        - ``lora_A``: ``(r, num_embeddings)``, initialised to **zeros**.
        - ``lora_B``: ``(embedding_dim, r)``, initialised ``normal_(0, 1)``.
        - input ``(...)`` of token ids -> output ``(..., embedding_dim)``.

    Why the init is the reverse of ``Linear``'s: an embedding lookup picks column ``t`` of ``A``
    (``A[:, t]``, like a one-hot input), so ``A`` plays the role of the layer's *input side*. One
    of ``A``, ``B`` must be zero so the layer starts as the pretrained one, and the other random
    so gradients flow: with ``A = 0`` and ``B`` random, ``dL/dA[:, t] = scaling * B^T dL/dy_t`` is
    non-zero for every token seen, and each token's column of ``A`` learns its own correction.

    Args:
        num_embeddings, embedding_dim: as ``nn.Embedding``.
        r, lora_alpha, merge_weights, use_rslora: as :class:`LoRALayer`. ``use_dora=True`` is refused.
        **kwargs: passed to ``nn.Embedding`` (``padding_idx``, ``device``, ``dtype``, ...).
            ``max_norm`` is refused with ``r > 0``: torch renormalises the looked-up table in
            place, which would silently rescale ``lora_A`` (and break merged == unmerged).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        r: int = 0,
        lora_alpha: float = 1,
        merge_weights: bool = True,
        *,
        use_rslora: bool = False,
        **kwargs,
    ):
        refuse_fan_in_fan_out("Embedding", kwargs)
        refuse_dora("Embedding", kwargs)
        nn.Embedding.__init__(self, num_embeddings, embedding_dim, **kwargs)
        # No dropout on an embedding's LoRA path: its "input" is a token id (as in loralib).
        LoRALayer.__init__(self, r, lora_alpha, 0.0, merge_weights, use_rslora)
        if self.r > 0:
            if self.max_norm is not None:
                raise ValueError(
                    f"max_norm={self.max_norm} is not supported with r > 0: torch renormalises the looked-up "
                    "rows of the table in place, which the separate LoRA update cannot follow; use max_norm=None"
                )
            self.lora_A = nn.Parameter(self.weight.new_zeros((self.r, num_embeddings)))
            self.lora_B = nn.Parameter(self.weight.new_zeros((embedding_dim, self.r)))
            self.weight.requires_grad = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.Embedding.reset_parameters(self)
        if self.has_lora:
            nn.init.zeros_(self.lora_A)
            nn.init.normal_(self.lora_B)

    @classmethod
    def from_module(cls, module: nn.Embedding, **lora_kwargs) -> Embedding:
        """Wrap a pretrained ``nn.Embedding``, keeping its table and every lookup option."""
        if not isinstance(module, nn.Embedding):
            raise TypeError(f"module must be an nn.Embedding, got {type(module).__name__}")
        layer = cls(
            module.num_embeddings,
            module.embedding_dim,
            **lookup_options(module),
            device=module.weight.device,
            dtype=module.weight.dtype,
            **lora_kwargs,
        )
        copy_pretrained(layer, module)
        return layer

    def delta_weight(self, dtype: torch.dtype | None = None, factors=None) -> torch.Tensor:
        """``scaling * (B @ A)^T``: ``(num_embeddings, embedding_dim)``, the layout of ``weight``.

        ``factors``: the ``(lora_A, lora_B)`` to build it from; the layer's own by default.
        """
        A, B = factors or (self.lora_A, self.lora_B)
        dtype = dtype or self.weight.dtype
        return (B.to(dtype) @ A.to(dtype)).t() * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``W0[x] + scaling * (B @ A[:, x])^T``: the frozen row of each token plus its low-rank correction."""
        result = nn.Embedding.forward(self, x)  # (..., embedding_dim)
        if not self.has_lora or self.merged:
            return result
        # Token t's column of A, looked up like a row of the table A^T: (..., r). The lookup options
        # are the frozen table's own, so the update sees the same tokens; max_norm is None (refused).
        # ``sparse`` is not passed on: it only shapes the gradient of the frozen table, and a sparse
        # gradient of the transposed view A^T cannot flow back into lora_A (torch fails on backward).
        after_A = F.embedding(
            x,
            self.lora_A.t(),  # (num_embeddings, r)
            padding_idx=self.padding_idx,
            scale_grad_by_freq=self.scale_grad_by_freq,
        )
        return result + self.scaling * F.linear(after_A, self.lora_B)  # B maps r -> embedding_dim
