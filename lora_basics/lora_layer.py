"""`LoRALayer`: what every loralib-style LoRA layer shares.

A LoRA layer keeps the pretrained ``weight`` frozen and learns a low-rank update

    W = W0 + ΔW,    ΔW = scaling * B @ A  (reshaped to the layout of ``weight``),    scaling = lora_alpha / r

(``scaling = lora_alpha / sqrt(r)`` with ``use_rslora=True``, see :class:`LoRALayer`.)

Each concrete layer (``Linear``, ``MergedLinear``, ``Embedding``) subclasses ``LoRALayer`` *and* the
torch layer it extends; ``ConvLoRA`` (``Conv1d/2d/3d``) holds its torch convolution in a child
``conv``, as loralib's does. Each says how to build ``ΔW`` in the layout of its frozen weight
(``delta_weight``) and where that weight is (``frozen_weight_name``). Everything else lives here, once:

- the settings (``r``, ``lora_alpha``, ``scaling``, ``lora_dropout``, ``merge_weights``), checked,
- merge-on-eval: ``eval()`` folds ΔW into the weight, ``train()`` takes it out (the arithmetic, and
  why training mistakes cannot destroy the frozen weight, is in :mod:`lora_basics.merge`),
- state dicts that say whether their weight is merged, so a checkpoint means the same thing whatever
  mode saved it or loads it (below).

State dicts. Like loralib, a layer saves its weight as it holds it: ``W0`` in train mode,
``W0 + ΔW`` in eval mode (merged), so a loralib model in the same mode loads it as is. Unlike
loralib, it also records which one it is, in the state dict's metadata (``_version = 2``: the
layer's entry holds ``lora_merged``). Loading converts the saved weight to this layer's mode: a
checkpoint saved merged loads correctly into a layer in train mode and vice versa, and an adapter
(``lora_A``/``lora_B`` only) loaded into a merged layer is merged in place of the old one. A
checkpoint without that record was written by loralib (or lost its metadata: a dict rebuilt by hand,
a safetensors file); it is read as loralib reads it, the weight as this layer holds its own (merged
in eval mode), unless it has no LoRA factors for the layer: then it is a pretrained weight, ``W0``.

Layers that do not provide ``delta_weight`` (a loralib-style subclass that merges itself in its own
``train()``) are left alone: no merging here, state dicts exactly as torch writes them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import dora
from .merge import (
    Factors,
    add_update,
    factors_changed,
    merge_layer,
    unmerge_layer,
    update_parameters,
    weight_without_update,
)
from .validation import validate_alpha, validate_dropout, validate_flag, validate_rank

#: State-dict names of what an update is built from, in the order of :func:`~lora_basics.merge.update_parameters`.
UPDATE_NAMES = ("lora_A", "lora_B", "lora_magnitude")


@torch.no_grad()
def copy_pretrained(layer: nn.Module, module: nn.Module) -> None:
    """Copy ``module``'s ``weight`` and ``bias`` into the LoRA ``layer`` (same shapes required)."""
    for name in ("weight", "bias"):
        source, target = getattr(module, name, None), getattr(layer, name, None)
        if source is None:
            continue
        if target is None or target.shape != source.shape:
            shape = None if target is None else tuple(target.shape)
            raise ValueError(f"cannot copy {name} of shape {tuple(source.shape)} into a layer expecting {shape}")
        target.copy_(source)


def provides_update(layer: object) -> bool:
    """True for LoRA layers that say how to build their update (they implement ``delta_weight``).

    Only those are merged on ``eval()`` and get merge-aware state dicts. A loralib-style subclass
    that holds its own weight and merges itself in its own ``train()`` does not, and is left alone.
    """
    return getattr(type(layer), "delta_weight", LoRALayer.delta_weight) is not LoRALayer.delta_weight


