"""4-bit NormalFloat (NF4): the weight format of QLoRA, in plain torch, bit for bit like bitsandbytes.

QLoRA (Dettmers et al., 2023) stores the frozen base weight in 4 bits and trains LoRA factors on top.
A weight ``W`` (any shape, ``n`` values) becomes:

1. **Blocks.** ``W`` is flattened and cut into blocks of ``blocksize = 64`` values. Each block keeps its
   absolute maximum ``absmax_b`` (fp32), so one outlier only coarsens its own block.
2. **Codes.** Each value is scaled into ``[-1, 1]`` (``w / absmax_b``) and replaced by the index
   (0..15) of the nearest of the 16 :data:`NF4_LEVELS`. The levels are quantiles of a standard
   normal distribution (:func:`normal_float_levels`): trained weights are roughly normal, so the
   levels are dense where weights are dense and the 16 codes are used far more evenly than evenly
   spaced levels would be (more information per code, a smaller error for the same 4 bits).
3. **Packing.** Two 4-bit codes share a byte (the first in the high half): ``n / 2`` bytes.
4. **Double quantization** (optional). The absmax values themselves (one fp32 per 64 weights, 0.5
   bit per weight) are quantized to 8 bits in blocks of 256, after subtracting their mean, with
   the signed dynamic 8-bit map (:func:`dynamic_levels`): 0.127 bit per weight instead of 0.5.

Dequantization is a table lookup times the block's absmax: ``W_hat[i] = NF4_LEVELS[code[i]] * absmax_b``.

Storage per weight: 16 bits (bf16) -> 4.5 bits (NF4) -> about 4.127 bits (NF4 + double quantization):
:func:`storage_bytes` computes it. The arithmetic below follows bitsandbytes' own CPU/reference
kernels (scale by the reciprocal of absmax, ties go to the lower level; the 8-bit stage rounds through
bitsandbytes' 65536-point table, :func:`nearest_level_on_grid`), and the tests compare the
packed codes, the absmax values and the dequantized tensor with ``bitsandbytes.functional.quantize_4bit``
/ ``dequantize_4bit`` for equality.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

#: The 16 NF4 levels as published with QLoRA and used by bitsandbytes (``create_normal_map(0.9677083)``
#: rounded to float32): 7 negative levels, zero, 8 positive; -1 and 1 are levels and 0 is exact.
NF4_LEVELS = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=torch.float32,
)

#: QLoRA's blocks: 64 weights share one absmax; 256 absmax values share one second-level scale.
BLOCKSIZE = 64
ABSMAX_BLOCKSIZE = 256


def normal_float_levels(offset: float = 0.9677083) -> torch.Tensor:
    """The 16 NF4 levels, derived from quantiles of N(0, 1).

    Positive side: the quantiles at 8 equally spaced probabilities from ``offset`` down to 0.5
    (exclusive); negative side: 7, mirrored (probabilities from ``1 - offset`` up to 0.5). With zero that makes 16 values,
    asymmetric so that 0 is represented exactly; they are divided by the largest so the range is
    ``[-1, 1]``. ``offset = 0.9677083`` (the outermost quantile) is QLoRA's choice. Returns float32,
    sorted; equal to :data:`NF4_LEVELS` to float32 rounding.
    """
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8 values
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 values
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (levels / levels.max()).float()


def dynamic_levels() -> torch.Tensor:
    """The signed dynamic 8-bit map (256 sorted levels in [-1, 1]) that double quantization uses.

    Dettmers (2016), "8-bit approximations for parallelism in deep learning": a sign bit, then a
    run of zeros whose length is a base-10 exponent (``10^-6 .. 10^0``), then the remaining bits as
    a linear fraction in [0.1, 1]. Small magnitudes get fine steps, large ones coarse steps. Built
    exactly as bitsandbytes' ``create_dynamic_map(signed=True)``.
    """
    values: list[float] = []
    exponent_bits, fraction_bits = 7, 7  # 8 bits = sign + 7
    for i in range(exponent_bits):
        steps = 2 ** (i + fraction_bits - exponent_bits) + 1
        boundaries = torch.linspace(0.1, 1, steps, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        scale = 10 ** (-(exponent_bits - 1) + i)
        values += (scale * means).tolist() + (-scale * means).tolist()
    values += [0.0, 1.0]
    values += [0.0] * (256 - len(values))
    return torch.tensor(sorted(values), dtype=torch.float32)


def nearest_level(scaled: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted ``levels`` for each value (a value on a midpoint goes to the lower)."""
    midpoints = (levels[:-1] + levels[1:]) / 2
    return torch.bucketize(scaled, midpoints)


