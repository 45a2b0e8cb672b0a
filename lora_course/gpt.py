"""A tiny GPT-2-style language model: the base model that notebook 09 adapts with LoRA.

It has GPT-2's layout and module names, so LoRA targets read as they would on the real model
(``h.0.attn.c_attn``, ``h.0.mlp.c_fc``, ``wte``, ...):

    wte (vocab, d) + wpe (block, d) -> n_layer x Block -> ln_f -> lm_head (d -> vocab)
    Block:  x + attn(ln_1(x)),  then  x + mlp(ln_2(x))
    attn:   c_attn (d -> 3d, fused Q|K|V), causal attention over n_head heads, c_proj (d -> d)
    mlp:    c_fc (d -> 4d), GELU, c_proj (4d -> d)

The projections are :class:`Conv1D` layers, which store their weight ``(in, out)`` as GPT-2 does
(a LoRA layer wrapping them needs ``fan_in_fan_out=True``). Unlike GPT-2, ``lm_head`` is not tied
to ``wte``: a LoRA update of the embedding table then does not also change the output layer.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of a :class:`GPT`. The defaults are the pretrained ``data/tiny_gpt.pt`` (~0.5 M parameters)."""

    vocab_size: int = 15
    block_size: int = 16
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 144

    def to_dict(self) -> dict:
        return asdict(self)


class Conv1D(nn.Module):
    """GPT-2's "Conv1D": a linear layer whose weight is stored ``(in, out)`` (transposed to ``nn.Linear``).

    ``y = x @ weight + bias``; ``weight``: ``(nx, nf)``, ``bias``: ``(nf,)``; input ``(..., nx)`` ->
    output ``(..., nf)``. The argument order ``Conv1D(nf, nx)`` is Hugging Face's.
    """

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, self.nx), self.weight)  # (tokens, nf)
        return out.view(*x.shape[:-1], self.nf)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}"


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd={config.n_embd} must be a multiple of n_head={config.n_head}")
        self.n_head = config.n_head
        self.c_attn = Conv1D(3 * config.n_embd, config.n_embd)  # fused Q|K|V: (d, 3d)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)  # 3 x (batch, time, d)
        # (batch, n_head, time, head_dim)
        q, k, v = (t.view(batch, time, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (batch, n_head, time, head_dim)
        return self.c_proj(y.transpose(1, 2).reshape(batch, time, d))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Conv1D(4 * config.n_embd, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, 4 * config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token ids ``(batch, time)`` -> next-token logits ``(batch, time, vocab_size)``."""

    def __init__(self, config: GPTConfig | None = None):
        super().__init__()
        self.config = config or GPTConfig()
        c = self.config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.h = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        for module in (self.wte, self.wpe, self.lm_head):
            nn.init.normal_(module.weight, std=0.02)
        # GPT-2: scale the init of the projections that write into the residual stream by 1/sqrt(2 * n_layer).
        for block in self.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, std=0.02 / (2 * c.n_layer) ** 0.5)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        time = idx.shape[1]
        if time > self.config.block_size:
            raise ValueError(f"sequence length {time} exceeds block_size={self.config.block_size}")
        x = self.wte(idx) + self.wpe(torch.arange(time, device=idx.device))  # (batch, time, d)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (batch, time, vocab)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding: append ``max_new_tokens`` argmax tokens to ``idx`` ``(batch, time)``."""
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.block_size :])[:, -1]  # (batch, vocab)
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
        return idx


def _find_checkpoint() -> Path:
    """Where ``data/tiny_gpt.pt`` is: inside the installed package, or in the checkout's ``data/``.

    ``pip install .`` (and an install from the repository URL) ship the repository's ``data/`` as the package
    data ``lora_course/data/`` (see pyproject.toml); an editable install or a checkout reads ``data/`` itself.
    Either way the path does not depend on the working directory.
    """
    installed = importlib.resources.files("lora_course") / "data" / "tiny_gpt.pt"
    if installed.is_file():
        return Path(str(installed))
    return Path(__file__).resolve().parent.parent / "data" / "tiny_gpt.pt"


#: The committed checkpoint (made by ``python -m lora_course.pretrain``).
CHECKPOINT = _find_checkpoint()


def load_pretrained(path: str | Path | BinaryIO = CHECKPOINT) -> GPT:
    """The pretrained tiny GPT of ``data/tiny_gpt.pt`` (or of an open binary file holding it), in eval mode."""
    if isinstance(path, (str, Path)) and not Path(path).is_file():
        raise FileNotFoundError(
            f"no pretrained tiny GPT at {path}: in a checkout it is data/tiny_gpt.pt (`make data` rebuilds it); "
            "an installed lora-basics ships it as lora_course/data/tiny_gpt.pt"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
