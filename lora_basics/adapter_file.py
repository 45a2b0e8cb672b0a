"""Adapter files: save only the LoRA tensors of a model, and load them back safely.

    save_adapter(model, "task_a.pt")                  # the LoRA tensors + their settings (a few KB)
    model = load_adapter(fresh_base, "task_a.pt")     # injects LoRA as saved, then loads the tensors

An adapter file stores, next to the LoRA tensors, every LoRA layer's settings (its type, ``r``,
``lora_alpha``, ``enable_lora``, the shape of the pretrained weight, the variant: ``use_rslora``,
``use_dora``, ``init_lora_weights``, ``quantize_base``) and a fingerprint of the base
model's weights (and their dtypes), so loading it into another base model, or into a model injected
with other settings, raises a ``ValueError`` that says what differs instead of silently computing
garbage.

An adapter file is untrusted input. :func:`load_adapter` reads it with ``weights_only=True``, refuses
a malformed file with a ``ValueError`` naming the file and the problem, loads LoRA tensors only (an
adapter can never overwrite a pretrained weight), and is all or nothing: if anything fails, the
model is left exactly as it was (no half-injected LoRA, no half-switched adapter).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .inject import BASE_SHELL, build_lora_layer, lora_layers, replace_module
from .lora_layer import LoRALayer
from .lora_linear import LoRALinear
from .merge import update_parameters, weight_without_update
from .qlora import QUANT_FORMATS, QLoRALinear
from .utils import lora_parameter_names, lora_state_dict, mark_only_lora_as_trainable

ADAPTER_FORMAT = "lora_basics.adapter"
#: Version 2 adds the base tensors' dtypes, version 3 the variants of LoRA below; older files still load.
ADAPTER_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
LAYER_TYPES = ("Linear", "MergedLinear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "LoRALinear", "QLoRALinear")
#: Layer settings that version 3 added, with the value a file of version 1 or 2 means.
VARIANT_DEFAULTS = {"use_rslora": False, "use_dora": False, "init_lora_weights": True, "quantize_base": None}


def _layer_settings(layer: nn.Module) -> dict:
    shell = getattr(layer, BASE_SHELL, None)
    entry = {"type": type(layer).__name__, "base_type": type(shell).__name__ if shell is not None else None}
    if isinstance(layer, LoRALinear):  # the textbook layer: no merging, no fan_in_fan_out
        return (
            entry
            | {
                "weight_shape": list(layer.weight.shape),
                "r": layer.r,
                "lora_alpha": float(layer.scaling * layer.r),
                "lora_dropout": float(layer.dropout.p),
                "merge_weights": False,
                "fan_in_fan_out": False,
                "enable_lora": None,
            }
            | VARIANT_DEFAULTS
        )
    return entry | {
        "weight_shape": list(layer.frozen_weight.shape),
        "r": layer.r,
        "lora_alpha": float(layer.lora_alpha),
        "lora_dropout": float(getattr(layer.lora_dropout, "p", 0.0)),
        "merge_weights": layer.merge_weights,
        "fan_in_fan_out": bool(getattr(layer, "fan_in_fan_out", False)),
        "enable_lora": list(getattr(layer, "enable_lora", [])) or None,
        "use_rslora": layer.use_rslora,
        "use_dora": layer.use_dora,
        "init_lora_weights": layer.init_lora_weights,
        "quantize_base": layer.quant_format if isinstance(layer, QLoRALinear) else None,
    }


def adapter_settings(model: nn.Module) -> dict[str, dict]:
    """The settings of every LoRA layer: what an adapter file must agree with to be loaded."""
    return {name: _layer_settings(layer) for name, layer in lora_layers(model).items()}


def _base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The pretrained (non-LoRA) floating-point tensors of ``model``, unmerged."""
    state = model.state_dict()
    for name, layer in lora_layers(model).items():
        if isinstance(layer, LoRALayer) and layer.merged:  # a state dict in eval mode holds W0 + ΔW
            state[f"{name}.{layer.frozen_weight_name}" if name else layer.frozen_weight_name] = weight_without_update(
                layer
            )
    lora = set(lora_parameter_names(model))
    return {k: v for k, v in state.items() if k not in lora and v.is_floating_point()}


