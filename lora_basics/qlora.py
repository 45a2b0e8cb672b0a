"""`QLoRALinear`: LoRA on a frozen base weight stored in 4 bits (QLoRA, Dettmers et al., 2023).

    layer = QLoRALinear.from_module(nn.Linear(768, 768), r=8, lora_alpha=16)   # or add_lora(..., quantize_base="nf4")
    y = layer(x)          # x Ŵ^T + b + scaling * dropout(x) A^T B^T,     Ŵ = dequantize(NF4(W0))

The frozen weight of a LoRA layer never receives a gradient, so it does not need 16 or 32 bits: QLoRA
keeps it in the 4-bit NormalFloat format of :mod:`lora_basics.nf4` (about 4.5 bits per weight, 4.127
with double quantization) and dequantizes it in the forward pass, to the *compute dtype*, just for
the matmul. Only ``A`` and ``B`` train, in full precision; the input gradient still flows through
``Ŵ`` to the layers below. The layer computes with ``Ŵ``, not ``W0``: the quantization error (about
10% of the weights' RMS) is part of the model LoRA then fine-tunes.

Storage. The quantized weight lives in buffers, so ``.to(device)``, ``state_dict()`` and
``load_state_dict()`` carry it (``.to(dtype)`` casts the bias and the factors, never the 4-bit weight
or its statistics): ``weight_packed`` (uint8, two codes per byte) and ``weight_absmax``
(float32, one per block of 64), or with double quantization ``weight_absmax_codes`` (uint8),
``weight_absmax_scale`` (float32, one per 256 blocks) and ``weight_absmax_offset``. The weight is
always quantized in the ``(out, in)`` layout, as bitsandbytes' ``Linear4bit`` holds it: a GPT-2
``Conv1D`` weight (``(in, out)``, ``fan_in_fan_out=True``) is transposed first, so the same pretrained
weight gives the same codes as bitsandbytes. A full-precision ``weight`` in a state dict (a pretrained
``nn.Linear`` checkpoint) is quantized on load.

Compute dtype (``compute_dtype``, fp32 or bf16; fp16 too): the input is cast to it, the base matmul
runs in it with ``Ŵ`` cast to it, and the result is cast back to the input's dtype, as bitsandbytes'
``Linear4bit`` does. The LoRA path runs in the factors' dtype (the layer's ``dtype``), as in PEFT.

No merging. Folding ``ΔW`` into a 4-bit weight would mean re-quantizing ``Ŵ + ΔW``: the rounding to
16 levels per block is coarser than a typical update, which would mostly vanish. So ``merge_weights``
must be False (``merge_weights=True`` is refused with a ``ValueError``), ``eval()`` leaves the layer
unmerged, and ``merge()`` raises. For a merged model use :func:`lora_basics.merge_and_export`: it
writes ``Ŵ + ΔW`` into a full-precision layer of the base's type.

``tests/library/test_qlora.py`` compares the outputs with PEFT's LoRA on a bitsandbytes ``Linear4bit``
holding the same weight and factors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .linear import pretrained_linear
from .lora_layer import LoRALayer
from .nf4 import BLOCKSIZE, NF4Tensor, dequantize_nf4, quantize_nf4
from .validation import refuse_dora, validate_flag

COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: ``quantize_base`` values: NF4, and NF4 with double quantization (the names of :func:`lora_basics.nf4.storage_bytes`).
QUANT_FORMATS = ("nf4", "nf4-dq")


class QLoRALinear(LoRALayer, nn.Module):
    """A linear layer whose frozen weight is stored in NF4, plus a trainable low-rank update.

    ``y = x Ŵ^T + b + scaling * dropout(x) A^T B^T`` with ``Ŵ`` the dequantized NF4 weight.

    Shapes (``r > 0``):
        - the frozen weight: NF4 buffers of an ``(out_features, in_features)`` matrix (see the module docstring).
        - ``bias``: ``(out_features,)`` in ``dtype``; ``lora_A``: ``(r, in_features)``, kaiming-uniform;
          ``lora_B``: ``(out_features, r)``, zeros.
        - input ``(..., in_features)`` -> output ``(..., out_features)``, in the input's dtype.

    Args:
        in_features, out_features, r, lora_alpha, lora_dropout, use_rslora: as :class:`~lora_basics.Linear`.
        fan_in_fan_out: the pretrained weight is laid out ``(in, out)`` (GPT-2's ``Conv1D``): ``weight``
            is given that way and :attr:`frozen_weight` returns it that way. The NF4 codes are always
            of the ``(out, in)`` matrix.
        merge_weights: must be False: a 4-bit weight is never merged (see the module docstring).
        double_quant: quantize the absmax values too (8 bits, blocks of 256): QLoRA's double quantization.
        compute_dtype: dtype of the base matmul: ``torch.float32`` (default), ``torch.bfloat16`` or ``torch.float16``.
        weight: the pretrained weight to quantize; default: a random one, initialised like ``nn.Linear``'s.
        bias: whether the layer has a bias (initialised like ``nn.Linear``'s).
        device, dtype: of the buffers, the bias and the factors; ``dtype`` is also the dtype the weight
            is dequantized to before the cast to ``compute_dtype`` (default: torch's default dtype).
        use_dora: refused (DoRA on a quantized base is not implemented).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        r: int = 0,
        lora_alpha: float = 1,
        lora_dropout: float = 0.0,
        fan_in_fan_out: bool = False,
        merge_weights: bool = False,
        *,
        use_rslora: bool = False,
        double_quant: bool = False,
        compute_dtype: torch.dtype = torch.float32,
        weight: torch.Tensor | None = None,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        use_dora: bool = False,
    ):
        refuse_dora("QLoRALinear", {"use_dora": use_dora})
        if validate_flag("merge_weights", merge_weights):
            raise ValueError(
                "QLoRALinear needs merge_weights=False: merging would re-quantize W + ΔW to 4 bits and lose most of "
                "the update; eval() leaves the layer unmerged (use merge_and_export for a merged full-precision model)"
            )
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
        nn.Module.__init__(self)
        LoRALayer.__init__(self, r, lora_alpha, lora_dropout, False, use_rslora)
        self.in_features, self.out_features = in_features, out_features
        self.fan_in_fan_out = validate_flag("fan_in_fan_out", fan_in_fan_out)
        self.double_quant = validate_flag("double_quant", double_quant)
        self.compute_dtype = compute_dtype
        self.weight_dtype = dtype or torch.get_default_dtype()
        factory = {"device": device, "dtype": self.weight_dtype}
        if weight is None:
            weight = torch.empty(out_features, in_features, **factory)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Linear's initialisation
            weight = weight.t() if self.fan_in_fan_out else weight  # in the layout the layer is given weights
        self.quantize_weight(weight.to(device=device))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        if self.bias is not None:
            bound = 1 / math.sqrt(in_features) if in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)
        if self.r > 0:
            self.lora_A = nn.Parameter(torch.zeros(self.r, in_features, **factory))
            self.lora_B = nn.Parameter(torch.zeros(out_features, self.r, **factory))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        fan_in_fan_out: bool = False,
        double_quant: bool = False,
        compute_dtype: torch.dtype | None = None,
        **lora_kwargs,
    ) -> QLoRALinear:
        """Quantize a pretrained linear layer (``nn.Linear``, or with ``fan_in_fan_out=True`` GPT-2's ``Conv1D``).

        ``compute_dtype`` defaults to the dtype of the module's weight: the layer computes in the dtype
        the model computed in. ``lora_kwargs``: ``r``, ``lora_alpha``, ``lora_dropout``, ``use_rslora``.
        """
        weight, in_features, out_features, bias = pretrained_linear(module, fan_in_fan_out)
        layer = cls(
            in_features,
            out_features,
            fan_in_fan_out=fan_in_fan_out,
            double_quant=double_quant,
            compute_dtype=compute_dtype or weight.dtype,
            weight=weight.detach(),
            bias=bias is not None,
            device=weight.device,
            dtype=weight.dtype,
            **lora_kwargs,
        )
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias)
        return layer

    # -- the 4-bit weight -----------------------------------------------------------------------------
    @property
    def quant_format(self) -> str:
        """``"nf4"`` or ``"nf4-dq"`` (with double quantization)."""
        return QUANT_FORMATS[self.double_quant]

    def _quantized_buffers(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """The buffers holding ``weight`` (pretrained layout) in NF4, on the layer's device (else ``weight``'s)."""
        expected = (
            (self.in_features, self.out_features) if self.fan_in_fan_out else (self.out_features, self.in_features)
        )
        if tuple(weight.shape) != expected:
            layout = "(in, out) as fan_in_fan_out=True" if self.fan_in_fan_out else "(out, in)"
            raise ValueError(
                f"QLoRALinear({self.in_features}, {self.out_features}) needs a weight of shape {expected}, "
                f"{layout}; got {tuple(weight.shape)}"
            )
        weight = weight.t() if self.fan_in_fan_out else weight  # the codes are always of the (out, in) matrix
        q = quantize_nf4(weight.detach().to(self.weight_dtype), blocksize=BLOCKSIZE, double_quant=self.double_quant)
        if q.double_quant:
            tensors = {
                "weight_packed": q.packed,
                "weight_absmax_codes": q.absmax,
                "weight_absmax_scale": q.absmax_scale,
                "weight_absmax_offset": q.absmax_offset,
            }
        else:
            tensors = {"weight_packed": q.packed, "weight_absmax": q.absmax}
        device = self.weight_packed.device if hasattr(self, "weight_packed") else weight.device
        return {name: tensor.to(device) for name, tensor in tensors.items()}

    @torch.no_grad()
    def quantize_weight(self, weight: torch.Tensor) -> None:
        """Replace the frozen weight by ``weight`` (``(out, in)``; ``(in, out)`` with ``fan_in_fan_out``), in NF4."""
        for name, tensor in self._quantized_buffers(weight).items():
            self.register_buffer(name, tensor)

    def nf4_weight(self) -> NF4Tensor:
        """The frozen weight as an :class:`~lora_basics.nf4.NF4Tensor` of shape ``(out, in)``."""
        shape, dtype = torch.Size((self.out_features, self.in_features)), self.weight_dtype
        if self.double_quant:
            return NF4Tensor(
                self.weight_packed,
                self.weight_absmax_codes,
                shape,
                dtype,
                BLOCKSIZE,
                self.weight_absmax_scale,
                self.weight_absmax_offset,
            )
        return NF4Tensor(self.weight_packed, self.weight_absmax, shape, dtype, BLOCKSIZE)

    def dequantized_weight(self) -> torch.Tensor:
        """``Ŵ``: ``(out, in)``, in the layer's ``dtype`` (a new tensor, computed from the 4-bit codes)."""
        return dequantize_nf4(self.nf4_weight())

    @property
    def frozen_weight(self) -> torch.Tensor:
        """``Ŵ`` in the pretrained layout (``(in, out)`` with ``fan_in_fan_out``): what an export merges into."""
        weight = self.dequantized_weight()
        return weight.t() if self.fan_in_fan_out else weight

    # -- LoRA -----------------------------------------------------------------------------------------
    def delta_weight(self, dtype: torch.dtype | None = None, factors=None) -> torch.Tensor:
        """``scaling * B @ A`` in the layout of :attr:`frozen_weight`."""
        A, B = factors[:2] if factors else (self.lora_A, self.lora_B)
        dtype = dtype or self.weight_dtype
        delta = (B.to(dtype) @ A.to(dtype)) * self.scaling  # (out, in)
        return delta.t() if self.fan_in_fan_out else delta

    def merge(self) -> None:
        raise ValueError(
            "QLoRALinear does not merge: its weight is 4-bit, and W + ΔW would have to be re-quantized; "
            "use lora_basics.merge_and_export for a merged full-precision copy"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x Ŵ^T + b`` in the compute dtype, plus ``scaling * dropout(x) A^T B^T`` in the factors' dtype."""
        weight = self.dequantized_weight().to(self.compute_dtype)  # (out, in)
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        result = F.linear(x.to(self.compute_dtype), weight, bias).to(x.dtype)  # (..., out)
        if not self.has_lora:
            return result
        after_A = F.linear(self.lora_dropout(x).to(self.lora_A.dtype), self.lora_A)  # (..., r)
        return result + (F.linear(after_A, self.lora_B) * self.scaling).to(result.dtype)  # (..., out)

    def _apply(self, fn, recurse=True):
        # .to(dtype), .half(), .bfloat16() cast every floating-point buffer; the quantization statistics
        # must keep their float32 values (as bitsandbytes' quantization state does), so only their
        # device follows. The bias and the factors are cast as usual.
        statistics = {
            name: t for name, t in self._buffers.items() if name.startswith("weight_") and t.is_floating_point()
        }
        super()._apply(fn, recurse)
        for name, before in statistics.items():
            self._buffers[name] = before.to(self._buffers[name].device)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args):
        # A full-precision checkpoint (an nn.Linear's or Conv1D's ``weight``): quantize it into the buffers.
        weight = state_dict.pop(prefix + "weight", None)
        if isinstance(weight, torch.Tensor):
            state_dict.update({prefix + name: t for name, t in self._quantized_buffers(weight).items()})
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        mine = (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"{self.quant_format}, compute_dtype={self.compute_dtype}"
        )
        return f"{mine}, {super().extra_repr()}"
