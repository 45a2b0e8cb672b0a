"""From scratch to PEFT: write this library's LoRA layers as a Hugging Face PEFT adapter, and read one back.

    to_peft(model, "my_adapter/")        # adapter_config.json + adapter_model.safetensors
    #   peft.PeftModel.from_pretrained(base, "my_adapter/") computes what `model` computes
    from_peft(base, "peft_adapter/")     # a PEFT LoRA adapter into lora_basics layers

The two libraries store the same numbers under other names:

==========================================  ===================================================================
lora_basics                                 PEFT (``adapter_model.safetensors``, prefix ``base_model.model.``)
==========================================  ===================================================================
``Linear.lora_A`` ``(r, in)``               ``<name>.lora_A.weight`` ``(r, in)``
``Linear.lora_B`` ``(out, r)``              ``<name>.lora_B.weight`` ``(out, r)``
``Embedding.lora_A`` ``(r, num)``           ``<name>.lora_embedding_A`` ``(r, num)``
``Embedding.lora_B`` ``(dim, r)``           ``<name>.lora_embedding_B`` ``(dim, r)``
``scaling = lora_alpha / r``                the same, from ``lora_alpha`` and ``r`` (or ``alpha_pattern``/``rank_pattern``)
``use_rslora`` (``lora_alpha / sqrt(r)``)   ``use_rslora``
``Linear.lora_magnitude`` ``(out,)`` (DoRA) ``<name>.lora_magnitude_vector`` ``(out,)``, with ``use_dora``
``init_lora_weights="pissa"`` (PiSSA)       ``init_lora_weights: "pissa"``: loading redoes the split of ``W0``
``fan_in_fan_out`` (GPT-2 ``Conv1D``)       ``fan_in_fan_out`` (PEFT sets it itself for ``Conv1D`` targets)
``QLoRALinear`` (NF4 base)                  a plain LoRA adapter (quantizing the base is the loader's business)
==========================================  ===================================================================

PiSSA: the layers' frozen weights are residuals ``W0 - s B0 A0``. A PEFT adapter whose config says
``init_lora_weights: "pissa"`` is loaded by PEFT (and by :func:`from_peft`) by redoing that split on the
base it is given, then loading the trained factors: on the original base, the model comes back.

A :class:`MergedLinear` (LoRA on some slices of a fused projection) has no PEFT counterpart, but it *is*
a LoRA of rank ``r * k`` on the whole fused layer: ``A`` is its stacked ``lora_A`` ``(r*k, in)`` and ``B``
is the block-diagonal ``full_lora_B()`` ``(out, r*k)``, zero on the disabled slices. Its scale stays
``lora_alpha / r``, so it is written with ``rank_pattern = r*k`` and ``alpha_pattern = lora_alpha*k``.
Read back, it becomes a plain :class:`Linear` of rank ``r*k`` computing the same thing.

PEFT keeps ``use_rslora``, ``use_dora`` and ``init_lora_weights`` once per adapter: a model mixing them is
refused, as are conv layers: PEFT factors a kernel differently (``A`` a convolution, ``B`` a 1x1
convolution), so loralib's reshaped ``B @ A`` has no exact PEFT form.

The ``.safetensors`` format is simple enough to write here (8 bytes of header length, a JSON header of
names, dtypes, shapes and byte offsets, then the raw little-endian bytes), which keeps this library
free of dependencies beyond torch; the tests check that the ``safetensors`` package and PEFT read it.
"""

from __future__ import annotations

import ctypes
import json
import math
import re
import struct
from pathlib import Path

import torch
from torch import nn

from .conv import ConvLoRA
from .embedding import Embedding
from .inject import build_lora_layer, lora_layers, replace_module
from .lora_linear import LoRALinear
from .merged_linear import MergedLinear
from .utils import mark_only_lora_as_trainable

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