def base_fingerprint(model: nn.Module) -> dict[str, list[float]]:
    """Three numbers per pretrained tensor: its size, its RMS and its projection on a fixed random direction.

    Robust to the rounding of merging and unmerging (one unit in the last place of the weight's
    dtype), but any real change of the weights (another pretraining run, a fine-tuned base) moves
    them. Compared by :func:`load_adapter`.
    """
    fingerprint = {}
    for key, tensor in sorted(_base_state(model).items()):
        values = tensor.detach().cpu().double().flatten()
        direction = torch.randn(values.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        fingerprint[key] = [float(values.numel()), values.square().mean().sqrt().item(), (values @ direction).item()]
    return fingerprint


def base_dtypes(model: nn.Module) -> dict[str, str]:
    """``{key: "torch.bfloat16", ...}``: the dtype of every pretrained tensor."""
    return {key: str(tensor.dtype) for key, tensor in sorted(_base_state(model).items())}


def _tolerance(dtype_name: str | None) -> float:
    """Relative tolerance of the fingerprint: 1e-4, or two rounding steps of a coarser dtype (bf16: 1.6e-2).

    Merging rounds ``W0 + ΔW`` to the weight's dtype, so a base saved merged (or unmerged after
    ``eval()``) differs from the pretrained file by up to one unit in the last place.
    """
    dtype = getattr(torch, dtype_name.removeprefix("torch."), None) if dtype_name else None
    eps = torch.finfo(dtype).eps if isinstance(dtype, torch.dtype) and dtype.is_floating_point else 0.0
    return max(1e-4, 2 * eps)


def _base_differences(payload: dict, model: nn.Module) -> tuple[dict[tuple[str, str], list[str]], list[str]]:
    """``(dtype changes, value changes)`` between the adapter's base and ``model``'s pretrained tensors.

    Dtype changes: ``{(dtype in the model, dtype in the adapter's base): [keys]}``.
    """
    saved, current = payload["base_fingerprint"], base_fingerprint(model)
    saved_dtypes, current_dtypes = payload.get("base_dtypes", {}), base_dtypes(model)
    dtypes: dict[tuple[str, str], list[str]] = {}
    values = []
    for key in sorted(set(saved) | set(current)):
        if key not in current or key not in saved:
            values.append(f"{key!r} is missing from {'the model' if key not in current else 'the adapter base'}")
            continue
        if key in saved_dtypes and saved_dtypes[key] != current_dtypes[key]:
            dtypes.setdefault((current_dtypes[key], saved_dtypes[key]), []).append(key)
            continue
        (n_a, rms_a, proj_a), (n_b, rms_b, proj_b) = saved[key], current[key]
        rtol = _tolerance(saved_dtypes.get(key))
        # A projection of n values of RMS s on a unit-variance direction is ~ s * sqrt(n): compare on that scale.
        if (
            n_a != n_b
            or abs(rms_a - rms_b) > rtol * rms_a + 1e-12
            or abs(proj_a - proj_b) > rtol * rms_a * math.sqrt(n_a) + 1e-12
        ):
            values.append(f"{key!r} holds other values")
    return dtypes, values


def _listed(problems: list[str], most: int = 4) -> str:
    more = f"; and {len(problems) - most} more" if len(problems) > most else ""
    return "; ".join(problems[:most]) + more


def _check_base(payload: dict, model: nn.Module) -> None:
    dtypes, values = _base_differences(payload, model)
    if dtypes:
        changes = [
            f"{len(keys)} tensor(s) are {mine} in the model, {theirs} in the adapter's base (e.g. {keys[0]!r})"
            for (mine, theirs), keys in sorted(dtypes.items())
        ]
        raise ValueError(
            f"the base model has another dtype than the adapter's base: {_listed(changes)}. Cast the model to "
            "the adapter's dtype first (model.to(dtype)), or pass check_base=False to load it anyway"
        )
    if values:
        raise ValueError(
            f"wrong base model: the adapter was trained on other pretrained weights ({_listed(values)}). "
            "Pass check_base=False to load it anyway."
        )


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
        "base_dtypes": base_dtypes(model),
        "tensors": {k: v.detach().cpu().clone() for k, v in lora_state_dict(model).items()},
    }
    torch.save(payload, path)


# -- reading an untrusted file -------------------------------------------------------------------

_FIELDS = {
    "type": lambda v: v in LAYER_TYPES,
    "base_type": lambda v: v is None or isinstance(v, str),
    "weight_shape": lambda v: isinstance(v, list) and all(isinstance(n, int) and n >= 0 for n in v),
    "r": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "lora_alpha": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v < math.inf,
    "lora_dropout": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 <= v < 1,
    "merge_weights": lambda v: isinstance(v, bool),
    "fan_in_fan_out": lambda v: isinstance(v, bool),
    "enable_lora": lambda v: v is None or (isinstance(v, list) and len(v) > 0 and all(isinstance(f, bool) for f in v)),
    "use_rslora": lambda v: isinstance(v, bool),
    "use_dora": lambda v: isinstance(v, bool),
    "init_lora_weights": lambda v: v is True or v == "pissa",
    "quantize_base": lambda v: v is None or v in QUANT_FORMATS,
}


