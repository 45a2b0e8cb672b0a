"""Many adapters on one frozen base, and a different adapter for each row of a batch.

    served = MultiAdapterModel(load_pretrained())             # one frozen base
    served.load_adapter("A", "task_a.pt")                     # adapter files saved by save_adapter
    served.load_adapter("B", "task_b.pt")
    logits = served(tokens, adapter_names=["A", "B", None, "A"])   # row i through its own adapter (None: the base)
    served.set_adapter("B")                                   # without adapter_names: every row through B

For a layer with frozen weight ``W0`` (and bias ``b``), row ``i`` of the batch with adapter ``a_i`` gets

    y_i = x_i W0^T + b + s_{a_i} * x_i A_{a_i}^T B_{a_i}^T,        s_a = lora_alpha_a / r_a

``W0`` is shared by every row and never merged: each row adds its own low-rank term. That is what
serving many fine-tunes from one base needs (S-LoRA, Punica, PEFT's ``adapter_names``): one copy of the
base weights, one batch, any mix of adapters.

How it is fast. Each multi-adapter layer keeps the factors of all its adapters stacked, one *slot*
per adapter, with slot 0 the base model (all zeros), stored as the matrices the formula multiplies by:

    lora_A_T: (n_slots, in, R)  = A^T      lora_B_T: (n_slots, R, out) = B^T      scaling: (n_slots,)

``R`` is the largest rank; smaller ranks are zero-padded (zero columns of ``A^T`` and zero rows of ``B^T``
add nothing). A batch gathers one slice per row and runs two batched matmuls:

    A_rows = lora_A_T[slots]                      (batch, in, R)     slots: (batch,), one slot per row
    h      = s[slots] * x_rows @ A_rows           (batch, tokens, R)
    y      = x W0^T + b + h @ B_rows              (batch, tokens, out)

which costs ``O(batch * tokens * R * (in + out))`` on top of the base layer, the cost of *one* adapter,
however many adapters the batch mixes (the gathered, "BGMV"-style kernel of Punica and S-LoRA, here
with torch's ``bmm``). Grouping the rows by adapter and looping over the groups, as PEFT does, computes
the same with one small matmul pair, an index copy and an index add per adapter.
:meth:`MultiLoRALinear.forward_formula` computes the same row by row, as written.

Where the adapters come from. Adapters are built by the library itself on the plain base model
(:func:`~lora_basics.add_lora` for a fresh one, :func:`~lora_basics.load_adapter` for a file, with all
their checks: settings, shapes, the base fingerprint), their factors are read, and the plain modules
are put back. So an adapter here is exactly what it is everywhere else in ``lora_basics``:

- ``nn.Linear`` and GPT-2's ``Conv1D`` (weight stored ``(in, out)``) targets: ``A = lora_A`` ``(r, in)``,
  ``B = lora_B`` ``(out, r)``.
- A fused projection with ``enable_lora`` (a :class:`~lora_basics.MergedLinear` adapter, e.g. Q and V of
  ``c_attn``): a rank ``r * k`` update of the whole fused layer with the block-structured
  ``B = full_lora_B()`` ``(out, r * k)``, zero on the slices without LoRA.
- ``nn.Embedding`` targets: token ``t`` of row ``i`` gets ``s * B A[:, t]``, looked up in ``A^T``.

Inference only: the base is frozen and the factors are buffers. Train each adapter with
:func:`~lora_basics.add_lora`, save it with :func:`~lora_basics.save_adapter`, serve it here.
The model's state dict holds the base only (each wrapped module's weights under ``base_layer``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import torch
import torch.nn.functional as F
from torch import nn

from .adapter_file import load_adapter as _load_adapter_file
from .embedding import Embedding
from .inject import _is_conv1d_style, add_lora, lora_layers, replace_module
from .lora_layer import LoRALayer
from .utils import lora_state_dict
from .validation import validate_rank

#: Slot 0 of every layer: no adapter, the base model.
BASE_SLOT = 0


def _pad_rank(factor: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    """``factor`` zero-padded along ``dim`` (its rank dimension) to size ``rank``."""
    padding = [0, 0] * (factor.dim() - 1 - dim) + [0, rank - factor.shape[dim]]
    return F.pad(factor, padding)


class _MultiAdapterLayer(nn.Module):
    """What the multi-adapter layers share: the base module, the stacked slots, and which slot each row uses.

    Buffers (``n_slots`` = adapters + 1, slot 0 all zeros; ``R`` the largest rank; ``fan_in`` is
    ``in_features`` or ``num_embeddings``, ``fan_out`` ``out_features`` or ``embedding_dim``):
        - ``lora_A_T``: ``(n_slots, fan_in, R)``, ``A^T`` of each adapter (``A``: ``(r, fan_in)``).
        - ``lora_B_T``: ``(n_slots, R, fan_out)``, ``B^T`` of each adapter (``B``: ``(fan_out, r)``).
        - ``scaling``: ``(n_slots,)``, ``lora_alpha / r`` of each adapter.

    They are buffers, not parameters (served adapters are not trained here), and not persistent (the
    state dict stays the base model's; adapters live in their own files).

    Which slot each row uses: :meth:`use_slot` (one slot for every row) or :meth:`use_rows` (one slot per
    row). :class:`MultiAdapterModel` calls them on every layer; the layers never see adapter names.
    """

    def __init__(self, base_layer: nn.Module, fan_in: int, fan_out: int):
        super().__init__()
        self.base_layer = base_layer
        self.fan_in, self.fan_out = fan_in, fan_out
        self.ranks: list[int] = []  # the rank of each slot
        self.slot = BASE_SLOT
        self.row_slots: torch.Tensor | None = None
        self.rows_differ = False
        kwargs = self._like_weight()
        self.register_buffer("lora_A_T", torch.zeros(0, fan_in, 0, **kwargs), persistent=False)
        self.register_buffer("lora_B_T", torch.zeros(0, 0, fan_out, **kwargs), persistent=False)
        self.register_buffer("scaling", torch.zeros(0, **kwargs), persistent=False)
        self.add_slot(None, None, 0.0)  # slot 0: the base model

    @property
    def n_slots(self) -> int:
        return len(self.ranks)

    def use_slot(self, slot: int) -> None:
        """Every row of every batch through slot ``slot`` (0: the base model)."""
        if not 0 <= slot < self.n_slots:
            raise ValueError(f"slot must be in [0, {self.n_slots}), got {slot}")
        self.slot, self.row_slots, self.rows_differ = slot, None, False

    def use_rows(self, slots: torch.Tensor, rows_differ: bool | None = None) -> None:
        """Row ``i`` of the batch through slot ``slots[i]``; ``slots``: a ``(batch,)`` integer tensor.

        ``rows_differ``: whether the slots are not all the same (computed if not given). When they are all
        the same, the layer runs a plain one-adapter forward and ``slots`` only checks the number of rows.
        """
        if not isinstance(slots, torch.Tensor) or slots.dim() != 1 or slots.is_floating_point() or not len(slots):
            raise TypeError(f"slots must be a non-empty 1-D integer tensor (one slot per row), got {slots!r}")
        if rows_differ is None:
            if not (0 <= int(slots.min()) and int(slots.max()) < self.n_slots):
                raise ValueError(f"slots must be in [0, {self.n_slots}), got {slots.tolist()}")
            rows_differ = bool((slots != slots[0]).any())
        self.row_slots, self.slot, self.rows_differ = slots, int(slots[0]), rows_differ

    def _like_weight(self) -> dict:
        weight = self.base_layer.weight
        return {"device": weight.device, "dtype": weight.dtype}

    def slot_factors(self) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """``(A, B, scaling)`` of every slot, in the library's layouts (``A``: ``(r, fan_in)``, ``B``: ``(fan_out, r)``)."""
        return [
            (self.lora_A_T[i, :, :r].T, self.lora_B_T[i, :r].T, float(self.scaling[i]))
            for i, r in enumerate(self.ranks)
        ]

    def set_slots(self, factors: list[tuple[torch.Tensor, torch.Tensor, float]]) -> None:
        """Rebuild the stacks from one ``(A, B, scaling)`` per slot (slot 0 first), zero-padding the ranks."""
        for A, B, _ in factors:
            if A.dim() != 2 or A.shape[1] != self.fan_in or B.shape != (self.fan_out, A.shape[0]):
                raise ValueError(
                    f"factors of shapes A {tuple(A.shape)}, B {tuple(B.shape)} do not fit this layer: "
                    f"A must be (r, {self.fan_in}) and B ({self.fan_out}, r)"
                )
        rank = max(A.shape[0] for A, _, _ in factors)
        kwargs = self._like_weight()
        self.lora_A_T = torch.stack([_pad_rank(A.to(**kwargs).T, rank, 1) for A, _, _ in factors])  # (n, in, R)
        self.lora_B_T = torch.stack([_pad_rank(B.to(**kwargs).T, rank, 0) for _, B, _ in factors])  # (n, R, out)
        self.scaling = torch.tensor([s for _, _, s in factors], **kwargs)
        self.ranks = [A.shape[0] for A, _, _ in factors]

    def add_slot(self, A: torch.Tensor | None, B: torch.Tensor | None, scaling: float) -> None:
        """Append a slot; ``A = B = None`` for an adapter that does not touch this layer (rank 0, all zeros)."""
        if A is None:
            kwargs = self._like_weight()
            A, B, scaling = torch.zeros(0, self.fan_in, **kwargs), torch.zeros(self.fan_out, 0, **kwargs), 0.0
        self.set_slots(self.slot_factors() + [(A, B, scaling)])

    def remove_slot(self, slot: int) -> None:
        factors = self.slot_factors()
        del factors[slot]
        self.set_slots(factors)

    def _slots_of_rows(self, rows: int) -> torch.Tensor:
        """``row_slots``, checked against the number of rows of the input."""
        if self.row_slots.shape[0] != rows:
            raise ValueError(
                f"adapter_names has {self.row_slots.shape[0]} entries, but a multi-adapter layer got an input "
                f"with {rows} rows (dim 0): give one adapter name per row of the batch. (A module whose input is "
                "shared by all rows, such as GPT-2's position embedding wpe, cannot take a different adapter per row.)"
            )
        return self.row_slots

    def _each_row_slot(self, rows: int) -> list[int]:
        return self._slots_of_rows(rows).tolist() if self.row_slots is not None else [self.slot] * rows

    def _add_update(self, result: torch.Tensor, after_A: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """``result + s[slots] * after_A @ B_T[slots]``, row by row in one batched GEMM.

        ``result``: ``(batch, ..., fan_out)``; ``after_A``: ``(batch, tokens, R)``, each row's ``x A^T``.
        """
        batch = result.shape[0]
        B_rows = self.lora_B_T.index_select(0, slots)  # (batch, R, out): each row's own B^T, gathered
        after_A = after_A * self.scaling.index_select(0, slots).view(batch, 1, 1)  # scale the small tensor
        # torch.baddbmm(C, M1, M2) = C + M1 @ M2 for every row: the update is added inside the GEMM.
        out = torch.baddbmm(result.reshape(batch, -1, self.fan_out), after_A, B_rows)
        return out.view(result.shape)

    def extra_repr(self) -> str:
        return f"{self.fan_in} -> {self.fan_out}, adapters={self.n_slots - 1}, ranks={self.ranks[1:]}"


class MultiLoRALinear(_MultiAdapterLayer):
    """A pretrained linear layer (``nn.Linear``, or GPT-2's ``Conv1D`` with its weight ``(in, out)``)
    with many LoRA adapters, one chosen per row of the batch; the base layer is called as it is.

    Input ``(batch, ..., in_features)`` -> output ``(batch, ..., out_features)``; row ``i`` is ``x[i]``,
    whatever the dimensions after the first. Stacks as in :class:`_MultiAdapterLayer`, with
    ``lora_A_T``: ``(n_slots, in_features, R)`` and ``lora_B_T``: ``(n_slots, R, out_features)``.
    """

    def __init__(self, base_layer: nn.Module):
        if isinstance(base_layer, nn.Linear):
            out_features, in_features = base_layer.weight.shape
        elif _is_conv1d_style(base_layer):
            in_features, out_features = base_layer.weight.shape  # stored (in, out)
        else:
            raise TypeError(
                f"base_layer must be an nn.Linear or a GPT-2 Conv1D, got {type(base_layer).__name__}; "
                "MultiAdapterModel serves linear, fused (enable_lora) and embedding targets"
            )
        super().__init__(base_layer, in_features, out_features)
        self.in_features, self.out_features = in_features, out_features

    def forward_formula(self, x: torch.Tensor) -> torch.Tensor:
        """The maths as written, one row at a time: ``y_i = base(x_i) + s_a * x_i A_a^T B_a^T``, ``a`` = row i's slot.

        :meth:`forward` computes the same for the whole batch at once (a test checks they agree).
        """
        rows = []
        for x_i, a in zip(x, self._each_row_slot(x.shape[0]), strict=True):
            A_T, B_T, s = self.lora_A_T[a], self.lora_B_T[a], self.scaling[a]  # (in, R), (R, out), ()
            rows.append(self.base_layer(x_i) + s * (x_i @ A_T) @ B_T)
        return torch.stack(rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same result as :meth:`forward_formula`: gathered factors and batched matmuls, no loop over rows."""
        result = self.base_layer(x)  # x W0^T + b, (batch, ..., out)
        slots = self._slots_of_rows(x.shape[0]) if self.row_slots is not None else None  # (batch,)
        if not self.rows_differ:  # one adapter for the whole batch: a plain LoRA forward
            a = self.slot
            if self.ranks[a] == 0:
                return result
            after_A = x.reshape(-1, self.in_features) @ self.lora_A_T[a] * self.scaling[a]  # (tokens, R)
            # torch.addmm(C, M1, M2) = C + M1 @ M2 in one GEMM (as Linear.forward does).
            return torch.addmm(result.reshape(-1, self.out_features), after_A, self.lora_B_T[a]).view(result.shape)
        A_rows = self.lora_A_T.index_select(0, slots)  # (batch, in, R): each row's own A^T, gathered
        after_A = torch.bmm(x.reshape(x.shape[0], -1, self.in_features), A_rows)  # (batch, tokens, R)
        return self._add_update(result, after_A, slots)


class MultiLoRAEmbedding(_MultiAdapterLayer):
    """A pretrained ``nn.Embedding`` with many LoRA adapters, one chosen per row of the batch.

    Token ``t`` of row ``i`` (adapter ``a``) gets ``W0[t] + s_a * (B_a A_a[:, t])^T``: column ``t`` of
    ``A_a`` is row ``t`` of ``A_a^T``, looked up like a row of a table.

    Input ``(batch, ...)`` of token ids -> output ``(batch, ..., embedding_dim)``. Stacks as in
    :class:`_MultiAdapterLayer`, with ``lora_A_T``: ``(n_slots, num_embeddings, R)`` (one row per token)
    and ``lora_B_T``: ``(n_slots, R, embedding_dim)``.
    """

    def __init__(self, base_layer: nn.Embedding):
        if not isinstance(base_layer, nn.Embedding):
            raise TypeError(f"base_layer must be an nn.Embedding, got {type(base_layer).__name__}")
        super().__init__(base_layer, *base_layer.weight.shape)
        self.num_embeddings, self.embedding_dim = base_layer.weight.shape

    def forward_formula(self, ids: torch.Tensor) -> torch.Tensor:
        """Row by row, as written: ``W0[ids_i] + s_a * A_a^T[ids_i] B_a^T``, ``a`` = row i's slot."""
        rows = []
        for ids_i, a in zip(ids, self._each_row_slot(ids.shape[0]), strict=True):
            rows.append(self.base_layer(ids_i) + self.scaling[a] * self.lora_A_T[a][ids_i] @ self.lora_B_T[a])
        return torch.stack(rows)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Same result as :meth:`forward_formula`, for the whole batch at once."""
        result = self.base_layer(ids)  # W0[ids], (batch, ..., dim)
        slots = self._slots_of_rows(ids.shape[0]) if self.row_slots is not None else None  # (batch,)
        if not self.rows_differ:
            a = self.slot
            if self.ranks[a] == 0:
                return result
            after_A = F.embedding(ids, self.lora_A_T[a]) * self.scaling[a]  # (..., R)
            return result + after_A @ self.lora_B_T[a]
        # Token t of row i looks up row t of its own adapter's table A^T: (batch, tokens, R).
        after_A = self.lora_A_T[slots[:, None], ids.reshape(ids.shape[0], -1)]
        return self._add_update(result, after_A, slots)


def _factors(layer: LoRALayer) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(A, B, scaling)`` of a lora_basics layer; a fused layer's ``B`` laid out over all outputs."""
    if isinstance(layer, Embedding):
        return layer.lora_A.detach(), layer.lora_B.detach(), float(layer.scaling)
    return layer.lora_A.detach(), layer.full_lora_B().detach(), float(layer.scaling)


def _wrap(module: nn.Module, name: str) -> _MultiAdapterLayer:
    """The multi-adapter layer for the plain pretrained ``module`` named ``name``."""
    if isinstance(module, nn.Embedding):
        return MultiLoRAEmbedding(module)
    if isinstance(module, nn.Linear) or _is_conv1d_style(module):
        return MultiLoRALinear(module)
    raise TypeError(
        f"module {name!r} is a {type(module).__name__}; MultiAdapterModel serves adapters on nn.Linear, "
        "GPT-2's Conv1D (with or without enable_lora) and nn.Embedding"
    )


class MultiAdapterModel(nn.Module):
    """One frozen base model holding several named LoRA adapters; each row of a batch picks its own.

    Args:
        model: the plain pretrained model (no LoRA layers), changed in place: its parameters are
            frozen, and every module an adapter targets is wrapped in a :class:`MultiLoRALinear` or
            :class:`MultiLoRAEmbedding` (the plain module stays inside, as ``base_layer``).

    Adapters (names are strings; ``None`` in ``adapter_names`` means the base model):
        - :meth:`add_adapter`: an adapter injected as :func:`~lora_basics.add_lora` injects one, fresh or
          with given tensors.
        - :meth:`load_adapter`: an adapter file saved by :func:`~lora_basics.save_adapter`, checked as
          :func:`~lora_basics.load_adapter` checks it.
        - :meth:`set_adapter`: the adapter of every row when ``adapter_names`` is not given.
        - :meth:`delete_adapter`.

    Calling it: ``served(*args, adapter_names=None, **kwargs)`` runs ``model(*args, **kwargs)``; with
    ``adapter_names`` (one name or ``None`` per row: dim 0 of every targeted layer's input), row ``i``
    goes through adapter ``adapter_names[i]``. Inside ``with served.per_row(names):`` any call of the
    model (``served.model.generate(...)``) does the same.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
        existing = [n for n, m in model.named_modules() if isinstance(m, (LoRALayer, _MultiAdapterLayer))]
        if existing:
            raise ValueError(
                f"model must be the plain base model, but it has LoRA layers ({existing[:3]}); "
                "load adapters into a MultiAdapterModel of the base with load_adapter(name, path)"
            )
        self.model = model.requires_grad_(False)
        self._adapters: list[str] = []  # slot i + 1 holds adapter self._adapters[i]
        self.active_adapter: str | None = None

    # -- what it holds ----------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        """The adapters held, in the order they were added."""
        return list(self._adapters)

    def multi_adapter_layers(self) -> dict[str, _MultiAdapterLayer]:
        """``{module name: layer}`` of every multi-adapter layer in the model."""
        return {name: m for name, m in self.model.named_modules() if isinstance(m, _MultiAdapterLayer)}

    def _slot(self, name: str | None) -> int:
        return BASE_SLOT if name is None else self._adapters.index(name) + 1

    def _check_known(self, name: object, argument: str = "name") -> None:
        if name is not None and name not in self._adapters:
            raise ValueError(f"{argument}={name!r} is not an adapter of this model; it holds {self._adapters}")

    def _check_new_name(self, name: object) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a string, got {name!r} ({type(name).__name__})")
        if not name:
            raise ValueError("name must be a non-empty string")
        if name in self._adapters:
            raise ValueError(f"name={name!r}: this model already holds an adapter {name!r}; delete_adapter it first")

    # -- adding adapters: built by the library on the plain base, then installed -------------------
    @contextlib.contextmanager
    def _plain_model(self) -> Iterator[dict[str, nn.Module]]:
        """Inside the block, ``self.model`` is the plain base model: every multi-adapter layer is swapped for
        its ``base_layer``, every module in train mode (so that nothing the block injects merges into
        shared weights). Yields ``{name: module}`` of the plain model. On exit, whatever the block put in
        is taken out again and the multi-adapter layers and train/eval modes are restored, even on error."""
        wrappers = self.multi_adapter_layers()
        for name, layer in wrappers.items():
            replace_module(self.model, name, layer.base_layer)
        plain = dict(self.model.named_modules())
        modes = {name: module.training for name, module in plain.items()}
        self.model.train()
        try:
            yield plain
        finally:
            for name, module in plain.items():  # parents come before their children
                if name and self.model.get_submodule(name) is not module:
                    replace_module(self.model, name, module)
            for name, module in plain.items():
                module.training = modes[name]
            for name, layer in wrappers.items():
                replace_module(self.model, name, layer)
            self.model.requires_grad_(False)

    def _install(self, name: str, build) -> None:
        """Run ``build()`` (a lora_basics call that injects LoRA into the plain model), read the factors of
        every layer it injected, and give each multi-adapter layer a slot for adapter ``name``."""
        wrapped = self.multi_adapter_layers()
        with self._plain_model() as plain:
            build()
            injected = lora_layers(self.model)
            new = {module: _wrap(plain[module], module) for module in injected if module not in wrapped}
            found = {module: _factors(layer) for module, layer in injected.items()}
        for module, layer in new.items():
            for _ in self._adapters:  # the adapters already held do not touch this module
                layer.add_slot(None, None, 0.0)
            replace_module(self.model, module, layer)
        for module, layer in self.multi_adapter_layers().items():
            layer.add_slot(*found.get(module, (None, None, 0.0)))
        self._adapters.append(name)
        self._use_slot(self._slot(self.active_adapter))

    def add_adapter(
        self,
        name: str,
        target_modules: list[str],
        r: int = 8,
        lora_alpha: float = 16,
        enable_lora: dict[str, list[bool]] | None = None,
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Add adapter ``name``, injected as :func:`~lora_basics.add_lora` injects one (same arguments).

        Args:
            tensors: its LoRA tensors, as :func:`~lora_basics.lora_state_dict` gives them from a model
                injected with the same settings (``{"h.0.attn.c_attn.lora_A": ..., ...}``, the ``"tensors"``
                of an adapter file); every one must be given. Without them the adapter is fresh
                (``add_lora``'s init, ``B = 0``: it computes the base model). An adapter file holds the
                same tensors plus a fingerprint of its base: prefer :meth:`load_adapter` for files.
        """
        self._check_new_name(name)
        validate_rank(r, allow_zero=False)
        if tensors is not None and not isinstance(tensors, dict):
            raise TypeError(f"tensors must be a dict of LoRA tensor names to tensors, got {type(tensors).__name__}")

        def build() -> None:
            add_lora(self.model, target_modules, r=r, lora_alpha=lora_alpha, enable_lora=enable_lora)
            if tensors is not None:
                result = self.model.load_state_dict(tensors, strict=False)
                missing = sorted(set(lora_state_dict(self.model)) - set(tensors))
                if result.unexpected_keys or missing:
                    raise ValueError(
                        f"tensors do not fit the adapter: unexpected {result.unexpected_keys[:4]}, missing {missing[:4]}"
                    )

        self._install(name, build)

    def load_adapter(self, name: str, path: str | Path | IO[bytes], check_base: bool = True) -> None:
        """Load the adapter file ``path`` (saved by :func:`~lora_basics.save_adapter`) as adapter ``name``.

        The file is read and checked by :func:`~lora_basics.load_adapter` on the plain base model, so a
        file of another base or a malformed one raises its ``ValueError`` and nothing changes here.
        """
        self._check_new_name(name)
        self._install(name, lambda: _load_adapter_file(self.model, path, check_base=check_base))

    # -- choosing and removing ------------------------------------------------------------------------
    def _use_slot(self, slot: int) -> None:
        for layer in self.multi_adapter_layers().values():
            layer.use_slot(slot)

    def set_adapter(self, name: str | None) -> None:
        """Use adapter ``name`` for every row when no ``adapter_names`` are given (``None``: the base model)."""
        self._check_known(name)
        self.active_adapter = name
        self._use_slot(self._slot(name))

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name`` (the active adapter becomes ``None``, the base model, if it was ``name``).
        A module no adapter touches any more gets its plain base module back."""
        if name is None:
            raise ValueError("name=None is the base model, which cannot be deleted")
        self._check_known(name)
        slot = self._slot(name)
        for module, layer in self.multi_adapter_layers().items():
            layer.remove_slot(slot)
            if max(layer.ranks) == 0:
                replace_module(self.model, module, layer.base_layer)
        self._adapters.remove(name)
        self.set_adapter(None if self.active_adapter == name else self.active_adapter)

    # -- one adapter per row --------------------------------------------------------------------------
    def row_slots(self, adapter_names: list[str | None]) -> list[int]:
        """The slot of each row: ``adapter_names`` checked, names turned into slot ids (``None`` -> 0)."""
        if isinstance(adapter_names, (str, bytes)) or not isinstance(adapter_names, (list, tuple)):
            raise TypeError(
                "adapter_names must be a list with one adapter name (or None for the base model) per row, "
                f"got {adapter_names!r}"
            )
        if not adapter_names:
            raise ValueError("adapter_names must not be empty: give one adapter name (or None) per row")
        wrong = [n for n in adapter_names if n is not None and not isinstance(n, str)]
        if wrong:
            raise TypeError(f"adapter_names must hold strings or None, got {wrong[0]!r} ({type(wrong[0]).__name__})")
        unknown = sorted({n for n in adapter_names if n is not None and n not in self._adapters})
        if unknown:
            raise ValueError(
                f"adapter_names names adapters {unknown} that this model does not hold; "
                f"it holds {self._adapters} (None: the base model)"
            )
        return [self._slot(n) for n in adapter_names]

    @contextlib.contextmanager
    def per_row(self, adapter_names: list[str | None]) -> Iterator[None]:
        """Inside the block, row ``i`` of every batch goes through adapter ``adapter_names[i]``."""
        slots = self.row_slots(adapter_names)
        on_device: dict[torch.device, torch.Tensor] = {}
        for layer in self.multi_adapter_layers().values():
            device = layer.lora_B_T.device
            if device not in on_device:
                on_device[device] = torch.tensor(slots, device=device)
            layer.use_rows(on_device[device], rows_differ=len(set(slots)) > 1)
        try:
            yield
        finally:
            self._use_slot(self._slot(self.active_adapter))

    def forward(self, *args, adapter_names: list[str | None] | None = None, **kwargs):
        """``model(*args, **kwargs)``; with ``adapter_names``, row ``i`` through adapter ``adapter_names[i]``."""
        if adapter_names is None:
            return self.model(*args, **kwargs)
        with self.per_row(adapter_names):
            return self.model(*args, **kwargs)
