"""`add_lora`: put LoRA into an existing model by module name, keeping its pretrained weights.

    model = add_lora(model, ["c_attn"], r=8, lora_alpha=16, enable_lora={"c_attn": [True, False, True]})
    print(trainable_summary(model))   # trainable params: 12,288 || all params: ... || trainable%: ...

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

Variants of LoRA, each off by default:

- ``use_rslora=True``: every layer scales by ``lora_alpha / sqrt(r)`` (rank-stabilised LoRA).
- ``use_dora=True``: DoRA (:mod:`lora_basics.dora`) on ``nn.Linear`` and ``Conv1D`` targets; any other
  target is refused.
- ``init_lora_weights="pissa"``: PiSSA (:func:`~lora_basics.init_pissa`) on every ``Linear`` target.
  The frozen weights become the residuals ``W0 - s B A``: the model still computes what it computed,
  but an adapter file alone no longer restores it on the original base (``load_adapter`` refuses).
- ``quantize_base="nf4"`` (or ``"nf4-dq"``, with double quantization): QLoRA. ``nn.Linear`` and ``Conv1D``
  targets become :class:`~lora_basics.QLoRALinear` layers whose frozen weight is stored in 4-bit NF4 and
  computed in the dtype the module had; they never merge (``merge_weights`` defaults to False then).

``add_lora`` never silently changes what the model computes: a module that the LoRA layer could not
reproduce exactly is refused up front, with its name and the reason (a subclass with its own
``forward``, forward hooks such as pruning, a parametrized weight, an embedding with ``max_norm``,
``nn.MultiheadAttention``'s ``out_proj``, whose ``forward`` the attention never calls). Every new layer
is built before the first one is put in, so a refused target leaves the model unchanged.

Defaults. ``add_lora`` uses ``r=8, lora_alpha=16`` (scale 2, a common fine-tuning recipe) because
it is the model-level entry point; the layers themselves keep loralib's ``r=0, lora_alpha=1`` so
that code written for loralib computes the same thing. Saving, loading and exporting adapters are
in :mod:`lora_basics.adapter_file` and :mod:`lora_basics.export`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from .config import LoRAConfig
from .conv import Conv1d, Conv2d, Conv3d
from .embedding import Embedding
from .linear import Linear
from .lora_layer import LoRALayer
from .lora_linear import LoRALinear
from .merged_linear import MergedLinear
from .pissa import init_pissa
from .qlora import QUANT_FORMATS, QLoRALinear
from .utils import check_bias_mode, lora_parameter_names, mark_only_lora_as_trainable
from .validation import validate_flag, validate_rank

_CONVS = {nn.Conv1d: Conv1d, nn.Conv2d: Conv2d, nn.Conv3d: Conv3d}
#: Attribute of a LoRA layer made by add_lora: the module it replaced, on the meta device.
BASE_SHELL = "_lora_base_shell"


def _is_conv1d_style(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` (ours or Hugging Face's): a linear layer with a 2-D weight stored ``(in, out)``."""
    weight = getattr(module, "weight", None)
    return type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2


def _matches(name: str, pattern: str) -> bool:
    """A target ``pattern`` names a module by its full name or by its last parts: ``"c_attn"``
    matches ``"h.0.attn.c_attn"``, ``"attn.c_proj"`` matches ``"h.0.attn.c_proj"`` but not ``"h.0.mlp.c_proj"``."""
    return name == pattern or name.endswith("." + pattern)


