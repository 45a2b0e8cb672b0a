"""`merge_and_export`: a plain torch model with every LoRA update merged in (no LoRA left)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .embedding import Embedding
from .inject import BASE_SHELL, lora_layers, replace_module
from .linear import Linear
from .lora_layer import LoRALayer


def _plain_layer(layer: LoRALayer) -> nn.Module:
    """A plain torch module computing what ``layer`` computes, with the update merged into its weight."""
    was_merged = layer.merged
    layer.merge()
    weight = layer.weight.detach().clone()
    if not was_merged:
        layer.unmerge()
    shell = getattr(layer, BASE_SHELL, None)
    if shell is not None:
        plain = copy.deepcopy(shell).to_empty(device=weight.device)
    elif isinstance(layer, Linear) and not layer.fan_in_fan_out:
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    elif isinstance(layer, Embedding):
        plain = nn.Embedding(layer.num_embeddings, layer.embedding_dim, padding_idx=layer.padding_idx)
    else:
        raise TypeError(f"cannot export a {type(layer).__name__} that add_lora did not create")
    plain = plain.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        plain.weight.copy_(weight)
        if getattr(layer, "bias", None) is not None:
            plain.bias.copy_(layer.bias)
    return plain.train(layer.training)


def merge_and_export(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every LoRA layer replaced by the plain layer it wrapped, holding
    ``W0 + scaling * delta``. ``model`` itself is not changed.

    The copy needs no part of ``lora_basics`` (its layers are the base model's own classes), runs
    at the speed of the base model, and has every parameter trainable, like any freshly built model.
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
