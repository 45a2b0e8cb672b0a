"""The memory arithmetic of lessons 11 and 14, checked against published numbers."""

from __future__ import annotations

import pytest

from lora_course.memory import MODELS, finetune_memory, llama_lora_params


def test_full_fine_tuning_costs_16_bytes_a_parameter():
    assert finetune_memory(1e9, "full")["total"] == pytest.approx(16.0)
    assert finetune_memory(1e9, "full", gpus=8)["total"] == pytest.approx(2.0)


def test_qlora_fits_65b_on_one_48gb_gpu_and_16_bit_lora_does_not():
    # QLoRA's headline (Dettmers et al., 2023): a 65B model fine-tuned on a single 48 GB GPU.
    m = MODELS["65B"]
    trainable = llama_lora_params(m["n_layers"], m["d_model"], m["d_ff"], r=64, targets="all")
    qlora = finetune_memory(m["n_params"], "qlora", trainable)["total"]
    lora = finetune_memory(m["n_params"], "lora", trainable)["total"]
    assert qlora < 48 < lora
    assert 40 < qlora < 48 and lora > 130  # 46.4 and 143.2 GB here (activations come on top)


def test_lora_parameter_counts_match_the_lora_papers_gpt3_example():
    # LoRA paper, Table 4, GPT-3 175B (96 layers, d=12288) with LoRA on W_q and W_v: 4.7M and 37.7M
    # trainable parameters (r = 1 and r = 8).
    assert llama_lora_params(96, 12288, 4 * 12288, r=1, targets="qv") == pytest.approx(4.7e6, rel=0.01)
    assert llama_lora_params(96, 12288, 4 * 12288, r=8, targets="qv") == pytest.approx(37.7e6, rel=0.01)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="method must be"):
        finetune_memory(1e9, "adapter")
    with pytest.raises(ValueError, match="gpus must be"):
        finetune_memory(1e9, "full", gpus=0)
