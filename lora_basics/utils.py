"""Model-wide helpers: freeze all but LoRA, and extract the (small) LoRA state dict."""

from __future__ import annotations

import torch
from torch import nn

from .lora_layer import LoRALayer
from .lora_linear import LoRALinear

BIAS_MODES = ("none", "all", "lora_only")


def check_bias_mode(bias: object) -> str:
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got bias={bias!r}")
    return bias


def _textbook_names(model: nn.Module) -> set[str]:
    """The factors of the textbook :class:`LoRALinear` layers (``A.weight``, ``B.weight``: no ``lora_`` in their names)."""
    return {
        f"{name}.{factor}" if name else factor
        for name, module in model.named_modules()
        if isinstance(module, LoRALinear)
        for factor in ("A.weight", "B.weight")
    }


def lora_parameter_names(model: nn.Module) -> list[str]:
    """Names (as in ``model.named_parameters()``) of every LoRA parameter in ``model``.

    loralib's rule: a parameter whose name contains ``lora_`` is a LoRA parameter, whichever module
    holds it (a model's own ``lora_gate`` too). The textbook ``LoRALinear``'s ``A.weight`` and
    ``B.weight`` are LoRA parameters as well.
    """
    textbook = _textbook_names(model)
    return [name for name, _ in model.named_parameters() if "lora_" in name or name in textbook]


def _lora_layer_biases(model: nn.Module) -> set[str]:
    """Names of the biases of the layers that hold LoRA parameters (``conv.bias`` for ConvLoRA)."""
    names = {name.split("lora_")[0] + "bias" for name in lora_parameter_names(model) if "lora_" in name}  # loralib's
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, LoRALinear):
            names.add(prefix + "bias")
        elif isinstance(module, LoRALayer) and module.has_lora:
            # The bias beside the frozen weight: ``bias``, or ``conv.bias`` for ConvLoRA.
            names.add(prefix + module.frozen_weight_name[: -len("weight")] + "bias")
    return names


def _bias_names(model: nn.Module, bias: str, names: list[str]) -> set[str]:
    """Which of ``names`` (parameter or state-dict names) are biases that ``bias`` mode trains and saves.

    ``"all"``: every name containing ``bias``, as loralib (so a state dict's ``bias`` buffers too,
    e.g. GPT-2's causal mask ``attn.bias``); ``"lora_only"``: the biases of the LoRA layers.
    """
    if bias == "all":
        return {name for name in names if "bias" in name}
    if bias == "lora_only":
        return _lora_layer_biases(model) & set(names)
    return set()


def mark_only_lora_as_trainable(model: nn.Module, bias: str = "none") -> None:
    """Freeze every parameter except the LoRA ones (and biases, as ``bias`` says).

    Args:
        bias: ``"none"`` trains no bias, ``"all"`` trains every parameter whose name contains
            ``bias``, ``"lora_only"`` trains the biases of the LoRA layers only.

    LoRA parameters are those of :func:`lora_parameter_names` (names containing ``lora_``, as in
    loralib). Unlike loralib, they are set ``requires_grad=True`` even if the model was frozen
    before (loralib only ever switches gradients off, leaving them frozen).
    """
    check_bias_mode(bias)
    names = [name for name, _ in model.named_parameters()]
    trainable = set(lora_parameter_names(model)) | _bias_names(model, bias, names)
    for name, param in model.named_parameters():
        param.requires_grad = name in trainable


def lora_state_dict(model: nn.Module, bias: str = "none") -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``model.state_dict()`` (plus biases as ``bias`` says), nothing else.

    The keys are loralib's: every key containing ``lora_`` (the textbook ``LoRALinear``'s
    ``A.weight``/``B.weight`` too), in state-dict order. Load it back with
    ``model.load_state_dict(sd, strict=False)`` into a model built the same way.
    """
    check_bias_mode(bias)
    state = model.state_dict()
    textbook = _textbook_names(model)
    keep = {key for key in state if "lora_" in key or key in textbook} | _bias_names(model, bias, list(state))
    return {key: value for key, value in state.items() if key in keep}
