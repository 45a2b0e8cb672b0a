"""LoRA+ (Hayou et al., 2024): train ``B`` with a larger learning rate than ``A``.

In ``ΔW = B A`` the two factors play different roles: ``A`` (``r x in``) reads features, ``B``
(``out x r``) writes them, and starts at zero. Hayou et al. show that for wide layers one learning rate
for both is inefficient: the update of ``B`` should be larger, ``lr_B = ratio * lr_A`` with ``ratio``
around 2^4. Nothing in the layer changes; only the optimizer's parameter groups do:

    optimizer = torch.optim.AdamW(lora_plus_param_groups(model, lr=2e-4, ratio=16), weight_decay=0.0)

Every ``lora_B`` of the model (the output-side factor of every layer type) gets ``ratio * lr``; every
other trainable parameter (the ``lora_A`` factors, DoRA's ``lora_magnitude``, trained biases) gets ``lr``. PEFT's
``create_loraplus_optimizer`` gives the same rates to ``A`` and ``B``; it differs on the rest: it puts
trained 1-D parameters (biases, norms) with ``B`` and gives LoRA embeddings a fixed rate of 1e-6.
"""

from __future__ import annotations

import numbers

from torch import nn

from .utils import lora_parameter_names


def lora_plus_param_groups(model: nn.Module, lr: float, ratio: float = 16.0) -> list[dict]:
    """Parameter groups for any torch optimizer: ``lora_B`` factors at ``ratio * lr``, the rest at ``lr``.

    Only trainable parameters (``requires_grad``) are included; empty groups are left out.
    """
    for name, value in (("lr", lr), ("ratio", ratio)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {name}={value!r}")
    lora_B = {name for name in lora_parameter_names(model) if name.endswith("lora_B")}
    fast, slow = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (fast if name in lora_B else slow).append(param)
    groups = [{"params": slow, "lr": lr}, {"params": fast, "lr": lr * ratio}]
    return [group for group in groups if group["params"]]
