"""Model-level LoRA: inject it into a pretrained model, save and load adapters, merge and export.

    model = add_lora(model, ["c_attn"], r=8, lora_alpha=16, enable_lora={"c_attn": [True, False, True]})
    print(trainable_summary(model))          # trainable params: 12,288 || all params: ... || trainable%: ...
    ...train...
    save_adapter(model, "task_a.pt")         # only the LoRA tensors + their settings (a few KB)
    model = load_adapter(fresh_base, "task_a.pt")    # injects LoRA as saved, then loads the tensors
    plain = merge_and_export(model)          # W0 + scaling * B A in plain torch layers, no LoRA left

``add_lora`` replaces every module whose name matches a target by the matching LoRA layer, built
with that layer's ``from_module`` (so the pretrained weights are kept):

=====================================  =============================================================
pretrained module                      LoRA layer
=====================================  =============================================================
``nn.Linear``                          :class:`Linear` (:class:`MergedLinear` if ``enable_lora``)
GPT-2 ``Conv1D`` (weight ``(in, out)``)  the same, with ``fan_in_fan_out=True``
``nn.Embedding``                       :class:`Embedding`
``nn.Conv1d`` / ``2d`` / ``3d``        :class:`Conv1d` / :class:`Conv2d` / :class:`Conv3d`
=====================================  =============================================================

An adapter file stores, next to the LoRA tensors, every LoRA layer's settings (its type, ``r``,
``lora_alpha``, ``enable_lora``, the shape of the pretrained weight) and a fingerprint of the base
model's weights, so loading it into another base model, or into a model injected with other
settings, raises a ``ValueError`` that says what differs instead of silently computing garbage.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn

from .base import LoRALayer
from .conv import Conv1d, Conv2d, Conv3d
from .embedding import Embedding
from .linear import Linear
from .merged import MergedLinear
from .utils import lora_parameter_names, lora_state_dict, mark_only_lora_as_trainable

ADAPTER_FORMAT = "lora_basics.adapter"
ADAPTER_VERSION = 1
_CONVS = {nn.Conv1d: Conv1d, nn.Conv2d: Conv2d, nn.Conv3d: Conv3d}
_BASE_SHELL = "_lora_base_shell"  # attribute of a LoRA layer: the replaced module, on the meta device


def _is_conv1d_style(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` (ours or Hugging Face's): a linear layer with a 2-D weight stored ``(in, out)``."""
    weight = getattr(module, "weight", None)
    return type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2


def _matches(name: str, pattern: str) -> bool:
    """A target ``pattern`` names a module by its full name or by its last parts: ``"c_attn"``
    matches ``"h.0.attn.c_attn"``, ``"attn.c_proj"`` matches ``"h.0.attn.c_proj"`` but not ``"h.0.mlp.c_proj"``."""
    return name == pattern or name.endswith("." + pattern)


def _wrap(
    module: nn.Module,
    name: str,
    r: int,
    lora_alpha: float,
    lora_dropout: float,
    merge_weights: bool,
    enable_lora: list[bool] | None,
) -> LoRALayer:
    """The LoRA layer replacing the pretrained ``module`` (named ``name``), with its weights."""
    kwargs = {"r": r, "lora_alpha": lora_alpha, "merge_weights": merge_weights}
    if isinstance(module, LoRALayer):
        raise ValueError(f"module {name!r} is already a LoRA layer ({type(module).__name__}); call add_lora once")
    if isinstance(module, nn.Embedding):
        if enable_lora is not None:
            raise ValueError(f"enable_lora is for fused linear layers, but {name!r} is an nn.Embedding")
        return Embedding.from_module(module, **kwargs)
    kwargs["lora_dropout"] = lora_dropout
    if isinstance(module, nn.Linear) or _is_conv1d_style(module):
        fan_in_fan_out = not isinstance(module, nn.Linear)
        if enable_lora is None:
            return Linear.from_module(module, fan_in_fan_out=fan_in_fan_out, **kwargs)
        return MergedLinear.from_module(module, fan_in_fan_out=fan_in_fan_out, enable_lora=enable_lora, **kwargs)
    if type(module) in _CONVS:
        if enable_lora is not None:
            raise ValueError(f"enable_lora is for fused linear layers, but {name!r} is an {type(module).__name__}")
        return _CONVS[type(module)].from_module(module, **kwargs)
    raise TypeError(
        f"module {name!r} is a {type(module).__name__}; add_lora supports nn.Linear, GPT-2's Conv1D, "
        "nn.Embedding and nn.Conv1d/2d/3d"
    )


