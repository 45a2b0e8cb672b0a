"""`ConvLoRA` and `Conv1d`, `Conv2d`, `Conv3d`: LoRA on convolution kernels (loralib's, fixed).

A kernel ``W`` of shape ``(out, in/groups, k0, k1, ...)`` holds ``out * in/groups * k0*k1*...``
numbers. loralib's ``ConvLoRA`` learns ``B @ A`` with

    A: (r * k0, in * k1*k2*...)        B: (out/groups * k0, r * k0)

and *reshapes* the product to the kernel's shape (it has exactly as many entries). For ``Conv2d``
with a square int kernel these are loralib's shapes. loralib only handles that case: its Conv1d and
Conv3d fail with a reshape error, tuple kernels hit an assert, and its ``lora_dropout`` is stored but
never applied. Here the same rule covers every kernel shape, and dropout is applied to the input of
the LoRA path.

The structure is loralib's, so code and checkpoints written for it work unchanged: the torch
convolution is a child ``conv`` (state-dict keys ``conv.weight``, ``conv.bias``, ``lora_A``,
``lora_B``), ``ConvLoRA(nn.Conv2d, in_channels, out_channels, kernel_size, r=...)`` builds any of
them, and ``Conv2d(*args, **kwargs)`` passes its torch class. A plain ``nn.Conv2d`` checkpoint
(``weight``/``bias`` keys) loads too.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from .lora_layer import LoRALayer, copy_pretrained
from .validation import refuse_dora, refuse_fan_in_fan_out

_TORCH_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class ConvLoRA(LoRALayer, nn.Module):
    """A torch convolution (the child ``conv``, frozen) plus a low-rank update of its kernel.

    ``delta = scaling * (B @ A).view(kernel shape)`` has the kernel's shape ``(out, in/groups, *kernel_size)``;
    the forward pass is

        y = conv(x, W0) + conv(dropout(x), delta)       (train mode, dropout > 0)
        y = conv(x, W0 + delta)                         (otherwise: one convolution)

    Args:
        conv_module: the torch convolution class, ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d``.
        in_channels, out_channels, kernel_size: as the torch convolution (int or tuple kernel).
        r, lora_alpha, lora_dropout, merge_weights, use_rslora: as :class:`LoRALayer`. ``use_dora=True``
            is refused.
        **kwargs: passed to the torch convolution (``stride``, ``padding``, ``dilation``,
            ``groups``, ``bias``, ``padding_mode``, ``device``, ``dtype``).

    Shapes (``r > 0``): ``conv.weight`` ``(out, in/groups, k0, k1, ...)``, frozen; ``lora_A``
    ``(r * k0, in * k1*...)``, kaiming-uniform; ``lora_B`` ``(out/groups * k0, r * k0)``, zeros.
    """

    #: The torch convolution that Conv1d/2d/3d pass; ConvLoRA itself is given one (``conv_module``).
    torch_conv: type[nn.modules.conv._ConvNd] | None = None
    frozen_weight_name = "conv.weight"

    def __init__(
        self,
        conv_module: type[nn.modules.conv._ConvNd],
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        r: int = 0,
        lora_alpha: float = 1,
        lora_dropout: float = 0.0,
        merge_weights: bool = True,
        *,
        use_rslora: bool = False,
        **kwargs,
    ):
        if not (isinstance(conv_module, type) and issubclass(conv_module, _TORCH_CONVS)):
            raise TypeError(f"conv_module must be nn.Conv1d, nn.Conv2d or nn.Conv3d (the class), got {conv_module!r}")
        refuse_fan_in_fan_out(type(self).__name__, kwargs)
        refuse_dora(type(self).__name__, kwargs)
        nn.Module.__init__(self)
        self.conv = conv_module(in_channels, out_channels, kernel_size, **kwargs)
        LoRALayer.__init__(self, r, lora_alpha, lora_dropout, merge_weights, use_rslora)
        if self.r > 0:
            weight = self.conv.weight
            k0, rest = self.conv.kernel_size[0], math.prod(self.conv.kernel_size[1:])
            self.lora_A = nn.Parameter(weight.new_zeros((self.r * k0, in_channels * rest)))
            self.lora_B = nn.Parameter(weight.new_zeros((out_channels // self.conv.groups * k0, self.r * k0)))
            weight.requires_grad = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        if self.has_lora:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)

    @classmethod
    def from_module(cls, module: nn.modules.conv._ConvNd, **lora_kwargs) -> ConvLoRA:
        """Wrap a pretrained ``nn.Conv1d/2d/3d`` (of the class's dimension), keeping its kernel and bias."""
        expected = cls.torch_conv or _TORCH_CONVS
        if type(module) not in _TORCH_CONVS or not issubclass(type(module), expected):
            wanted = f"an nn.{cls.torch_conv.__name__}" if cls.torch_conv else "an nn.Conv1d, nn.Conv2d or nn.Conv3d"
            raise TypeError(f"{cls.__name__}.from_module needs {wanted}, got {type(module).__name__}")
        build = cls if cls.torch_conv else functools.partial(cls, type(module))
        layer = build(
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
        copy_pretrained(layer.conv, module)
        return layer

    def delta_weight(self, dtype: torch.dtype | None = None, factors=None) -> torch.Tensor:
        """``scaling * (B @ A)`` reshaped to the kernel: ``(out, in/groups, *kernel_size)``.

        ``factors``: the ``(lora_A, lora_B)`` to build it from; the layer's own by default.
        """
        A, B = factors or (self.lora_A, self.lora_B)
        dtype = dtype or self.conv.weight.dtype
        return (B.to(dtype) @ A.to(dtype)).view(self.conv.weight.shape) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``conv(x, W0) + conv(dropout(x), ΔW)``; one convolution with ``W0 + ΔW`` when there is no dropout."""
        conv = self.conv
        if not self.has_lora or self.merged:
            return conv(x)
        delta = self.delta_weight()  # (out, in/groups, *kernel_size), like the kernel
        if self.training and isinstance(self.lora_dropout, nn.Dropout):
            # Dropout acts on the input of the LoRA path only, so that path needs its own convolution.
            return conv(x) + conv._conv_forward(self.lora_dropout(x), delta, None)
        # Convolution is linear in the kernel: conv(x, W0) + conv(x, ΔW) = conv(x, W0 + ΔW), one call.
        return conv._conv_forward(x, conv.weight + delta, conv.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args):
        # A plain nn.ConvNd checkpoint (or an older lora_basics one) has ``weight``/``bias``: they are ``conv``'s.
        for name in ("weight", "bias"):
            if prefix + name in state_dict:
                value = state_dict.pop(prefix + name)
                state_dict.setdefault(prefix + "conv." + name, value)
        super()._load_from_state_dict(state_dict, prefix, *args)


class Conv1d(ConvLoRA):
    """LoRA on an ``nn.Conv1d`` (``self.conv``); input ``(batch, in, length)``. See :class:`ConvLoRA`."""

    torch_conv = nn.Conv1d

    def __init__(self, *args, **kwargs):
        super().__init__(nn.Conv1d, *args, **kwargs)


class Conv2d(ConvLoRA):
    """LoRA on an ``nn.Conv2d`` (``self.conv``); input ``(batch, in, H, W)``. See :class:`ConvLoRA`."""

    torch_conv = nn.Conv2d

    def __init__(self, *args, **kwargs):
        super().__init__(nn.Conv2d, *args, **kwargs)


class Conv3d(ConvLoRA):
    """LoRA on an ``nn.Conv3d`` (``self.conv``); input ``(batch, in, D, H, W)``. See :class:`ConvLoRA`."""

    torch_conv = nn.Conv3d

    def __init__(self, *args, **kwargs):
        super().__init__(nn.Conv3d, *args, **kwargs)
