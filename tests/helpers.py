"""Helpers shared by the tests: small layers with a *non-zero* LoRA update, and a small GPT to adapt.

At initialisation ``B = 0`` (or ``A = 0`` for Embedding), so the update is zero and merged ==
unmerged would hold trivially. Every test that compares paths first gives both factors random
values with :func:`randomize_lora`.
"""

from __future__ import annotations

import torch
from torch import nn

import lora_basics as lora
from lora_course.gpt import GPT, GPTConfig


@torch.no_grad()
def randomize_lora(module: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Fill every LoRA factor of ``module`` with normal(0, std) values (so the update is non-zero), and
    every DoRA magnitude with 1 + normal(0, std).

    Call it in train mode (unmerged): a merged layer keeps serving the update it merged (and takes
    exactly that one out again on ``train()``).
    """
    generator = torch.Generator().manual_seed(seed)
    for name in lora.lora_parameter_names(module):
        param = module.get_parameter(name)
        values = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std
        # A DoRA magnitude near 1 (a row norm), not near 0, where the layer would switch its outputs off.
        param.copy_(1 + values if name.endswith("lora_magnitude") else values)
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
    elif kind == "dora":
        layer = lora.Linear(12, 10, r=4, lora_alpha=8, fan_in_fan_out=True, use_dora=True, dtype=dtype, **kwargs)
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


LAYER_KINDS = ["linear", "linear_fifo", "dora", "merged", "embedding", "conv1d", "conv2d", "conv3d"]


# -- a small GPT (lesson 09's architecture) for the model-level tools -----------------------------

SMALL = GPTConfig(vocab_size=16, block_size=16, n_layer=2, n_head=2, n_embd=16)
QV = {"target_modules": ["c_attn"], "r": 4, "lora_alpha": 8, "enable_lora": {"c_attn": [True, False, True]}}
ALL = {"target_modules": ["c_attn", "c_proj", "c_fc", "lm_head", "wte"], "r": 2, "lora_alpha": 4}


def base_model(seed: int = 0) -> GPT:
    """A small "pretrained" GPT in eval mode."""
    torch.manual_seed(seed)
    model = GPT(SMALL)
    with torch.no_grad():  # non-trivial biases and layer norms, so that every weight matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with random (non-zero) LoRA factors, in eval mode. Changed in train mode: a merged
    layer keeps serving the update it merged until it is unmerged."""
    return randomize_lora(model.train(), seed=seed).eval()


def tokens() -> torch.Tensor:
    return torch.randint(0, SMALL.vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))


# -- the classroom exercises -----------------------------------------------------------------------


def run_cells(path, namespace: dict | None = None) -> dict:
    """Execute every code cell of notebook ``path`` in one namespace, in this process; return the namespace.

    ``namespace["__stdout__"]`` holds what the cells printed.
    """
    import contextlib
    import io

    import nbformat

    namespace = {"__name__": "__main__"} if namespace is None else namespace
    nb = nbformat.read(path, as_version=4)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        for cell in nb.cells:
            if cell.cell_type == "code":
                exec(compile(cell.source, str(path), "exec"), namespace)  # noqa: S102
    namespace["__stdout__"] = out.getvalue()
    return namespace


def solved_copy(nb):
    """What a learner who solved every exercise hands in: the instructor notebook without its markers and outputs."""
    import copy

    from lora_course.exercises import BEGIN, END

    solved = copy.deepcopy(nb)
    for cell in solved.cells:
        if cell.cell_type == "code":
            cell.source = "\n".join(line for line in cell.source.split("\n") if line.strip() not in (BEGIN, END))
            cell.outputs, cell.execution_count = [], None
    return solved


def tiny_gpt2(seed: int = 0):
    """A randomly initialised Hugging Face GPT-2 (nothing downloaded), untied so that wte and lm_head are
    separate. Needs ``transformers`` (tests that use it skip without it)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, tie_word_embeddings=False
    )
    return transformers.GPT2LMHeadModel(config).eval()