def _replace(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)


def _inject(model: nn.Module, name: str, **settings) -> None:
    module = model.get_submodule(name)
    layer = _wrap(module, name, **settings)
    layer.train(module.training)  # an eval-mode model stays in eval mode (merged)
    # Remember what was replaced, as a storage-free copy on the meta device: merge_and_export
    # rebuilds the original module type from it. Set with object.__setattr__ so it is *not*
    # registered as a submodule (it must not show up in named_modules() or state_dict()).
    object.__setattr__(layer, _BASE_SHELL, copy.deepcopy(module).to("meta"))
    _replace(model, name, layer)


def lora_layers(model: nn.Module) -> dict[str, LoRALayer]:
    """``{name: layer}`` of every LoRA layer in ``model`` that carries an update (``r > 0``)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALayer) and m.has_lora}


def add_lora(
    model: nn.Module,
    target_modules: list[str],
    r: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.0,
    enable_lora: dict[str, list[bool]] | None = None,
    merge_weights: bool = True,
    bias: str = "none",
) -> nn.Module:
    """Replace every module named by ``target_modules`` with a LoRA layer holding its pretrained weights.

    Args:
        model: the pretrained model, changed in place (and returned).
        target_modules: module names or name endings, e.g. ``["c_attn", "c_proj"]`` (every
            ``...c_attn`` and ``...c_proj``), ``["attn.c_proj"]``, ``["wte"]``. Each must match
            at least one module.
        r, lora_alpha, lora_dropout, merge_weights: the settings of every new layer (``lora_dropout``
            does not apply to embeddings).
        enable_lora: for fused projections: ``{target: flags}``, e.g. ``{"c_attn": [True, False, True]}``
            puts LoRA on Q and V of GPT-2's fused ``c_attn`` (a :class:`MergedLinear`).
        bias: which biases stay trainable, as in :func:`mark_only_lora_as_trainable`.

    Afterwards only the LoRA parameters (and ``bias`` biases) are trainable.
    """
    if isinstance(target_modules, str):
        raise TypeError(f"target_modules must be a list of names, got the string {target_modules!r}")
    enable_lora = dict(enable_lora or {})
    unknown = sorted(set(enable_lora) - set(target_modules))
    if unknown:
        raise ValueError(f"enable_lora has keys {unknown} that are not in target_modules={list(target_modules)}")
    existing = sorted(lora_layers(model))
    if existing:
        raise ValueError(f"model already has LoRA layers ({existing[:3]}...); add_lora once per base model")
    names = [name for name, _ in model.named_modules() if name]
    chosen: dict[str, list[bool] | None] = {}
    for pattern in target_modules:
        matched = [name for name in names if _matches(name, pattern)]
        if not matched:
            leaves = [name for name, m in model.named_modules() if name and not list(m.children())]
            raise ValueError(f"target {pattern!r} matches no module; modules are e.g. {leaves[:8]}")
        for name in matched:
            if chosen.get(name) is None:
                chosen[name] = enable_lora.get(pattern)
    for name, flags in chosen.items():
        _inject(
            model,
            name,
            r=r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            merge_weights=merge_weights,
            enable_lora=flags,
        )
    mark_only_lora_as_trainable(model, bias=bias)
    return model


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``{"trainable": ..., "total": ..., "lora": ...}`` parameter counts of ``model``."""
    lora = set(lora_parameter_names(model))
    params = dict(model.named_parameters())
    return {
        "trainable": sum(p.numel() for p in params.values() if p.requires_grad),
        "total": sum(p.numel() for p in params.values()),
        "lora": sum(p.numel() for n, p in params.items() if n in lora),
    }