def _malformed(payload: object) -> str | None:
    """What is wrong with the structure of an adapter payload (None if nothing)."""
    if not isinstance(payload, dict):
        return f"it holds a {type(payload).__name__}, not an adapter dict"
    if payload.get("format") != ADAPTER_FORMAT:
        return "it is not a lora_basics adapter (no 'format': 'lora_basics.adapter'; save one with save_adapter)"
    if payload.get("version") not in READABLE_VERSIONS:
        return (
            f"unknown adapter version {payload.get('version')!r} (this lora_basics reads versions {READABLE_VERSIONS})"
        )
    layers = payload.get("layers")
    if not isinstance(layers, dict) or not layers:
        return f"'layers' must be a non-empty dict of layer settings, got {type(layers).__name__}"
    for name, entry in layers.items():
        if not isinstance(name, str) or not isinstance(entry, dict):
            return f"'layers' must map module names to settings dicts, got {name!r}: {type(entry).__name__}"
        if payload["version"] < 3:  # written before the variants existed: plain LoRA
            entry = VARIANT_DEFAULTS | entry
        wrong = [field for field, valid in _FIELDS.items() if field not in entry or not valid(entry[field])]
        if wrong:
            return f"the settings of layer {name!r} have missing or invalid {wrong}"
    tensors = payload.get("tensors")
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        return "'tensors' must be a dict of names to tensors"
    fingerprint = payload.get("base_fingerprint")
    if not isinstance(fingerprint, dict) or not all(
        isinstance(v, list) and len(v) == 3 and all(isinstance(x, numbers.Real) for x in v)
        for v in fingerprint.values()
    ):
        return "'base_fingerprint' must be a dict of three numbers per tensor"
    dtypes = payload.get("base_dtypes", {})
    if not isinstance(dtypes, dict) or not all(isinstance(v, str) for v in dtypes.values()):
        return "'base_dtypes' must be a dict of dtype names"
    return None


def read_adapter(path: str | Path) -> dict:
    """The payload of the adapter file ``path``, checked. A malformed file raises ``ValueError`` naming it."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:  # no such file, a directory, no permission: not a question of the file's content
        raise
    except Exception as error:  # text, empty, truncated, not torch.save's format, unsafe pickle ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"{path} is not a readable adapter file: torch.load failed ({type(error).__name__}: {reason[:200]})"
        ) from error
    problem = _malformed(payload)
    if problem:
        raise ValueError(f"{path} is not a valid lora_basics adapter: {problem}")
    payload["layers"] = {name: VARIANT_DEFAULTS | entry for name, entry in payload["layers"].items()}
    return payload


# -- loading -------------------------------------------------------------------------------------


def _lora_snapshot(layer: nn.Module) -> Callable[[], None]:
    """A function that puts ``layer``'s LoRA state back as it is now: factors, merged weight, merge record."""
    if isinstance(layer, LoRALinear):
        tensors, record = [layer.A.weight, layer.B.weight], None
    else:
        tensors = update_parameters(layer) + ([layer.frozen_weight] if layer.merged else [])
        record = (layer.merged, layer.merged_factors)
    copies = [tensor.detach().clone() for tensor in tensors]

    def restore() -> None:
        for tensor, copy in zip(tensors, copies, strict=True):
            tensor.copy_(copy)
        if record is not None:
            layer.merged, layer.merged_factors = record

    return restore


@contextmanager
def _all_or_nothing(model: nn.Module) -> Iterator[None]:
    """Put ``model`` back exactly as it was if the block raises: its modules (LoRA layers injected by the
    block are taken out again), which parameters train, and its LoRA layers' factors and merged weights."""
    children = [(parent, name, child) for parent in model.modules() for name, child in parent._modules.items()]
    trains = [(param, param.requires_grad) for param in model.parameters()]
    restores = [_lora_snapshot(layer) for layer in lora_layers(model).values()]
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for parent, name, child in children:
                parent._modules[name] = child
            for param, flag in trains:
                param.requires_grad_(flag)
            for restore in restores:
                restore()
        raise


def _check_base_modules(model: nn.Module, saved: dict[str, dict]) -> None:
    """The modules the adapter adapts exist in ``model``, with the saved type and weight shape."""
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
                f"{name} has a weight of shape {list(module.weight.shape)}, the adapter's base had {entry['weight_shape']}"
            )
    if problems:
        raise ValueError("wrong base model for this adapter: " + "; ".join(problems))


