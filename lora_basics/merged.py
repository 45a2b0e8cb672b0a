"""`MergedLinear`: LoRA on chosen slices of a fused projection such as GPT-2's ``c_attn`` (Q|K|V)."""

from __future__ import annotations

import torch
from torch import nn

from .base import LoRALayer, check_bool
from .linear import Linear


def check_enable_lora(enable_lora: object, out_features: int) -> list[bool]:
    """Return ``enable_lora`` as a list of bools, or raise a clear error."""
    if isinstance(enable_lora, (str, bytes)) or not hasattr(enable_lora, "__iter__"):
        raise TypeError(f"enable_lora must be a list of bools such as [True, False, True], got {enable_lora!r}")
    flags = list(enable_lora)
    if not flags:
        raise ValueError(
            "enable_lora must not be empty: give one bool per slice of out_features, e.g. [True, False, True]"
        )
    if not all(isinstance(flag, bool) for flag in flags):
        raise TypeError(f"enable_lora must contain only True/False, got {flags!r}")
    if out_features % len(flags) != 0:
        raise ValueError(
            f"len(enable_lora)={len(flags)} must divide out_features={out_features} "
            f"(the fused output is cut into {len(flags)} equal slices)"
        )
    return flags


class MergedLinear(Linear):
    """A fused linear layer (e.g. Q|K|V) with a LoRA update on the slices where ``enable_lora`` is True.

    The ``out_features`` outputs are cut into ``N = len(enable_lora)`` equal slices of
    ``d = out_features / N``; ``k = sum(enable_lora)`` of them get their own rank-``r`` update
    ``scaling * B_i @ A_i``, the others are left alone (their block of the update is zero).

    Shapes (loralib's, so its state dicts load):
        - ``lora_A``: ``(r * k, in_features)``: ``A_1; ...; A_k`` stacked, each ``(r, in)``.
        - ``lora_B``: ``(d * k, r)``: ``B_1; ...; B_k`` stacked, each ``(d, r)``.
        - ``weight``: ``(out, in)``, or ``(in, out)`` with ``fan_in_fan_out=True`` (GPT-2).

    The forward pass stays low-rank: ``x -> A -> (r*k) -> block-diagonal B placed on the enabled
    output rows``. It never builds the dense ``(out, in)`` update (loralib does, with a grouped
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
        **kwargs,
    ):
        flags = check_enable_lora(enable_lora, out_features)
        nn.Linear.__init__(self, in_features, out_features, **kwargs)
        LoRALayer.__init__(self, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, merge_weights=merge_weights)
        self.fan_in_fan_out = check_bool("fan_in_fan_out", fan_in_fan_out)
        self.enable_lora = flags
        n_slices, n_enabled = len(flags), sum(flags)
        if self.r > 0 and n_enabled > 0:
            self.lora_A = nn.Parameter(self.weight.new_zeros((self.r * n_enabled, in_features)))
            self.lora_B = nn.Parameter(self.weight.new_zeros((out_features // n_slices * n_enabled, self.r)))
            self.weight.requires_grad = False
            # Which output features get an update (loralib's name). A buffer, so .to(device) moves it;
            # not persistent, so state dicts keep loralib's keys.
            lora_ind = torch.zeros(n_slices, out_features // n_slices, dtype=torch.bool, device=self.weight.device)
            lora_ind[torch.tensor(flags)] = True
            self.register_buffer("lora_ind", lora_ind.view(-1), persistent=False)
        self.reset_parameters()
        if fan_in_fan_out:
            self.weight = nn.Parameter(self.weight.detach().t().contiguous(), requires_grad=self.weight.requires_grad)

    def full_lora_B(self) -> torch.Tensor:
        """``(out_features, r * k)``: ``B_i`` on the rows of enabled slice ``i``, in columns ``i*r:(i+1)*r``.

        ``full_lora_B() @ lora_A`` is then the whole ``(out, in)`` update with zero blocks for the
        disabled slices, and ``x @ lora_A^T @ full_lora_B()^T`` is the low-rank forward.
        """
        n_enabled = sum(self.enable_lora)
        blocks = self.lora_B.view(n_enabled, -1, self.r).unbind(0)  # k blocks of (d, r)
        block_diagonal = torch.block_diag(*blocks)  # (d * k, r * k)
        full = self.lora_B.new_zeros((self.out_features, self.r * n_enabled))
        return full.index_put((self.lora_ind,), block_diagonal)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, enable_lora={self.enable_lora}"