def trainable_summary(model: nn.Module) -> str:
    """One line: ``trainable params: 12,288 || all params: 955,808 || trainable%: 1.2856``."""
    counts = parameter_counts(model)
    share = 100 * counts["trainable"] / max(1, counts["total"])
    return f"trainable params: {counts['trainable']:,} || all params: {counts['total']:,} || trainable%: {share:.4f}"


def adapter_settings(model: nn.Module) -> dict[str, dict]:
    """The settings of every LoRA layer: what an adapter file must agree with to be loaded."""
    settings = {}
    for name, layer in lora_layers(model).items():
        shell = getattr(layer, _BASE_SHELL, None)
        entry = {
            "type": type(layer).__name__,
            "base_type": type(shell).__name__ if shell is not None else None,
            "weight_shape": list(layer.weight.shape),
            "r": layer.r,
            "lora_alpha": float(layer.lora_alpha),
            "lora_dropout": float(getattr(layer.lora_dropout, "p", 0.0)),
            "merge_weights": layer.merge_weights,
            "fan_in_fan_out": bool(getattr(layer, "fan_in_fan_out", False)),
            "enable_lora": list(getattr(layer, "enable_lora", [])) or None,
        }
        settings[name] = entry
    return settings


def _base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The pretrained (non-LoRA) floating-point tensors of ``model``, unmerged."""
    lora = set(lora_parameter_names(model))
    return {k: v for k, v in model.state_dict().items() if k not in lora and v.is_floating_point()}


def base_fingerprint(model: nn.Module) -> dict[str, list[float]]:
    """Three numbers per pretrained tensor: its size, its RMS and its projection on a fixed random direction.

    Robust to the last-bit rounding of merging and unmerging, but any real change of the weights
    (another pretraining run, a fine-tuned base) moves them. Compared by :func:`load_adapter`.
    """
    fingerprint = {}
    for key, tensor in sorted(_base_state(model).items()):
        values = tensor.detach().cpu().double().flatten()
        direction = torch.randn(values.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        fingerprint[key] = [float(values.numel()), values.square().mean().sqrt().item(), (values @ direction).item()]
    return fingerprint


def _fingerprint_differences(saved: dict, current: dict, rtol: float = 1e-4) -> list[str]:
    found = []
    for key in sorted(set(saved) | set(current)):
        if key not in current or key not in saved:
            found.append(f"{key!r} is missing from {'the model' if key not in current else 'the adapter base'}")
            continue
        (n_a, rms_a, proj_a), (n_b, rms_b, proj_b) = saved[key], current[key]
        # A projection of n values of RMS s on a unit-variance direction is ~ s * sqrt(n): compare on that scale.
        if (
            n_a != n_b
            or abs(rms_a - rms_b) > rtol * rms_a + 1e-12
            or abs(proj_a - proj_b) > rtol * rms_a * math.sqrt(n_a) + 1e-12
        ):
            found.append(f"{key!r} holds other values")
    return found


def save_adapter(model: nn.Module, path: str | Path) -> None:
    """Save only the LoRA tensors of ``model``, with the settings and base fingerprint that check a load."""
    layers = adapter_settings(model)
    if not layers:
        raise ValueError("model has no LoRA layers to save; call add_lora first")
    payload = {
        "format": ADAPTER_FORMAT,
        "version": ADAPTER_VERSION,
        "layers": layers,
        "base_fingerprint": base_fingerprint(model),
        "tensors": {k: v.detach().cpu().clone() for k, v in lora_state_dict(model).items()},
    }
    torch.save(payload, path)


def _settings_differences(saved: dict[str, dict], current: dict[str, dict]) -> list[str]:
    found = []
    for name in sorted(set(saved) - set(current)):
        found.append(f"the adapter has a LoRA layer {name!r} that the model does not have")
    for name in sorted(set(current) - set(saved)):
        found.append(f"the model has a LoRA layer {name!r} that the adapter does not have")
    for name in sorted(set(saved) & set(current)):
        for field in ("type", "weight_shape", "r", "lora_alpha", "fan_in_fan_out", "enable_lora"):
            if saved[name][field] != current[name][field]:
                found.append(
                    f"{name}: {field} is {saved[name][field]} in the adapter, {current[name][field]} in the model"
                )
    return found


def load_adapter(model: nn.Module, path: str | Path, check_base: bool = True) -> nn.Module:
    """Load an adapter saved by :func:`save_adapter` into ``model`` (changed in place and returned).

    - ``model`` without LoRA layers (a fresh base): LoRA is injected exactly as saved, then loaded.
    - ``model`` with LoRA layers: their settings must equal the saved ones; the LoRA tensors are
      replaced (switching adapters on one frozen base).

    Raises ``ValueError`` naming what differs when the file is not an adapter, when the model's
    modules or weight shapes differ from the adapter's base (wrong base model), when the LoRA
    settings differ, or (``check_base=True``) when the pretrained weights are not the ones the
    adapter was trained on.
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path} is not a lora_basics adapter (save one with save_adapter)")
    saved = payload["layers"]
    if not lora_layers(model):
        problems = []
        for name, entry in saved.items():
            try:
                module = model.get_submodule(name)
            except AttributeError:
                problems.append(f"the model has no module {name!r}")
                continue
            if entry["base_type"] is not None and type(module).__name__ != entry["base_type"]:
                problems.append(f"{name} is a {type(module).__name__}, the adapter's base had a {entry['base_type']}")
            elif list(getattr(module, "weight", torch.empty(0)).shape) != entry["weight_shape"]:
                problems.append(
                    f"{name} has a weight of shape {list(module.weight.shape)}, "
                    f"the adapter's base had {entry['weight_shape']}"
                )
        if problems:
            raise ValueError("wrong base model for this adapter: " + "; ".join(problems))
        for name, entry in saved.items():
            _inject(
                model,
                name,
                r=entry["r"],
                lora_alpha=entry["lora_alpha"],
                lora_dropout=entry["lora_dropout"],
                merge_weights=entry["merge_weights"],
                enable_lora=entry["enable_lora"],
            )
        mark_only_lora_as_trainable(model)
    else:
        problems = _settings_differences(saved, adapter_settings(model))
        if problems:
            raise ValueError("the adapter's LoRA settings differ from the model's: " + "; ".join(problems))
    if check_base:
        problems = _fingerprint_differences(payload["base_fingerprint"], base_fingerprint(model))
        if problems:
            raise ValueError(
                "wrong base model: the adapter was trained on other pretrained weights ("
                + "; ".join(problems[:4])
                + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
                + "). Pass check_base=False to load it anyway."
            )
    result = model.load_state_dict(payload["tensors"], strict=False)
    if result.unexpected_keys:
        raise ValueError(f"the adapter holds tensors the model has no place for: {result.unexpected_keys}")
    missing = sorted(set(lora_parameter_names(model)) - set(payload["tensors"]))
    if missing:
        raise ValueError(f"the adapter lacks the LoRA tensors {missing}")
    return model


def _plain_layer(layer: LoRALayer) -> nn.Module:
    """A plain torch module computing what ``layer`` computes, with the update merged into its weight."""
    was_merged = layer.merged
    layer.merge()
    weight = layer.weight.detach().clone()
    if not was_merged:
        layer.unmerge()
    shell = getattr(layer, _BASE_SHELL, None)
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
        _replace(exported, name, _plain_layer(layer))
    leftover = [name for name, m in exported.named_modules() if isinstance(m, LoRALayer)]
    if leftover:  # r = 0 layers: plain layers already, but still lora_basics classes
        for name in leftover:
            _replace(exported, name, _plain_layer(exported.get_submodule(name)))
    exported.requires_grad_(True)
    return exported