# -- safetensors, by hand ---------------------------------------------------------------------------


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write ``tensors`` in the safetensors format (readable by ``safetensors.torch.load_file``)."""
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    chunks, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        if tensor.dtype not in _DTYPES:
            raise TypeError(f"tensor {name!r} has dtype {tensor.dtype}; safetensors here takes {list(_DTYPES)}")
        size = tensor.numel() * tensor.element_size()
        chunks.append(ctypes.string_at(tensor.data_ptr(), size) if size else b"")  # the raw bytes (little-endian CPU)
        header[name] = {
            "dtype": _DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # pad the header so the data starts 8-byte aligned, as the format advises
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file into CPU tensors; a malformed file raises ``ValueError`` naming it."""
    data = Path(path).read_bytes()
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        start = 8 + length
        dtypes = {code: dtype for dtype, code in _DTYPES.items()}
        tensors = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            if not 0 <= begin <= end <= len(data) - start:
                raise ValueError(f"tensor {name!r} points outside the file")
            raw = bytearray(data[start + begin : start + end])
            tensors[name] = torch.frombuffer(raw, dtype=dtypes[entry["dtype"]]).reshape(entry["shape"]).clone()
    except (struct.error, json.JSONDecodeError, KeyError, TypeError, RuntimeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a readable safetensors file ({type(error).__name__}: {error})") from None
    return tensors


# -- lora_basics -> PEFT ----------------------------------------------------------------------------


def _peft_factors(layer) -> dict[str, torch.Tensor]:
    """The layer's update as PEFT's tensors (names relative to the module)."""
    if isinstance(layer, LoRALinear):  # the textbook layer keeps A and B as nn.Linear weights
        return {"lora_A.weight": layer.A.weight, "lora_B.weight": layer.B.weight}
    if isinstance(layer, Embedding):
        return {"lora_embedding_A": layer.lora_A, "lora_embedding_B": layer.lora_B}
    # MergedLinear's B is the block-diagonal (out, r*k) full_lora_B().
    B = layer.full_lora_B() if isinstance(layer, MergedLinear) else layer.lora_B
    factors = {"lora_A.weight": layer.lora_A, "lora_B.weight": B}
    if layer.use_dora:
        factors["lora_magnitude_vector"] = layer.lora_magnitude
    return factors


def _one_setting(layers: dict[str, nn.Module], name: str, default) -> object:
    """The value of setting ``name`` shared by all ``layers`` (PEFT has one per adapter), else ``ValueError``."""
    values = {getattr(layer, name, default) for layer in layers.values()}
    if len(values) > 1:
        raise ValueError(f"PEFT has one {name} per adapter, the layers use {sorted(values, key=str)}")
    return values.pop()


def _dropout(layer) -> nn.Module:
    return layer.dropout if isinstance(layer, LoRALinear) else layer.lora_dropout


def to_peft(model: nn.Module, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write the LoRA layers of ``model`` as a PEFT LoRA adapter in ``directory`` (created if needed).

    ``peft.PeftModel.from_pretrained(base, directory)`` on the same base model then computes what
    ``model`` computes (for PiSSA layers: the original base; PEFT redoes the split). Raises
    ``ValueError`` for what PEFT cannot express (conv layers; layers that differ in dropout,
    ``use_rslora``, ``use_dora`` or ``init_lora_weights``).
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers to export; call add_lora first")
    convs = [name for name, layer in layers.items() if isinstance(layer, ConvLoRA)]
    if convs:
        raise ValueError(f"conv LoRA layers {convs} have no exact PEFT form (PEFT factors kernels differently)")
    dropouts = {float(getattr(_dropout(layer), "p", 0.0)) for layer in layers.values()}
    if len(dropouts) > 1:
        raise ValueError(f"PEFT has one lora_dropout per adapter, the layers use {sorted(dropouts)}")
    use_rslora = _one_setting(layers, "use_rslora", False)  # the textbook LoRALinear has no variants
    use_dora = _one_setting(layers, "use_dora", False)
    init_lora_weights = _one_setting(layers, "init_lora_weights", True)
    ranks, alphas, tensors = {}, {}, {}
    for name, layer in layers.items():
        k = sum(layer.enable_lora) if isinstance(layer, MergedLinear) else 1
        ranks[name] = layer.r * k
        # The alpha that gives the same scale at rank r * k: scaling * r (or * sqrt(r) with rsLoRA).
        alphas[name] = float(layer.scaling * (math.sqrt(ranks[name]) if use_rslora else ranks[name]))
        for key, tensor in _peft_factors(layer).items():
            tensors[f"{PREFIX}{name}.{key}"] = tensor.detach()
    r = max(set(ranks.values()), key=list(ranks.values()).count)  # the most common rank; the rest as patterns
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropouts.pop(),
        "target_modules": sorted(layers),
        "rank_pattern": {name: value for name, value in ranks.items() if value != r},
        "alpha_pattern": {name: value for name, value in alphas.items() if value != alpha},
        "fan_in_fan_out": any(getattr(layer, "fan_in_fan_out", False) for layer in layers.values()),
        "bias": "none",
        "use_rslora": use_rslora,
        "use_dora": use_dora,
        "init_lora_weights": init_lora_weights,
        "modules_to_save": None,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_safetensors(tensors, directory / WEIGHTS_FILE)
    return directory


# -- PEFT -> lora_basics ----------------------------------------------------------------------------

#: PEFT settings this library reproduces exactly, with the value it must have (anything else is refused).
_MUST_BE = {
    "bias": "none",
    "modules_to_save": None,
    "layers_to_transform": None,
    "layers_pattern": None,
    "target_parameters": None,
}


#: PEFT's ``init_lora_weights`` values a trained adapter can be loaded with: those that leave the base
#: weight alone, and PiSSA (whose split of ``W0`` is redone exactly, as PEFT does).
_INITS = {True: True, False: True, "gaussian": True, "pissa": "pissa"}


def _pattern_value(name: str, patterns: dict, default):
    """PEFT's rank_pattern/alpha_pattern look-up: a key matches a module named ``key`` or ``...(.)key``."""
    for key, value in patterns.items():
        if name == key or re.search(rf"(^|\.){key}$", name):
            return value
    return default


def _targets(model: nn.Module, target_modules) -> list[str]:
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(target_modules, str):  # PEFT: a string is a regular expression over the full name
        return [name for name in names if re.fullmatch(target_modules, name)]
    targets = set(target_modules or [])
    return [name for name in names if name in targets or any(name.endswith("." + t) for t in targets)]


def from_peft(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load a PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``) into ``model``.

    ``model`` is the base model the adapter was trained on, without LoRA layers; each target becomes
    the matching ``lora_basics`` layer (``Linear``, ``fan_in_fan_out`` for GPT-2's ``Conv1D``,
    ``Embedding``) holding PEFT's factors (and DoRA's magnitudes, with rsLoRA's scale, after PiSSA's
    split of the weight when the config says so), so ``model`` computes what the PEFT model computes.
    Raises ``ValueError``, leaving ``model`` unchanged, for settings PEFT has and this library does not
    (trained biases, extra saved modules, DoRA on an embedding, other initialisations that change the
    base), a tensor the adapter lacks or has too many, and a base tensor in the adapter that differs
    from the model's.
    """
    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{directory} holds a {config.get('peft_type')!r} adapter; only LORA is supported")
    unsupported = {key: config[key] for key, value in _MUST_BE.items() if config.get(key, value) not in (value, [], {})}
    init = config.get("init_lora_weights", True)
    if not isinstance(init, (bool, str)) or init not in _INITS:
        unsupported["init_lora_weights"] = init
    if unsupported:
        raise ValueError(f"{directory}: PEFT settings not supported here: {unsupported}")
    if lora_layers(model):
        raise ValueError("model already has LoRA layers; from_peft loads into a plain base model")
    tensors = load_safetensors(directory / WEIGHTS_FILE)
    targets = _targets(model, config.get("target_modules"))
    if not targets:
        raise ValueError(f"{directory}: target_modules {config.get('target_modules')!r} match no module of the model")
    expected, state = {}, model.state_dict()
    for name in targets:
        module = model.get_submodule(name)
        kind = ("lora_embedding_A", "lora_embedding_B") if isinstance(module, nn.Embedding) else None
        keys = kind or ("lora_A.weight", "lora_B.weight")
        attrs = ("lora_A", "lora_B")
        if config.get("use_dora"):
            keys, attrs = (*keys, "lora_magnitude_vector"), (*attrs, "lora_magnitude")
        expected.update({f"{PREFIX}{name}.{key}": (name, attr) for key, attr in zip(keys, attrs, strict=True)})
    # Base tensors saved along (PEFT saves embedding layers it targets): accepted only if they equal ours.
    for key in sorted(set(tensors) - set(expected)):
        base_key = key.removeprefix(PREFIX).replace(".base_layer.", ".")
        if base_key not in state or not torch.equal(tensors[key].to(state[base_key].dtype), state[base_key]):
            raise ValueError(f"{directory}: tensor {key!r} is not a LoRA factor of a target and not equal to the base")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"{directory}: the adapter lacks {missing}")
    originals = {name: model.get_submodule(name) for name in targets}
    try:
        for name in targets:
            r = int(_pattern_value(name, config.get("rank_pattern") or {}, config["r"]))
            alpha = float(_pattern_value(name, config.get("alpha_pattern") or {}, config["lora_alpha"]))
            dropout = float(config.get("lora_dropout", 0.0))
            layer = build_lora_layer(
                model,
                name,
                r=r,
                lora_alpha=alpha,
                lora_dropout=dropout,
                use_rslora=bool(config.get("use_rslora", False)),
                use_dora=bool(config.get("use_dora", False)),
                init_lora_weights=_INITS[init],
            )
            replace_module(model, name, layer)
        ours = {f"{name}.{attr}": tensors[key] for key, (name, attr) in expected.items()}
        for key, value in ours.items():
            needed = model.get_parameter(key).shape
            if value.shape != needed:
                raise ValueError(f"{directory}: {key} has shape {tuple(value.shape)}, the model needs {tuple(needed)}")
        # Through load_state_dict: a layer injected into an eval-mode model is merged, and loading
        # unmerges, copies and merges again (setting the factors directly would not reach the weight).
        model.load_state_dict(ours, strict=False)
    except Exception:
        for name, module in originals.items():  # all or nothing: put every original module back
            replace_module(model, name, module)
        raise
    mark_only_lora_as_trainable(model)
    return model
