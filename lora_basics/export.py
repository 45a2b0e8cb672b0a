"""`merge_and_export`: a plain torch model with every LoRA update merged in (no LoRA left)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .conv import ConvLoRA
from .embedding import Embedding, lookup_options
from .inject import BASE_SHELL, lora_layers, replace_module
from .linear import Linear
from .lora_layer import LoRALayer
from .lora_linear import LoRALinear
from .merge import add_update, current_factors, merge_dtype
from .qlora import QLoRALinear


@torch.no_grad()
def merged_weight(layer: nn.Module) -> torch.Tensor:
    """``W0 + ΔW`` as ``layer`` computes it in eval mode, as a new tensor (``layer`` is not changed).

    A merged layer already holds it; otherwise it is computed in fp32 and rounded once, as merging does
    (DoRA's ``(m / n) ⊙ (W0 + ΔW)`` for a DoRA layer; the dequantized ``Ŵ + ΔW`` for a :class:`QLoRALinear`).
    """
    if isinstance(layer, LoRALinear):  # the textbook layer never merges: W + scaling * B A
        weight, dtype = layer.weight.detach(), merge_dtype(layer.weight)
        delta = layer.scaling * (layer.B.weight.to(dtype) @ layer.A.weight.to(dtype))
        return (weight.to(dtype) + delta).to(weight.dtype)
    weight = layer.frozen_weight.detach()
    if layer.merged or not layer.has_lora:
        return weight.clone()
    return add_update(layer, weight, current_factors(layer))


def _plain_layer(layer: nn.Module) -> nn.Module:
    """A plain torch module computing what ``layer`` computes, with the update merged into its weight."""
    weight = merged_weight(layer)
    owner = layer.conv if isinstance(layer, ConvLoRA) else layer  # the module holding weight and bias
    shell = getattr(layer, BASE_SHELL, None)
    if shell is not None:
        plain = copy.deepcopy(shell).to_empty(device=weight.device)
    elif isinstance(layer, ConvLoRA):
        plain = copy.deepcopy(layer.conv)
    elif isinstance(layer, LoRALinear) or (isinstance(layer, (Linear, QLoRALinear)) and not layer.fan_in_fan_out):
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    elif isinstance(layer, Embedding):
        plain = nn.Embedding(layer.num_embeddings, layer.embedding_dim, **lookup_options(layer))
    else:
        raise TypeError(f"cannot export a {type(layer).__name__} that add_lora did not create")
    plain = plain.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        plain.weight.copy_(weight)
        if getattr(owner, "bias", None) is not None:
            plain.bias.copy_(owner.bias)
    return plain.train(layer.training)


def merge_and_export(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every LoRA layer replaced by the plain layer it wrapped, holding
    ``W0 + scaling * delta``. ``model`` itself is not changed.

    The copy needs no part of ``lora_basics`` (its layers are the base model's own classes), runs
    at the speed of the base model, and has every parameter trainable, like any freshly built model.
    The textbook :class:`~lora_basics.LoRALinear` becomes an ``nn.Linear`` too, and a
    :class:`~lora_basics.QLoRALinear` a full-precision layer holding its dequantized weight plus ΔW.
    """
    exported = copy.deepcopy(model)
    for name, layer in lora_layers(exported).items():
        replace_module(exported, name, _plain_layer(layer))
    leftover = [name for name, m in exported.named_modules() if isinstance(m, LoRALayer)]
    if leftover:  # r = 0 layers: plain layers already, but still lora_basics classes
        for name in leftover:
            replace_module(exported, name, _plain_layer(exported.get_submodule(name)))
    exported.requires_grad_(True)
    return exported