def _why_unsupported(model: nn.Module, name: str, module: nn.Module) -> str | None:
    """Why replacing ``module`` by a LoRA layer would change what the model computes (None if it would not)."""
    if isinstance(module, (LoRALayer, LoRALinear)):
        return f"it is already a LoRA layer ({type(module).__name__}); call add_lora once"
    if not (isinstance(module, (nn.Linear, nn.Embedding)) or _is_conv1d_style(module) or type(module) in _CONVS):
        return None  # not a layer type add_lora adapts: _wrap says so
    parent_name = name.rpartition(".")[0]
    if isinstance(model.get_submodule(parent_name), nn.MultiheadAttention):
        return (
            "nn.MultiheadAttention reads its out_proj.weight directly and never calls out_proj's forward, "
            "so the LoRA update would never run in training (but would be merged in eval mode)"
        )
    if parametrize.is_parametrized(module):
        return "its weight is parametrized (torch.nn.utils.parametrize); the LoRA layer would drop the parametrization"
    hooks = [
        kind
        for kind in ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks")
        if getattr(module, kind, None)
    ]
    if hooks:
        return (
            f"it has hooks ({', '.join(h.strip('_') for h in hooks)}: pruning, weight_norm or your own) that the "
            "LoRA layer would not run"
        )
    if not isinstance(module._parameters.get("weight"), nn.Parameter):
        return "its weight is not a registered nn.Parameter (pruned or computed), so there is no frozen weight to keep"
    for torch_class in (nn.Linear, nn.Embedding):
        if isinstance(module, torch_class) and type(module).forward is not torch_class.forward:
            return (
                f"{type(module).__name__} subclasses nn.{torch_class.__name__} with its own forward, which the "
                "LoRA layer would replace"
            )
    if isinstance(module, nn.Embedding) and module.max_norm is not None:
        return (
            f"it is an nn.Embedding with max_norm={module.max_norm}: torch renormalises the looked-up rows in "
            "place, which the separate LoRA update cannot follow"
        )
    return None


def _wrap(
    module: nn.Module, enable_lora: list[bool] | None, layer_type: str | None, quantize_base: str | None, **lora_kwargs
) -> nn.Module:
    """The LoRA layer replacing the pretrained ``module``, with its weights.

    ``lora_kwargs``: ``r``, ``lora_alpha``, ``lora_dropout``, ``merge_weights``, ``use_rslora``,
    ``use_dora``, as every layer takes them (a layer without DoRA refuses ``use_dora=True``).
    ``layer_type="LoRALinear"`` builds the textbook layer (what an adapter saved from one asks for).
    """
    is_linear = isinstance(module, nn.Linear) or _is_conv1d_style(module)
    if layer_type == "LoRALinear":
        variants = [key for key in ("use_rslora", "use_dora") if lora_kwargs.get(key)]
        if variants or quantize_base is not None:
            raise ValueError(f"the textbook LoRALinear has no {variants or ['quantize_base']}")
        config = LoRAConfig(
            lora_r=lora_kwargs["r"], lora_dropout=lora_kwargs["lora_dropout"], lora_alpha=lora_kwargs["lora_alpha"]
        )
        return LoRALinear.from_linear(module, config)
    if quantize_base is not None:
        if quantize_base not in QUANT_FORMATS:
            raise ValueError(f"quantize_base must be None or one of {QUANT_FORMATS}, got {quantize_base!r}")
        if not is_linear or enable_lora is not None:
            raise TypeError(
                f"quantize_base={quantize_base!r} quantizes linear layers (nn.Linear, GPT-2's Conv1D, without "
                "enable_lora); leave this module out of target_modules or add LoRA to it without quantize_base"
            )
        double_quant = quantize_base == "nf4-dq"
        fan_in_fan_out = not isinstance(module, nn.Linear)
        return QLoRALinear.from_module(module, fan_in_fan_out=fan_in_fan_out, double_quant=double_quant, **lora_kwargs)
    if isinstance(module, nn.Embedding):
        if enable_lora is not None:
            raise ValueError("enable_lora is for fused linear layers, not an nn.Embedding")
        # An embedding's LoRA path has no dropout (its input is a token id), as in loralib.
        lora_kwargs.pop("lora_dropout", None)
        return Embedding.from_module(module, **lora_kwargs)
    if is_linear:
        fan_in_fan_out = not isinstance(module, nn.Linear)
        if enable_lora is None:
            return Linear.from_module(module, fan_in_fan_out=fan_in_fan_out, **lora_kwargs)
        return MergedLinear.from_module(module, fan_in_fan_out=fan_in_fan_out, enable_lora=enable_lora, **lora_kwargs)
    if type(module) in _CONVS:
        if enable_lora is not None:
            raise ValueError(f"enable_lora is for fused linear layers, not an {type(module).__name__}")
        return _CONVS[type(module)].from_module(module, **lora_kwargs)
    raise TypeError("add_lora supports nn.Linear, GPT-2's Conv1D, nn.Embedding and nn.Conv1d/2d/3d")


