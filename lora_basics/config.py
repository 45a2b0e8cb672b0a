"""`LoRAConfig`: the small settings object the textbook `LoRALinear` reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoRAConfig:
    """Settings for :class:`lora_basics.LoRALinear`.

    Any object with ``lora_r`` and ``lora_dropout`` attributes works as a config (that is all
    the textbook version reads); this dataclass is a convenient one to pass around.

    Args:
        lora_r: rank ``r`` of the update ``B @ A`` (a positive integer).
        lora_dropout: dropout probability applied to the input of ``A`` during training.
        lora_alpha: numerator of the scale ``lora_alpha / lora_r``. ``None`` (the default)
            means ``lora_alpha = lora_r``, so the scale is 1 as in the textbook layer.
    """

    lora_r: int = 8
    lora_dropout: float = 0.0
    lora_alpha: float | None = None
