"""Model-wide helpers: freeze all but LoRA, and extract the (small) LoRA state dict."""

from __future__ import annotations

import torch
from torch import nn

from .lora_layer import LoRALayer
from .lora_linear import LoRALinear

BIAS_MODES = ("none", "all", "lora_only")


def _check_bias_mode(bias: object) -> str:
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got bias={bias!r}")
    return bias


def _lora_modules(model: nn.Module):
    """Yield ``(prefix, module, lora_parameter_names)`` for every layer that carries a LoRA update."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, LoRALayer) and module.has_lora:
            yield prefix, module, ("lora_A", "lora_B")
        elif isinstance(module, LoRALinear):
            yield prefix, module, ("A.weight", "B.weight")


def lora_parameter_names(model: nn.Module) -> list[str]:
    """Names (as in ``model.named_parameters()``) of every LoRA parameter in ``model``."""
    return [prefix + name for prefix, _, names in _lora_modules(model) for name in names]


def _bias_names(model: nn.Module, bias: str) -> list[str]:
    """Names of the biases that ``bias`` mode trains/saves alongside the LoRA parameters."""
    if bias == "all":
        return [name for name, _ in model.named_parameters() if name.split(".")[-1] == "bias"]
    if bias == "lora_only":
        return [
            prefix + "bias" for prefix, module, _ in _lora_modules(model) if getattr(module, "bias", None) is not None
        ]
    return []


def mark_only_lora_as_trainable(model: nn.Module, bias: str = "none") -> None:
    """Freeze every parameter except the LoRA ones (and biases, as ``bias`` says).

    Args:
        bias: ``"none"`` trains no bias, ``"all"`` trains every bias in the model,
            ``"lora_only"`` trains the biases of the LoRA layers only.

    Unlike loralib, the LoRA parameters are set ``requires_grad=True`` even if the model was
    frozen before (loralib only ever switches gradients off, leaving them frozen).
    """
    _check_bias_mode(bias)
    trainable = set(lora_parameter_names(model)) | set(_bias_names(model, bias))
    for name, param in model.named_parameters():
        param.requires_grad = name in trainable


def lora_state_dict(model: nn.Module, bias: str = "none") -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``model.state_dict()`` (plus biases as ``bias`` says), nothing else.

    Load it back with ``model.load_state_dict(sd, strict=False)`` into a model built the same way.
    """
    _check_bias_mode(bias)
    state = model.state_dict()
    keys = lora_parameter_names(model) + _bias_names(model, bias)
    return {key: state[key] for key in keys}
