"""`LoRALinear`: the textbook LoRA layer that notebook 02 builds by hand.

It is deliberately the simplest correct version: ``A`` and ``B`` are bias-free ``nn.Linear``
layers, ``A ~ normal(std=0.02)``, ``B = 0``, dropout on the input before ``A``, and

    forward(x) = F.linear(x, weight, bias) + scaling * B(A(dropout(x)))

The loralib-compatible :class:`lora_basics.Linear` adds merge-on-eval, ``fan_in_fan_out`` and
loralib's parameter names on top of the same idea.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lora_layer import copy_pretrained
from .validation import validate_alpha, validate_dropout, validate_rank


def read_config(config: object) -> tuple[int, float, float]:
    """Return ``(r, dropout, alpha)`` from any object with ``lora_r`` and ``lora_dropout``."""
    missing = [name for name in ("lora_r", "lora_dropout") if not hasattr(config, name)]
    if missing:
        raise TypeError(
            f"config must have attributes lora_r and lora_dropout; {type(config).__name__} is missing "
            f"{', '.join(missing)} (use lora_basics.LoRAConfig(lora_r=8, lora_dropout=0.0))"
        )
    r = validate_rank(config.lora_r, allow_zero=False)
    dropout = validate_dropout(config.lora_dropout)
    alpha = getattr(config, "lora_alpha", None)
    alpha = r if alpha is None else validate_alpha(alpha, r)
    return r, dropout, alpha


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus ``scaling * B(A(dropout(x)))``, the textbook LoRA layer.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        config: any object with ``lora_r`` (rank, >= 1) and ``lora_dropout`` (in [0, 1)); an optional
            ``lora_alpha`` (default ``lora_r``) sets ``scaling = lora_alpha / lora_r``.

    Shapes:
        - ``weight``: ``(out_features, in_features)``; ``bias``: ``(out_features,)``.
        - ``A.weight``: ``(r, in_features)``, ``normal(0, 0.02)``.
        - ``B.weight``: ``(out_features, r)``, zeros: at initialisation the layer equals ``nn.Linear``.
        - input ``(..., in_features)`` -> output ``(..., out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, config: object, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        r, dropout, alpha = read_config(config)
        self.r = r
        self.scaling = alpha / r
        self.A = nn.Linear(in_features, r, bias=False, device=device, dtype=dtype)  # down: in -> r
        self.B = nn.Linear(r, out_features, bias=False, device=device, dtype=dtype)  # up: r -> out
        nn.init.normal_(self.A.weight, std=0.02)
        nn.init.zeros_(self.B.weight)
        self.dropout = nn.Dropout(p=dropout)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: object) -> LoRALinear:
        """Wrap a pretrained ``nn.Linear``: same weight and bias, LoRA update starting at zero."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        layer = cls(
            linear.in_features,
            linear.out_features,
            config,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        copy_pretrained(layer, linear)
        return layer

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias) + self.scaling * self.B(self.A(self.dropout(input)))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, scaling={self.scaling}"
