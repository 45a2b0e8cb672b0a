"""The course's tiny GPT as a Hugging Face ``transformers.GPT2LMHeadModel`` (lesson 12: from scratch to PEFT).

:class:`lora_course.gpt.GPT` has GPT-2's layout and names on purpose, so the conversion is a renaming of
its state dict (``h.0.attn.c_attn.weight`` -> ``transformer.h.0.attn.c_attn.weight``; both store the
``Conv1D`` weights ``(in, out)``). The Hugging Face model is configured to compute the same function:
tanh-GELU, no dropout, an untied ``lm_head``. Nothing is downloaded: the model is built from a config.
"""

from __future__ import annotations

import torch

from .gpt import GPT


def to_hf_gpt2(model: GPT):
    """A ``GPT2LMHeadModel`` holding ``model``'s weights (a copy), in the same train/eval mode.

    Needs the ``transformers`` package (the notebooks extra installs it).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    config = GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.block_size,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        activation_function="gelu_new",  # GPT-2's tanh approximation, as gpt.MLP uses
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,  # nn.LayerNorm's default
        tie_word_embeddings=False,  # gpt.GPT keeps lm_head apart from wte
        bos_token_id=None,
        eos_token_id=None,
    )
    hf = GPT2LMHeadModel(config)
    state = {
        ("" if key.startswith("lm_head") else "transformer.") + key: value for key, value in model.state_dict().items()
    }
    missing, unexpected = hf.load_state_dict(state, strict=False)
    # Hugging Face may register non-persistent helper buffers; every weight must have come from `model`.
    weights = {name for name, _ in hf.named_parameters()}
    if unexpected or weights & set(missing):
        raise ValueError(
            f"tiny GPT and GPT-2 layouts differ: missing {sorted(weights & set(missing))}, unexpected {unexpected}"
        )
    return hf.train(model.training)


@torch.no_grad()
def logits_of(model, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``(batch, time, vocab)`` of either a :class:`GPT` or a Hugging Face causal LM."""
    out = model(tokens)
    return out.logits if hasattr(out, "logits") else out
