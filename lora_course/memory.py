"""Back-of-the-envelope GPU memory of fine-tuning: full, LoRA and QLoRA (lessons 11 and 14).

Counted per parameter, as the ZeRO paper counts mixed-precision Adam (Rajbhandari et al., 2020):

============================  =========================  ===========================================
what                          trainable parameter        frozen parameter
============================  =========================  ===========================================
weights (bf16)                2 bytes                    2 bytes (LoRA) or 0.516 bytes (QLoRA, NF4+DQ)
gradients (bf16)              2 bytes                    none
fp32 master copy              4 bytes                    none
Adam moments m, v (fp32)      8 bytes                    none
============================  =========================  ===========================================

So full fine-tuning costs 16 bytes per parameter, LoRA 2 bytes per frozen parameter plus 16 per
trainable one, QLoRA about 0.52 plus 16. Activations, the CUDA context and fragmentation come on top
and depend on batch and sequence length: these numbers are the floor, not the total. Sharding
(FSDP / ZeRO-3) divides every term by the number of GPUs.
"""

from __future__ import annotations

from lora_basics.nf4 import storage_bytes

#: Bytes per trainable parameter: bf16 weight + bf16 gradient + fp32 master copy + two fp32 Adam moments.
TRAINABLE_BYTES = 2 + 2 + 4 + 8
GB = 1e9


def finetune_memory(n_params: float, method: str, n_trainable: float = 0, gpus: int = 1) -> dict[str, float]:
    """Memory floor in GB per GPU of fine-tuning a model of ``n_params`` parameters.

    Args:
        method: ``"full"`` (every parameter trained), ``"lora"`` (bf16 frozen base + ``n_trainable``
            LoRA parameters) or ``"qlora"`` (NF4 + double-quantized frozen base + ``n_trainable``).
        gpus: the model and its states are sharded over this many GPUs (FSDP / ZeRO-3); 1: no sharding.

    Returns ``{"frozen weights", "trainable states", "total"}`` in GB (1e9 bytes) per GPU.
    """
    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"method must be 'full', 'lora' or 'qlora', got {method!r}")
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus must be a positive int, got {gpus!r}")
    if method == "full":
        frozen, trainable = 0.0, n_params * TRAINABLE_BYTES
    else:
        fmt = "bf16" if method == "lora" else "nf4-dq"
        frozen, trainable = storage_bytes(int(n_params), fmt), n_trainable * TRAINABLE_BYTES
    frozen, trainable = frozen / gpus / GB, trainable / gpus / GB
    return {"frozen weights": frozen, "trainable states": trainable, "total": frozen + trainable}


def llama_lora_params(n_layers: int, d_model: int, d_ff: int, r: int, targets: str = "all") -> int:
    """LoRA parameters of a LLaMA-style model: ``r * (in + out)`` per adapted matrix.

    ``targets="qv"``: the query and value projections (the LoRA paper's choice); ``"all"``: every linear
    layer of the blocks (q, k, v, o, and the MLP's gate, up and down: QLoRA's choice).
    """
    attention = r * (d_model + d_model)  # one d x d projection
    mlp = r * (d_model + d_ff)  # gate (d -> d_ff), up (d -> d_ff), down (d_ff -> d): same count each
    if targets == "qv":
        return n_layers * 2 * attention
    if targets == "all":
        return n_layers * (4 * attention + 3 * mlp)
    raise ValueError(f"targets must be 'qv' or 'all', got {targets!r}")


#: Published shapes (layers, width, MLP width) of the models the lessons size: LLaMA 7B/65B, Llama-2 70B.
MODELS = {
    "7B": {"n_params": 6.74e9, "n_layers": 32, "d_model": 4096, "d_ff": 11008},
    "65B": {"n_params": 65.2e9, "n_layers": 80, "d_model": 8192, "d_ff": 22016},
    "70B": {"n_params": 69.0e9, "n_layers": 80, "d_model": 8192, "d_ff": 28672},
}
