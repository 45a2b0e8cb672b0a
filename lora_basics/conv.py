"""`Conv1d`, `Conv2d`, `Conv3d`: LoRA on convolution kernels (loralib's ``ConvLoRA``, fixed).

A kernel ``W`` of shape ``(out, in/groups, k0, k1, ...)`` holds ``out * in/groups * k0*k1*...``
numbers. loralib's ``ConvLoRA`` learns ``B @ A`` with

    A: (r * k0, in * k1*k2*...)        B: (out/groups * k0, r * k0)

and *reshapes* the product to the kernel's shape (it has exactly as many entries). For ``Conv2d``
with a square int kernel these are loralib's shapes, so loralib checkpoints load. loralib only
handles that case: its Conv1d and Conv3d fail with a reshape error, tuple kernels hit an assert,
and its ``lora_dropout`` is stored but never applied. Here the same rule covers every kernel shape,
and dropout is applied to the input of the LoRA path.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .lora_layer import LoRALayer, copy_pretrained
from .validation import refuse_fan_in_fan_out


class ConvLoRA(LoRALayer):
    #: The torch convolution this layer extends; each of Conv1d/2d/3d below names its own.
    torch_conv: type[nn.modules.conv._ConvNd]

    """Shared code of :class:`Conv1d`, :class:`Conv2d`, :class:`Conv3d` (each also an ``nn.ConvNd``).

    ``scaling * delta`` has the kernel's shape ``(out, in/groups, *kernel_size)``; the forward pass is

        y = conv(x, W0) + conv(dropout(x), scaling * delta)       (train mode, dropout > 0)
        y = conv(x, W0 + scaling * delta)                          (otherwise: one convolution)

    Args:
        in_channels, out_channels, kernel_size: as the torch convolution (int or tuple kernel).
        r, lora_alpha, lora_dropout, merge_weights: as :class:`LoRALayer`.
        **kwargs: passed to the torch convolution (``stride``, ``padding``, ``dilation``,
            ``groups``, ``bias``, ``padding_mode``, ``device``, ``dtype``).

    loralib's ``ConvLoRA(conv_module, ...)`` wrapped a conv in ``self.conv``; here the layer *is*
    the conv, and loralib's ``conv.weight``/``conv.bias`` state-dict keys load as ``weight``/``bias``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        r: int = 0,
        lora_alpha: float = 1,
        lora_dropout: float = 0.0,
        merge_weights: bool = True,
        **kwargs,
    ):
        refuse_fan_in_fan_out(type(self).__name__, kwargs)
        self.torch_conv.__init__(self, in_channels, out_channels, kernel_size, **kwargs)
        LoRALayer.__init__(self, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, merge_weights=merge_weights)
        if self.r > 0:
            k0, rest = self.kernel_size[0], math.prod(self.kernel_size[1:])
            self.lora_A = nn.Parameter(self.weight.new_zeros((self.r * k0, in_channels * rest)))
            self.lora_B = nn.Parameter(self.weight.new_zeros((out_channels // self.groups * k0, self.r * k0)))
            self.weight.requires_grad = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.torch_conv.reset_parameters(self)
        if self.has_lora:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)

    @classmethod
    def from_module(cls, module: nn.modules.conv._ConvNd, **lora_kwargs) -> ConvLoRA:
        """Wrap a pretrained convolution of the matching dimension, keeping its kernel and bias."""
        if type(module) is not cls.torch_conv:
            raise TypeError(
                f"{cls.__name__}.from_module needs an nn.{cls.torch_conv.__name__}, got {type(module).__name__}"
            )
        layer = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            device=module.weight.device,
            dtype=module.weight.dtype,
            **lora_kwargs,
        )
        copy_pretrained(layer, module)
        return layer

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``scaling * (B @ A)`` reshaped to the kernel: ``(out, in/groups, *kernel_size)``."""
        dtype = dtype or self.weight.dtype
        return (self.lora_B.to(dtype) @ self.lora_A.to(dtype)).view(self.weight.shape) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``conv(x, W0) + conv(dropout(x), ΔW)``; one convolution with ``W0 + ΔW`` when there is no dropout."""
        if not self.has_lora or self.merged:
            return self._conv_forward(x, self.weight, self.bias)
        delta = self.delta_weight()  # (out, in/groups, *kernel_size), like the kernel
        if self.training and isinstance(self.lora_dropout, nn.Dropout):
            # Dropout acts on the input of the LoRA path only, so that path needs its own convolution.
            return self._conv_forward(x, self.weight, self.bias) + self._conv_forward(self.lora_dropout(x), delta, None)
        # Convolution is linear in the kernel: conv(x, W0) + conv(x, ΔW) = conv(x, W0 + ΔW), one call.
        return self._conv_forward(x, self.weight + delta, self.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args):
        # loralib keeps the kernel in a child ``conv``: accept its keys as our weight/bias.
        for name in ("weight", "bias"):
            old_key = prefix + "conv." + name
            if old_key in state_dict:
                value = state_dict.pop(old_key)
                state_dict.setdefault(prefix + name, value)
        super()._load_from_state_dict(state_dict, prefix, *args)


class Conv1d(ConvLoRA, nn.Conv1d):
    """``nn.Conv1d`` with LoRA; input ``(batch, in, length)``. See :class:`ConvLoRA`."""

    torch_conv = nn.Conv1d


class Conv2d(ConvLoRA, nn.Conv2d):
    """``nn.Conv2d`` with LoRA; input ``(batch, in, H, W)``. See :class:`ConvLoRA`."""

    torch_conv = nn.Conv2d


class Conv3d(ConvLoRA, nn.Conv3d):
    """``nn.Conv3d`` with LoRA; input ``(batch, in, D, H, W)``. See :class:`ConvLoRA`."""

    torch_conv = nn.Conv3d
