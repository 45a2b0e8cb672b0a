"""Adapter files: save only the LoRA tensors of a model, and load them back safely.

    save_adapter(model, "task_a.pt")                  # the LoRA tensors + their settings (a few KB)
    model = load_adapter(fresh_base, "task_a.pt")     # injects LoRA as saved, then loads the tensors

An adapter file stores, next to the LoRA tensors, every LoRA layer's settings (its type, ``r``,
``lora_alpha``, ``enable_lora``, the shape of the pretrained weight) and a fingerprint of the base
model's weights, so loading it into another base model, or into a model injected with other
settings, raises a ``ValueError`` that says what differs instead of silently computing garbage.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .inject import BASE_SHELL, inject, lora_layers
from .utils import lora_parameter_names, lora_state_dict, mark_only_lora_as_trainable

ADAPTER_FORMAT = "lora_basics.adapter"
ADAPTER_VERSION = 1


def adapter_settings(model: nn.Module) -> dict[str, dict]:
    """The settings of every LoRA layer: what an adapter file must agree with to be loaded."""
    settings = {}
    for name, layer in lora_layers(model).items():
        shell = getattr(layer, BASE_SHELL, None)
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
            inject(
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