def _settings_differences(saved: dict[str, dict], current: dict[str, dict]) -> list[str]:
    found = []
    for name in sorted(set(saved) - set(current)):
        found.append(f"the adapter has a LoRA layer {name!r} that the model does not have")
    for name in sorted(set(current) - set(saved)):
        found.append(f"the model has a LoRA layer {name!r} that the adapter does not have")
    for name in sorted(set(saved) & set(current)):
        for field in ("type", "weight_shape", "r", "lora_alpha", "fan_in_fan_out", "enable_lora", *VARIANT_DEFAULTS):
            if saved[name][field] != current[name][field]:
                found.append(
                    f"{name}: {field} is {saved[name][field]} in the adapter, {current[name][field]} in the model"
                )
    return found


def _check_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """The adapter's tensors are exactly the model's LoRA parameters, of the right shapes, finite."""
    params = dict(model.named_parameters())
    lora = lora_parameter_names(model)
    foreign = sorted(set(tensors) - set(lora))
    if foreign:
        kind = "pretrained tensors" if any(key in params for key in foreign) else "tensors the model has no place for"
        raise ValueError(
            f"{path} holds {kind} that are not LoRA parameters: {foreign[:5]}; an adapter may only hold LoRA "
            "factors, it never overwrites the model's own weights"
        )
    missing = sorted(set(lora) - set(tensors))
    if missing:
        raise ValueError(f"{path}: the adapter lacks the LoRA tensors {missing[:5]}")
    for key, tensor in tensors.items():
        if tensor.shape != params[key].shape:
            raise ValueError(
                f"{path}: tensor {key!r} has shape {tuple(tensor.shape)}, the model's is {tuple(params[key].shape)}"
            )
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: tensor {key!r} is not a finite floating-point tensor")


def _refuse_pissa_on_a_plain_base(saved: dict[str, dict], path: str | Path) -> None:
    """A PiSSA adapter needs the residual weights it was trained on; a model without LoRA layers has ``W0``."""
    pissa = [name for name, entry in saved.items() if entry["init_lora_weights"] == "pissa"]
    if pissa:
        raise ValueError(
            f"{path} was trained on PiSSA-initialised layers ({_listed(pissa, 3)}): their frozen weights are the "
            "residuals W0 - s B0 A0, which an adapter file does not hold, so it cannot restore the model on an "
            "unmodified base. Load it into the model whose layers hold those residuals (save and load that "
            "model's whole state_dict), or share the merged model (merge_and_export)."
        )


def load_adapter(model: nn.Module, path: str | Path, check_base: bool = True) -> nn.Module:
    """Load an adapter saved by :func:`save_adapter` into ``model`` (changed in place and returned).

    - ``model`` without LoRA layers (a fresh base): LoRA is injected exactly as saved (rsLoRA, DoRA
      and a 4-bit base included), then loaded. An adapter trained on PiSSA-initialised layers is
      refused here: its frozen weights were residuals, not the base's (see :mod:`lora_basics.pissa`).
    - ``model`` with LoRA layers: their settings must equal the saved ones; the LoRA tensors are
      replaced (switching adapters on one frozen base).

    Raises ``ValueError`` naming what differs when the file is malformed or not an adapter, when the
    model's modules or weight shapes differ from the adapter's base (wrong base model), when the LoRA
    settings differ, when the adapter holds anything but LoRA tensors, or (``check_base=True``)
    when the pretrained weights, or their dtype, are not the ones the adapter was trained on. On any
    error the model is left exactly as it was.
    """
    payload = read_adapter(path)
    saved = payload["layers"]
    with _all_or_nothing(model):
        if not lora_layers(model):
            _check_base_modules(model, saved)
            _refuse_pissa_on_a_plain_base(saved, path)
            layers = {
                name: build_lora_layer(
                    model,
                    name,
                    layer_type=entry["type"],
                    r=entry["r"],
                    lora_alpha=entry["lora_alpha"],
                    lora_dropout=entry["lora_dropout"],
                    merge_weights=entry["merge_weights"],
                    enable_lora=entry["enable_lora"],
                    use_rslora=entry["use_rslora"],
                    use_dora=entry["use_dora"],
                    quantize_base=entry["quantize_base"],
                )
                for name, entry in saved.items()
            }
            for name, layer in layers.items():
                replace_module(model, name, layer)
            mark_only_lora_as_trainable(model)
        problems = _settings_differences(saved, adapter_settings(model))
        if problems:
            raise ValueError("the adapter's LoRA settings differ from the model's: " + "; ".join(problems))
        if check_base:
            _check_base(payload, model)
        _check_tensors(model, payload["tensors"], path)
        model.load_state_dict(payload["tensors"], strict=False)
    return model