#: bitsandbytes' CPU kernel for 8-bit blockwise quantization rounds through a table of this many points.
GRID_POINTS = 65536


def nearest_level_on_grid(scaled: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """:func:`nearest_level` as bitsandbytes' CPU 8-bit kernel computes it: through a lookup table.

    ``[-1, 1]`` is sampled at 65536 evenly spaced points, each point stores its nearest level, and a
    value takes the entry of its nearest point. This is faster than a search per value and can
    differ from :func:`nearest_level` only for values within half a grid step (1.5e-5) of a midpoint;
    matching it keeps the double-quantized absmax codes bit-identical to bitsandbytes'.
    """
    i = torch.arange(GRID_POINTS, dtype=torch.float32)
    grid = -1.0 + (2.0 * i) / (GRID_POINTS - 1)  # float32, as the C code computes it
    table = nearest_level(grid, levels)  # ties (a point exactly on a midpoint) go to the lower level
    index = ((scaled.clamp(-1, 1) + 1.0) * 0.5 * (GRID_POINTS - 1) + 0.5).long()  # float32 maths, then truncate
    return table[index]


def quantize_blocks(
    x: torch.Tensor, levels: torch.Tensor, blocksize: int, snap=nearest_level, zero_block_code: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax quantization of ``x`` (flattened) onto the sorted ``levels``.

    Returns ``(codes, absmax)``: ``codes`` (int64, one per value) index the level that ``snap``
    picks for ``x / absmax_b``; ``absmax`` (float32, one per block; the last block may be shorter).
    A block of zeros dequantizes to zeros whatever its codes; ``zero_block_code`` fixes which code
    it stores (bitsandbytes' C kernel writes 0, its torch kernel the level nearest 0.0).
    """
    flat = x.reshape(-1).float()
    full = flat.numel() - flat.numel() % blocksize
    blocks = flat[:full].view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    # bitsandbytes multiplies by the reciprocal (one division per block); the last, shorter block is divided.
    scaled = [(blocks * (1.0 / absmax.clamp(min=1e-38)).view(-1, 1)).clamp(-1, 1).reshape(-1)]
    if full < flat.numel():
        tail_max = flat[full:].abs().max()
        absmax = torch.cat([absmax, tail_max.view(1)])
        scaled.append((flat[full:] / tail_max.clamp(min=1e-38)).clamp(-1, 1))
    codes = snap(torch.cat(scaled), levels)
    if zero_block_code is not None:
        block_of_value = torch.arange(codes.numel()) // blocksize
        codes[absmax[block_of_value] == 0] = zero_block_code
    return codes, absmax


def scale_blocks(values: torch.Tensor, absmax: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Each of the (flat) ``values`` times the absmax of its block (the last block may be shorter)."""
    full = values.numel() - values.numel() % blocksize
    scaled = (values[:full].view(-1, blocksize) * absmax[: full // blocksize, None]).view(-1)
    return scaled if full == values.numel() else torch.cat([scaled, values[full:] * absmax[-1]])


def dequantize_blocks(codes: torch.Tensor, absmax: torch.Tensor, levels: torch.Tensor, blocksize: int) -> torch.Tensor:
    """``levels[codes] * absmax`` of each value's block (float32, flat), on the device of ``codes``."""
    return scale_blocks(levels.to(codes.device)[codes], absmax, blocksize)


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte, the first in the high half: ``(n,)`` -> ``(ceil(n / 2),)`` uint8."""
    codes = codes.to(torch.uint8)
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_tensor([7])])  # pad with the code of 0.0
    return (codes[0::2] << 4) | codes[1::2]


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``n`` codes, int64."""
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)
    return codes[:n].long()


#: The two levels each byte stands for: row ``b`` is ``(NF4_LEVELS[b >> 4], NF4_LEVELS[b & 15])``. Decoding
#: a byte at a time through this table skips unpacking the codes (what a forward pass of QLoRA does).
NF4_PAIRS = torch.stack([NF4_LEVELS.repeat_interleave(16), NF4_LEVELS.repeat(16)], dim=1)  # (256, 2)


@dataclass
class NF4Tensor:
    """A weight stored in NF4: what :func:`quantize_nf4` returns and :func:`dequantize_nf4` reads.

    Attributes:
        packed: ``(ceil(n / 2),)`` uint8, two codes per byte.
        absmax: ``(ceil(n / blocksize),)`` float32, or with double quantization the 8-bit codes of
            ``absmax - absmax_offset`` (uint8).
        shape, dtype: of the original weight.
        blocksize: weights per absmax (64).
        absmax_scale: with double quantization, ``(ceil(blocks / 256),)`` float32 scales of the
            absmax codes; else ``None``.
        absmax_offset: with double quantization, the mean absmax that was subtracted; else ``None``.
    """

    packed: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int = BLOCKSIZE
    absmax_scale: torch.Tensor | None = None
    absmax_offset: torch.Tensor | None = None

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    def nbytes(self) -> int:
        """Bytes this weight occupies (codes, absmax and, with double quantization, its scales and offset)."""
        tensors = [self.packed, self.absmax, self.absmax_scale, self.absmax_offset]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def quantize_nf4(weight: torch.Tensor, blocksize: int = BLOCKSIZE, double_quant: bool = False) -> NF4Tensor:
    """Quantize ``weight`` (float32/bf16/fp16, any shape) to NF4, optionally with double quantization."""
    if not isinstance(weight, torch.Tensor) or weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        got = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise TypeError(f"weight must be a float32, bfloat16 or float16 tensor, got {got}")
    if not isinstance(blocksize, int) or blocksize < 2 or blocksize & (blocksize - 1):
        raise ValueError(f"blocksize must be a power of two >= 2 (QLoRA uses 64), got {blocksize!r}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight holds NaN or inf values: they cannot be quantized")
    weight = weight.detach().cpu()
    codes, absmax = quantize_blocks(weight, NF4_LEVELS, blocksize)
    result = NF4Tensor(pack(codes), absmax, weight.shape, weight.dtype, blocksize)
    if double_quant:
        # The absmax values are all positive and similar: centre them, then 8-bit blockwise quantize.
        offset = absmax.mean()
        absmax_codes, absmax_scale = quantize_blocks(
            absmax - offset, dynamic_levels(), ABSMAX_BLOCKSIZE, snap=nearest_level_on_grid, zero_block_code=0
        )
        result.absmax, result.absmax_scale, result.absmax_offset = absmax_codes.to(torch.uint8), absmax_scale, offset
    return result


@functools.cache
def _dynamic_levels_table() -> torch.Tensor:
    """:func:`dynamic_levels`, built once (dequantization runs at every forward pass of a QLoRA layer)."""
    return dynamic_levels()


def dequantize_nf4(q: NF4Tensor) -> torch.Tensor:
    """The weight ``q`` stands for, in its original shape and dtype: ``NF4_LEVELS[code] * absmax``.

    Computed on the device the tensors of ``q`` are on.
    """
    absmax = q.absmax
    if q.double_quant:
        table = _dynamic_levels_table()
        absmax = dequantize_blocks(q.absmax.long(), q.absmax_scale, table, ABSMAX_BLOCKSIZE) + q.absmax_offset
    n = math.prod(q.shape)
    values = NF4_PAIRS.to(q.packed.device)[q.packed.long()].view(-1)[:n]  # NF4_LEVELS[code] of every weight
    return scale_blocks(values, absmax, q.blocksize).view(q.shape).to(q.dtype)


def storage_bytes(n_weights: int, fmt: str, blocksize: int = BLOCKSIZE) -> float:
    """Bytes to store ``n_weights`` frozen weights in ``fmt``: ``"fp32"``, ``"bf16"``, ``"nf4"`` or ``"nf4-dq"``.

    NF4: half a byte per weight plus a float32 absmax per block; NF4 with double quantization:
    one byte per block, plus a float32 scale per 256 blocks (the one offset is negligible).
    """
    blocks = math.ceil(n_weights / blocksize)
    sizes = {
        "fp32": 4.0 * n_weights,
        "bf16": 2.0 * n_weights,
        "nf4": n_weights / 2 + 4.0 * blocks,
        "nf4-dq": n_weights / 2 + blocks + 4.0 * math.ceil(blocks / ABSMAX_BLOCKSIZE) + 4.0,
    }
    if fmt not in sizes:
        raise ValueError(f"fmt must be one of {sorted(sizes)}, got {fmt!r}")
    return sizes[fmt]
