"""Helpers shared by the tests: small layers with a *non-zero* LoRA update.

At initialisation ``B = 0`` (or ``A = 0`` for Embedding), so the update is zero and merged ==
unmerged would hold trivially. Every test that compares paths first gives both factors random
values with :func:`randomize_lora`.
"""

from __future__ import annotations

import torch

import lora_basics as lora


@torch.no_grad()
def randomize_lora(module: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Fill every LoRA factor of ``module`` with normal(0, std) values (so the update is non-zero).

    Call it in train mode (unmerged): changing the factors of a merged layer would make its later
    unmerge take out a different update than the one merged in.
    """
    generator = torch.Generator().manual_seed(seed)
    for name in lora.lora_parameter_names(module):
        param = module.get_parameter(name)
        param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float32) * std)
    return module


def make_layer(kind: str, dtype: torch.dtype = torch.float32, **kwargs) -> tuple[torch.nn.Module, torch.Tensor]:
    """A small LoRA layer of ``kind`` with a random update, and a matching input."""
    torch.manual_seed(0)
    if kind == "linear":
        layer = lora.Linear(12, 10, r=4, lora_alpha=8, dtype=dtype, **kwargs)
        x = torch.randn(3, 5, 12, dtype=dtype)
    elif kind == "linear_fifo":
        layer = lora.Linear(12, 10, r=4, lora_alpha=8, fan_in_fan_out=True, dtype=dtype, **kwargs)
        x = torch.randn(3, 5, 12, dtype=dtype)
    elif kind == "merged":
        layer = lora.MergedLinear(12, 18, r=2, lora_alpha=4, enable_lora=[True, False, True], dtype=dtype, **kwargs)
        x = torch.randn(3, 5, 12, dtype=dtype)
    elif kind == "embedding":
        layer = lora.Embedding(20, 8, r=3, lora_alpha=6, padding_idx=0, dtype=dtype, **kwargs)
        x = torch.randint(0, 20, (3, 7))
    elif kind == "conv1d":
        layer = lora.Conv1d(4, 6, 3, r=2, lora_alpha=4, padding=1, dtype=dtype, **kwargs)
        x = torch.randn(2, 4, 9, dtype=dtype)
    elif kind == "conv2d":
        layer = lora.Conv2d(4, 6, 3, r=2, lora_alpha=4, padding=1, groups=2, dtype=dtype, **kwargs)
        x = torch.randn(2, 4, 7, 7, dtype=dtype)
    elif kind == "conv3d":
        layer = lora.Conv3d(3, 4, (3, 2, 3), r=2, lora_alpha=4, dtype=dtype, **kwargs)
        x = torch.randn(2, 3, 5, 4, 6, dtype=dtype)
    else:
        raise ValueError(kind)
    return randomize_lora(layer), x


LAYER_KINDS = ["linear", "linear_fifo", "merged", "embedding", "conv1d", "conv2d", "conv3d"]


def tiny_gpt2(seed: int = 0):
    """A randomly initialised Hugging Face GPT-2 (nothing downloaded), untied so that wte and lm_head are
    separate. Needs ``transformers`` (tests that use it skip without it)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, tie_word_embeddings=False
    )
    return transformers.GPT2LMHeadModel(config).eval()