def _check_init(init_lora_weights: object) -> bool | str:
    """``init_lora_weights`` checked: ``True`` (loralib's initialisation) or ``"pissa"``."""
    if init_lora_weights is True or init_lora_weights == "pissa":
        return init_lora_weights
    raise ValueError(
        f"init_lora_weights must be True (B = 0, A random, as loralib) or 'pissa', got {init_lora_weights!r}"
    )


def build_lora_layer(
    model: nn.Module,
    name: str,
    enable_lora: list[bool] | None = None,
    layer_type: str | None = None,
    init_lora_weights: bool | str = True,
    quantize_base: str | None = None,
    **lora_kwargs,
) -> nn.Module:
    """The LoRA layer that would replace the module ``name`` of ``model`` (``model`` is not changed).

    ``init_lora_weights="pissa"`` initialises it with :func:`~lora_basics.init_pissa`; ``quantize_base``
    (``"nf4"``, ``"nf4-dq"``) builds a :class:`~lora_basics.QLoRALinear`.
    Raises ``TypeError``/``ValueError`` naming the module when it cannot be adapted exactly.
    """
    _check_init(init_lora_weights)
    module = model.get_submodule(name)
    why = _why_unsupported(model, name, module)
    error: type[Exception] = ValueError
    if why is None:
        try:
            layer = _wrap(module, enable_lora, layer_type, quantize_base, **lora_kwargs)
            if init_lora_weights == "pissa":
                init_pissa(layer)  # the layer holds a copy of the weights: the model is not touched
        except (TypeError, ValueError) as problem:
            why, error = str(problem), type(problem)
    if why is not None:
        raise error(f"cannot add LoRA to module {name!r} ({type(module).__name__}): {why}")
    layer.train(module.training)  # an eval-mode model stays in eval mode (merged)
    # Remember what was replaced, as a storage-free copy on the meta device: merge_and_export
    # rebuilds the original module type from it. Set with object.__setattr__ so it is *not*
    # registered as a submodule (it must not show up in named_modules() or state_dict()).
    object.__setattr__(layer, BASE_SHELL, copy.deepcopy(module).to("meta"))
    return layer


def replace_module(model: nn.Module, name: str, layer: nn.Module) -> None:
    """Put ``layer`` where the submodule ``name`` of ``model`` was."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: layer}`` of every LoRA layer in ``model`` that carries an update (``r > 0``).

    The loralib-style layers (:class:`LoRALayer`) and the textbook :class:`LoRALinear`.
    """
    return {
        name: m
        for name, m in model.named_modules()
        if (isinstance(m, LoRALayer) and m.has_lora) or isinstance(m, LoRALinear)
    }


def _target_names(model: nn.Module, target_modules: object) -> list[str]:
    """``target_modules`` checked: a non-empty list (or tuple) of strings."""
    if isinstance(target_modules, str):
        raise TypeError(f"target_modules must be a list of names, got the string {target_modules!r}")
    if not isinstance(target_modules, (list, tuple)):
        raise TypeError(
            f"target_modules must be a list of names such as ['c_attn'], got a {type(target_modules).__name__}"
        )
    if not target_modules:
        raise ValueError(
            "target_modules is empty: name at least one module (e.g. ['c_attn']); otherwise add_lora "
            "would adapt nothing and only freeze the whole model"
        )
    wrong = [t for t in target_modules if not isinstance(t, str)]
    if wrong:
        raise TypeError(f"target_modules must hold module names (strings), got {wrong!r}")
    return list(target_modules)


