"""The tiny GPT converted to a Hugging Face GPT2LMHeadModel computes the same logits, and LoRA carries over."""

from __future__ import annotations

import pytest
import torch

import lora_basics as lora
from lora_course.gpt import load_pretrained
from lora_course.hf import logits_of, to_hf_gpt2

pytest.importorskip("transformers")
TOKENS = torch.randint(0, 15, (4, 16), generator=torch.Generator().manual_seed(0))


def test_the_pretrained_tiny_gpt_and_its_gpt2_twin_agree():
    ours = load_pretrained()
    hf = to_hf_gpt2(ours)
    assert not hf.training and sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in ours.parameters())
    torch.testing.assert_close(logits_of(hf, TOKENS), logits_of(ours, TOKENS), rtol=0, atol=1e-5)


def test_the_same_lora_factors_give_the_same_logits_on_both(tmp_path):
    ours = lora.add_lora(load_pretrained().train(), ["c_attn", "c_fc"], r=2, lora_alpha=4)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in lora.lora_parameter_names(ours):
            ours.get_parameter(name).normal_(std=0.3, generator=generator)
    twin = lora.add_lora(to_hf_gpt2(load_pretrained()).train(), ["c_attn", "c_fc"], r=2, lora_alpha=4)
    twin.load_state_dict({"transformer." + k: v for k, v in lora.lora_state_dict(ours).items()}, strict=False)
    ours.eval(), twin.eval()
    assert not torch.allclose(logits_of(ours, TOKENS), logits_of(load_pretrained(), TOKENS), atol=1e-3)
    torch.testing.assert_close(logits_of(twin, TOKENS), logits_of(ours, TOKENS), rtol=0, atol=1e-5)