class LoRALayer:
    """Mixin holding the LoRA settings and the merge-on-eval logic shared by every layer.

    Args:
        r: rank of the update; ``r = 0`` turns LoRA off and the layer is the plain torch layer.
        lora_alpha: the update is scaled by ``lora_alpha / r``, so changing ``r`` does not change
            the size of the update at a fixed learning rate.
        lora_dropout: dropout probability on the input of the LoRA path (train mode only).
        merge_weights: if True, ``eval()`` merges the update into the frozen weight (zero inference
            overhead) and ``train()`` unmerges it.
        use_rslora: rank-stabilised LoRA (Kalajdzievski, 2023; PEFT's ``use_rslora``): scale by
            ``lora_alpha / sqrt(r)`` instead of ``lora_alpha / r``. With ``1/r`` the update of a
            larger rank learns more slowly at the same learning rate; ``1/sqrt(r)`` keeps the size of
            its activations and gradients steady as ``r`` grows, so raising ``r`` keeps helping.
            Default False: loralib's scale.

    Subclasses put ``LoRALayer`` *first* in their bases (``class Linear(LoRALayer, nn.Linear)``) so
    that ``train()`` and ``_load_from_state_dict`` below run before the torch layer's own, call
    ``nn.Module.__init__`` (through their torch layer) before ``LoRALayer.__init__``, and implement
    ``delta_weight()``.
    """

    #: torch's state-dict format version of the layer: 2 records ``lora_merged`` in the metadata.
    _version = 2
    #: Where the frozen weight is, as an attribute path from the layer (``"conv.weight"`` for ConvLoRA).
    frozen_weight_name = "weight"
    #: DoRA (a learned magnitude per output feature): only :class:`Linear` supports it (``use_dora=True``).
    use_dora = False
    #: How the factors started: ``True`` (B or A zero, loralib's) or ``"pissa"`` (:func:`lora_basics.init_pissa`
    #: moved the principal part of the frozen weight into them: the frozen weight is no longer ``W0``).
    init_lora_weights: bool | str = True

    def __init__(self, r: int, lora_alpha: float, lora_dropout: float, merge_weights: bool, use_rslora: bool = False):
        if isinstance(self, nn.Module) and "_modules" not in self.__dict__:
            raise TypeError(
                f"{type(self).__name__}: call nn.Module.__init__ (or the torch layer's __init__) before "
                "LoRALayer.__init__, as loralib's layers do: LoRALayer registers a dropout module"
            )
        self.r = validate_rank(r)
        self.lora_alpha = validate_alpha(lora_alpha, self.r)
        validate_dropout(lora_dropout)
        # nn.Identity rather than loralib's ``lambda x: x``: a lambda cannot be pickled.
        self.lora_dropout = nn.Dropout(p=lora_dropout) if lora_dropout > 0.0 else nn.Identity()
        self.merge_weights = validate_flag("merge_weights", merge_weights)
        self.use_rslora = validate_flag("use_rslora", use_rslora)
        self.scaling = self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r) if self.r > 0 else 0.0
        # True while ΔW is folded into the frozen weight, and the (lora_A, lora_B) that were folded in.
        self.merged = False
        self.merged_factors: Factors | None = None
        if isinstance(self, nn.Module):
            self.register_state_dict_post_hook(_record_merge_state)

    # -- to be provided by each layer ------------------------------------------------------------
    def delta_weight(self, dtype: torch.dtype | None = None, factors: Factors | None = None) -> torch.Tensor:
        """``ΔW = scaling * B @ A`` with exactly the shape (and layout) of the frozen weight.

        ``factors``: the ``(lora_A, lora_B)`` to build it from; the layer's own by default.
        """
        raise NotImplementedError

    # -- shared logic ----------------------------------------------------------------------------
    @property
    def has_lora(self) -> bool:
        """True when the layer has LoRA parameters (``r > 0`` and, for MergedLinear, a slice enabled)."""
        return getattr(self, "lora_A", None) is not None

    @property
    def frozen_weight(self) -> torch.Tensor:
        """The pretrained weight the update is merged into (``weight``, or ``conv.weight`` for ConvLoRA)."""
        return self.get_parameter(self.frozen_weight_name)

    def merge(self) -> None:
        """Fold ΔW into the frozen weight (see :mod:`lora_basics.merge`). Calling it twice merges once."""
        merge_layer(self)

    def unmerge(self) -> None:
        """Take the merged ΔW back out of the frozen weight. A no-op when not merged."""
        unmerge_layer(self)

    def train(self, mode: bool = True):
        """``train()`` unmerges and ``eval()`` merges (when ``merge_weights``).

        A parent's ``model.eval()`` calls ``train(False)`` on every child, so it reaches here too.
        """
        super().train(mode)
        if self.merge_weights and provides_update(self):
            if mode:
                self.unmerge()
            else:
                self.merge()
        return self

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        if provides_update(self) and self.has_lora:
            self._check_lora_shapes(state_dict, prefix)
            self._convert_weight_to_my_mode(state_dict, prefix, local_metadata)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _check_lora_shapes(self, state_dict, prefix) -> None:
        """Wrong LoRA shapes get a clear error naming the key and both shapes (before anything is loaded)."""
        params = update_parameters(self)
        for name, mine in zip(UPDATE_NAMES[: len(params)], params, strict=True):
            key = prefix + name
            if key in state_dict and tuple(getattr(state_dict[key], "shape", ())) != tuple(mine.shape):
                raise ValueError(
                    f"state dict key {key!r} has shape {tuple(getattr(state_dict[key], 'shape', ()))}, but this "
                    f"{type(self).__name__} expects {tuple(mine.shape)} (r={self.r}); "
                    "was the checkpoint saved with another r, enable_lora or layer size?"
                )

    @torch.no_grad()
    def _convert_weight_to_my_mode(self, state_dict, prefix, local_metadata) -> None:
        """Make the weight about to be loaded hold what this layer's mode needs, then record the merge.

        ``state_dict`` is torch's private copy: the weight put in it here is what torch loads next (into
        this layer, or into the child ``conv``). Every check runs before anything of the layer changes.
        """
        weight = self.frozen_weight
        mine = update_parameters(self)
        saved = [state_dict.get(prefix + name) for name in UPDATE_NAMES[: len(mine)]]
        has_factors = all(isinstance(t, torch.Tensor) for t in saved[:2])
        # What the layer will hold after the load (the saved tensors, else its own), as stored.
        factors = tuple(
            (new if isinstance(new, torch.Tensor) else own).detach().to(own).clone()
            for new, own in zip(saved, mine, strict=True)
        )
        key = prefix + self.frozen_weight_name
        incoming = state_dict.get(key)
        if isinstance(incoming, torch.Tensor) and incoming.shape == weight.shape:
            incoming = incoming.detach().to(dtype=weight.dtype, device=weight.device)
            if "lora_merged" in local_metadata:  # saved by this library: it says
                saved_merged = bool(local_metadata["lora_merged"])
            elif self.use_dora and isinstance(saved[-1], torch.Tensor):  # a DoRA checkpoint holds W0
                saved_merged = False
            else:  # loralib (no record): the weight as its layer held it; without factors, a pretrained W0
                saved_merged = self.merged and has_factors
            if self.use_dora:
                # Only a LoRA layer saves merged (W0 + ΔW), so that is what a merged weight is taken out as.
                W0 = add_update(self, incoming, factors[:2], sign=-1) if saved_merged else incoming
                if not isinstance(saved[-1], torch.Tensor):
                    # A weight without a magnitude (a pretrained checkpoint): start from it as PEFT does.
                    factors = factors[:2] + (dora.weight_norm(self, W0, factors).to(factors[2]),)
                    state_dict[prefix + "lora_magnitude"] = factors[2]
                factors += (W0.clone(),)  # a merged DoRA layer keeps W0 aside (see lora_basics.dora)
                state_dict[key] = add_update(self, W0, factors) if self.merged else W0
            elif saved_merged and not self.merged:
                state_dict[key] = add_update(self, incoming, factors, sign=-1)
            elif self.merged and not saved_merged:
                state_dict[key] = add_update(self, incoming, factors)
        elif self.merged and any(isinstance(t, torch.Tensor) for t in saved):
            # Only the factors change (an adapter loaded into a merged layer): swap the merged update.
            W0 = weight_without_update(self)
            factors += (W0,) if self.use_dora else ()  # a merged DoRA layer keeps W0 aside
            weight.copy_(add_update(self, W0, factors))
        else:
            return  # nothing to convert (or a weight of the wrong shape, which torch reports)
        if self.merged:
            self.merged_factors = factors

    def extra_repr(self) -> str:
        torch_repr = super().extra_repr()
        mine = f"r={self.r}, lora_alpha={self.lora_alpha}, merged={self.merged}"
        mine += ", use_rslora=True" if self.use_rslora else ""
        mine += ", use_dora=True" if self.use_dora else ""
        return f"{torch_repr}, {mine}" if torch_repr else mine


def _record_merge_state(layer: LoRALayer, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict post-hook (after the children, so ``conv.weight`` is there): record whether the weight is merged.

    A merged layer whose factors changed since it merged (``optimizer.step()`` after ``eval()``) holds
    ``W0 + ΔW(old factors)`` next to the new factors: it saves ``W0`` instead, recorded as unmerged,
    so the checkpoint pairs the weight with the factors it saves. A DoRA layer always saves ``W0``:
    its merged weight could not be taken apart without the norm it was divided by.
    """
    if not provides_update(layer):
        return
    merged = layer.merged
    key = prefix + layer.frozen_weight_name
    if merged and key in state_dict and (layer.use_dora or factors_changed(layer)):
        state_dict[key] = weight_without_update(layer)
        merged = False
    local_metadata["lora_merged"] = merged
