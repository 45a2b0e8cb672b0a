"""`Linear`: loralib's drop-in LoRA replacement for ``nn.Linear``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import dora
from .lora_layer import LoRALayer, copy_pretrained
from .validation import validate_flag


def pretrained_linear(module: nn.Module, fan_in_fan_out: bool) -> tuple[torch.Tensor, int, int, torch.Tensor | None]:
    """``(weight, in_features, out_features, bias)`` of a linear ``module`` (weight ``(in, out)`` if ``fan_in_fan_out``)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise TypeError(f"module must have a 2-D weight, got {type(module).__name__}")
    out_features, in_features = weight.shape[::-1] if fan_in_fan_out else weight.shape
    return weight, in_features, out_features, getattr(module, "bias", None)


class Linear(LoRALayer, nn.Linear):
    """``nn.Linear`` plus a trainable low-rank update (loralib-compatible).

    ``y = x W0^T + b + scaling * dropout(x) A^T B^T`` with ``scaling = lora_alpha / r``
    (``lora_alpha / sqrt(r)`` with ``use_rslora``). With ``use_dora`` the layer is DoRA's
    (:mod:`lora_basics.dora`): ``y = m ⊙ (W0 + scaling B A) x / ||W0 + scaling B A||_row + b``.

    Shapes (``r > 0``):
        - ``weight``: ``(out_features, in_features)``, or ``(in_features, out_features)`` when
          ``fan_in_fan_out=True`` (GPT-2's ``Conv1D`` stores it that way); frozen.
        - ``lora_A``: ``(r, in_features)``, kaiming-uniform init (as ``nn.Linear``'s weight).
        - ``lora_B``: ``(out_features, r)``, zeros, so the layer starts as the pretrained one.
        - ``lora_magnitude`` (``use_dora=True`` only): ``(out_features,)``, initialised to
          ``||W0 + scaling B A||_row`` (the norms of ``W0``'s output rows while ``B = 0``), trainable.
        - input ``(..., in_features)`` -> output ``(..., out_features)``.

    The forward pass never forms the dense ``(out, in)`` update: it costs
    ``O(tokens * r * (in + out))`` on top of the base layer.

    Args:
        in_features, out_features: as ``nn.Linear``.
        r: rank; ``r = 0`` makes this exactly ``nn.Linear``.
        lora_alpha: the update is scaled by ``lora_alpha / r``.
        lora_dropout: dropout on the input of ``lora_A`` (train mode only).
        fan_in_fan_out: ``weight`` is stored ``(in, out)``.
        merge_weights: merge the update into ``weight`` on ``eval()``, unmerge on ``train()``.
        use_rslora: scale by ``lora_alpha / sqrt(r)`` (rank-stabilised LoRA); default False.
        use_dora: DoRA: a trainable magnitude per output feature on top of the normalised
            ``W0 + scaling B A``; default False. Needs ``r > 0``.
        **kwargs: passed to ``nn.Linear`` (``bias``, ``device``, ``dtype``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        r: int = 0,
        lora_alpha: float = 1,
        lora_dropout: float = 0.0,
        fan_in_fan_out: bool = False,
        merge_weights: bool = True,
        *,
        use_rslora: bool = False,
        use_dora: bool = False,
        **kwargs,
    ):
        use_dora = validate_flag("use_dora", use_dora)
        if use_dora and r == 0:
            raise ValueError("use_dora=True needs r > 0: DoRA's direction is W0 + scaling * B A, with LoRA factors")
        nn.Linear.__init__(self, in_features, out_features, **kwargs)
        LoRALayer.__init__(self, r, lora_alpha, lora_dropout, merge_weights, use_rslora)
        self.fan_in_fan_out = validate_flag("fan_in_fan_out", fan_in_fan_out)
        if self.r > 0:
            self.lora_A = nn.Parameter(self.weight.new_zeros((self.r, in_features)))
            self.lora_B = nn.Parameter(self.weight.new_zeros((out_features, self.r)))
            self.weight.requires_grad = False  # the pretrained weight is frozen
        self.reset_parameters()
        if self.fan_in_fan_out:
            self.weight = nn.Parameter(self.weight.detach().t().contiguous(), requires_grad=self.weight.requires_grad)
        if use_dora:  # after the weight has its final layout: the magnitude is measured on it
            self.use_dora = True
            self.lora_magnitude = nn.Parameter(self.weight.new_zeros(out_features))
            dora.init_magnitude(self)

    def reset_parameters(self) -> None:
        nn.Linear.reset_parameters(self)
        if self.has_lora:
            # A like nn.Linear's own weight, B = 0: the update B @ A starts at exactly zero
            # while gradients still reach B (dL/dB = grad_out^T (x A^T), non-zero because A is not).
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)
        if self.use_dora:
            dora.init_magnitude(self)

    @classmethod
    def from_module(cls, module: nn.Module, fan_in_fan_out: bool = False, **lora_kwargs) -> Linear:
        """Wrap a pretrained linear layer, keeping its weight and bias.

        ``module`` is an ``nn.Linear`` (weight ``(out, in)``), or with ``fan_in_fan_out=True`` any
        module whose 2-D ``weight`` is stored ``(in, out)`` (GPT-2's ``Conv1D``).
        ``lora_kwargs``: ``r``, ``lora_alpha``, ``lora_dropout``, ``merge_weights``, ``use_rslora``,
        ``use_dora`` (the magnitude is then measured on the pretrained weight).
        """
        weight, in_features, out_features, bias = pretrained_linear(module, fan_in_fan_out)
        layer = cls(
            in_features,
            out_features,
            fan_in_fan_out=fan_in_fan_out,
            bias=bias is not None,
            device=weight.device,
            dtype=weight.dtype,
            **lora_kwargs,
        )
        copy_pretrained(layer, module)
        if layer.use_dora:
            dora.init_magnitude(layer)
        return layer

    def full_lora_B(self, lora_B: torch.Tensor | None = None) -> torch.Tensor:
        """``lora_B`` (the layer's, or the one given) laid out over all output features: ``(out_features, rank of lora_A)``.

        For ``Linear`` this is ``lora_B`` itself; ``MergedLinear`` overrides it.
        """
        return self.lora_B if lora_B is None else lora_B

    def delta_weight(self, dtype: torch.dtype | None = None, factors=None) -> torch.Tensor:
        """``scaling * B @ A`` in the layout of ``weight`` (transposed if ``fan_in_fan_out``).

        ``factors``: the ``(lora_A, lora_B, ...)`` to build it from; the layer's own by default.
        """
        A, B = factors[:2] if factors else (self.lora_A, self.lora_B)
        dtype = dtype or self.weight.dtype
        delta = (self.full_lora_B(B).to(dtype) @ A.to(dtype)) * self.scaling  # (out, in)
        return delta.t() if self.fan_in_fan_out else delta

    def forward_formula(self, x: torch.Tensor) -> torch.Tensor:
        """The LoRA forward pass exactly as written: ``x W0^T + b + scaling * dropout(x) A^T B^T``.

        :meth:`forward` computes the same thing with one fused call (a test checks they agree, and
        ``make bench`` times both); read this one to see what a LoRA layer does.
        """
        if self.use_dora and not self.merged:
            return dora.forward(self, x)
        result = F.linear(x, self.weight_out_in(), self.bias)  # (..., out)
        if not self.has_lora or self.merged:
            return result
        after_A = F.linear(self.lora_dropout(x), self.lora_A)  # (..., r)
        return result + self.scaling * F.linear(after_A, self.full_lora_B())  # (..., out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same result as :meth:`forward_formula`, with the last two steps fused into one ``addmm``."""
        if self.use_dora and not self.merged:
            return dora.forward(self, x)
        result = F.linear(x, self.weight_out_in(), self.bias)  # (..., out)
        if not self.has_lora or self.merged:
            return result
        # Scale the small (..., r) activation rather than the (..., out) output.
        after_A = F.linear(self.lora_dropout(x), self.lora_A) * self.scaling  # (..., r)
        # torch.addmm(C, M1, M2) = C + M1 @ M2 in one GEMM: no separate pass over the (..., out)
        # output to add the update. B^T is copied contiguous (a tiny (r, out) copy) so that the
        # backward's GEMMs also run in their fastest memory layout.
        B_t = self.full_lora_B().t().contiguous()  # (r, out)
        out = torch.addmm(result.reshape(-1, self.out_features), after_A.reshape(-1, B_t.shape[0]), B_t)
        return out.view(result.shape)  # (..., out)

    def weight_out_in(self) -> torch.Tensor:
        """``weight`` as ``(out_features, in_features)`` (a transposed view if ``fan_in_fan_out``)."""
        return self.weight.t() if self.fan_in_fan_out else self.weight
