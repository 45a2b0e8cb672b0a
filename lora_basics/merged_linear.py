"""`MergedLinear`: LoRA on chosen slices of a fused projection such as GPT-2's ``c_attn`` (Q|K|V)."""

from __future__ import annotations

import torch
from torch import nn

from .linear import Linear
from .lora_layer import LoRALayer
from .validation import refuse_dora, validate_enable_lora, validate_flag


class MergedLinear(Linear):
    """A fused linear layer (e.g. Q|K|V) with a LoRA update on the slices where ``enable_lora`` is True.

    The ``out_features`` outputs are cut into ``N = len(enable_lora)`` equal slices of
    ``d = out_features / N``; ``k = sum(enable_lora)`` of them get their own rank-``r`` update
    ``scaling * B_i @ A_i``, the others are left alone (their block of the update is zero).

    Shapes (loralib's, so its state dicts load):
        - ``lora_A``: ``(r * k, in_features)``: ``A_1; ...; A_k`` stacked, each ``(r, in)``.
        - ``lora_B``: ``(d * k, r)``: ``B_1; ...; B_k`` stacked, each ``(d, r)``.
        - ``weight``: ``(out, in)``, or ``(in, out)`` with ``fan_in_fan_out=True`` (GPT-2).

    The forward pass is :class:`Linear`'s with ``B`` replaced by :meth:`full_lora_B`, so it stays
    low-rank: ``x -> A -> (..., r*k) -> each B_j onto the rows of its slice``. It never builds the dense ``(out, in)`` update (loralib does, with a grouped
    ``conv1d`` on every forward). ``isinstance(layer, Linear)`` holds: only ``B``'s layout differs.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        r: int = 0,
        lora_alpha: float = 1,
        lora_dropout: float = 0.0,
        enable_lora: list[bool] = [False],  # noqa: B006 - loralib's default, never mutated
        fan_in_fan_out: bool = False,
        merge_weights: bool = True,
        *,
        use_rslora: bool = False,
        **kwargs,
    ):
        refuse_dora("MergedLinear", kwargs)
        flags = validate_enable_lora(enable_lora, out_features)
        nn.Linear.__init__(self, in_features, out_features, **kwargs)
        LoRALayer.__init__(self, r, lora_alpha, lora_dropout, merge_weights, use_rslora)
        self.fan_in_fan_out = validate_flag("fan_in_fan_out", fan_in_fan_out)
        self.enable_lora = flags
        n_slices, n_enabled = len(flags), sum(flags)
        if self.r > 0 and n_enabled > 0:
            self.lora_A = nn.Parameter(self.weight.new_zeros((self.r * n_enabled, in_features)))
            self.lora_B = nn.Parameter(self.weight.new_zeros((out_features // n_slices * n_enabled, self.r)))
            self.weight.requires_grad = False
            # Which output features get an update. Nothing here reads it (full_lora_B places the
            # blocks); it is kept because loralib exposes it under this name. A buffer, so
            # .to(device) moves it; not persistent, so state dicts keep loralib's keys.
            lora_ind = torch.zeros(n_slices, out_features // n_slices, dtype=torch.bool, device=self.weight.device)
            lora_ind[torch.tensor(flags)] = True
            self.register_buffer("lora_ind", lora_ind.view(-1), persistent=False)
        self.reset_parameters()
        if self.fan_in_fan_out:
            self.weight = nn.Parameter(self.weight.detach().t().contiguous(), requires_grad=self.weight.requires_grad)

    def full_lora_B(self, lora_B: torch.Tensor | None = None) -> torch.Tensor:
        """``B`` (``lora_B``, or the one given) laid out over all output features: ``(out_features, r * k)``,
        zero outside the blocks.

        Block ``B_j`` (the ``j``-th enabled slice, ``(d, r)``) sits on the rows of that slice and in
        the columns ``j*r:(j+1)*r`` that multiply its ``A_j``. For ``enable_lora=[True, False, True]``::

            [[B_1, 0  ],        rows of Q
             [0,   0  ],        rows of K: no update
             [0,   B_2]]        rows of V

        ``full_lora_B() @ lora_A`` is then the whole ``(out, in)`` update (zero rows for the disabled
        slices), and the inherited forward ``x A^T full_lora_B()^T`` stays low-rank.
        """
        lora_B = self.lora_B if lora_B is None else lora_B
        d = self.out_features // len(self.enable_lora)  # rows of one slice
        B_blocks = lora_B.split(d, dim=0)  # B_1, ..., B_k, each (d, r)
        enabled_slices = [i for i, on in enumerate(self.enable_lora) if on]
        full = lora_B.new_zeros((self.out_features, self.r * len(B_blocks)))
        for j, (i, B_j) in enumerate(zip(enabled_slices, B_blocks, strict=True)):
            full[i * d : (i + 1) * d, j * self.r : (j + 1) * self.r] = B_j
        return full

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, enable_lora={self.enable_lora}"