def add_lora(
    model: nn.Module,
    target_modules: list[str],
    r: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.0,
    enable_lora: dict[str, list[bool]] | None = None,
    merge_weights: bool | None = None,
    bias: str = "none",
    *,
    use_rslora: bool = False,
    use_dora: bool = False,
    init_lora_weights: bool | str = True,
    quantize_base: str | None = None,
) -> nn.Module:
    """Replace every module named by ``target_modules`` with a LoRA layer holding its pretrained weights.

    Args:
        model: the pretrained model, changed in place (and returned).
        target_modules: module names or name endings, e.g. ``["c_attn", "c_proj"]`` (every
            ``...c_attn`` and ``...c_proj``), ``["attn.c_proj"]``, ``["wte"]``. Each must match
            at least one module.
        r, lora_alpha, lora_dropout: the settings of every new layer (``lora_dropout`` does not apply
            to embeddings); ``r >= 1``.
        enable_lora: for fused projections: ``{target: flags}``, e.g. ``{"c_attn": [True, False, True]}``
            puts LoRA on Q and V of GPT-2's fused ``c_attn`` (a :class:`MergedLinear`).
        merge_weights: merge on ``eval()``; default True, and False with ``quantize_base`` (a 4-bit
            weight is never merged, so ``merge_weights=True`` is refused there).
        bias: which biases stay trainable, as in :func:`mark_only_lora_as_trainable`.
        use_rslora: scale by ``lora_alpha / sqrt(r)`` instead of ``lora_alpha / r``; default False.
        use_dora: DoRA on every target (``nn.Linear`` and ``Conv1D`` only); default False.
        init_lora_weights: ``True`` (default: ``B = 0``) or ``"pissa"`` (PiSSA on every target,
            ``nn.Linear`` and ``Conv1D`` only: the frozen weights become residuals, see the module docstring).
        quantize_base: ``None`` (default), ``"nf4"`` or ``"nf4-dq"``: store the frozen weights of the
            targets (``nn.Linear`` and ``Conv1D`` only) in 4-bit NF4, QLoRA's :class:`QLoRALinear`.

    Afterwards only the LoRA parameters (and ``bias`` biases) are trainable. All or nothing: if any
    target cannot be adapted, the error names it and the model is left exactly as it was.
    """
    targets = _target_names(model, target_modules)
    validate_rank(r, allow_zero=False)  # r = 0 would add nothing and freeze everything
    check_bias_mode(bias)
    _check_init(init_lora_weights)
    if quantize_base is not None and quantize_base not in QUANT_FORMATS:
        raise ValueError(f"quantize_base must be None or one of {QUANT_FORMATS}, got {quantize_base!r}")
    if merge_weights is None:
        merge_weights = quantize_base is None
    enable_lora = dict(enable_lora or {})
    unknown = sorted(set(enable_lora) - set(targets))
    if unknown:
        raise ValueError(f"enable_lora has keys {unknown} that are not in target_modules={targets}")
    existing = sorted(lora_layers(model))
    if existing:
        raise ValueError(f"model already has LoRA layers ({existing[:3]}...); add_lora once per base model")
    names = [name for name, _ in model.named_modules() if name]
    chosen: dict[str, list[bool] | None] = {}
    for pattern in targets:
        matched = [name for name in names if _matches(name, pattern)]
        if not matched:
            leaves = [name for name, m in model.named_modules() if name and not list(m.children())]
            raise ValueError(f"target {pattern!r} matches no module; modules are e.g. {leaves[:8]}")
        for name in matched:
            if chosen.get(name) is None:
                chosen[name] = enable_lora.get(pattern)
    settings = dict(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        merge_weights=validate_flag("merge_weights", merge_weights),
        use_rslora=validate_flag("use_rslora", use_rslora),
        use_dora=validate_flag("use_dora", use_dora),
        init_lora_weights=init_lora_weights,
        quantize_base=quantize_base,
    )
    # Build every layer first: a target that fails leaves the model untouched.
    layers = {name: build_lora_layer(model, name, enable_lora=flags, **settings) for name, flags in chosen.items()}
    for name, layer in layers.items():
        replace_module(model, name, layer)
    mark_only_lora_as_trainable(model, bias=bias)
    return model


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``{"trainable": ..., "total": ..., "lora": ...}`` parameter counts of ``model``.

    ``total`` counts the 4-bit weights of :class:`QLoRALinear` layers too (one per weight, as the
    full-precision layer had): they are buffers, not parameters, but the model computes with them.
    """
    lora = set(lora_parameter_names(model))
    params = dict(model.named_parameters())
    quantized = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, QLoRALinear))
    return {
        "trainable": sum(p.numel() for p in params.values() if p.requires_grad),
        "total": sum(p.numel() for p in params.values()) + quantized,
        "lora": sum(p.numel() for n, p in params.items() if n in lora),
    }


def trainable_summary(model: nn.Module) -> str:
    """One line: ``trainable params: 12,288 || all params: 955,808 || trainable%: 1.2856``."""
    counts = parameter_counts(model)
    share = 100 * counts["trainable"] / max(1, counts["total"])
    return f"trainable params: {counts['trainable']:,} || all params: {counts['total']:,} || trainable%: {share:.4f}"
