"""Model-level LoRA (inject.py, adapter_file.py, export.py) on the tiny GPT: injection, adapter files, merge and export."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lora_basics as lora
from lora_basics import (
    adapter_settings,
    add_lora,
    load_adapter,
    merge_and_export,
    parameter_counts,
    save_adapter,
    trainable_summary,
)
from lora_course.gpt import GPT, Conv1D, GPTConfig
from tests.helpers import ALL, QV, SMALL, base_model, randomized, tokens


@pytest.fixture(params=["qv", "all"])
def settings(request) -> dict:
    return QV if request.param == "qv" else ALL


def test_injection_picks_the_right_layer_types():
    model = add_lora(base_model(), **ALL)
    assert isinstance(model.h[0].attn.c_attn, lora.Linear) and model.h[0].attn.c_attn.fan_in_fan_out
    assert isinstance(model.h[1].mlp.c_proj, lora.Linear) and model.h[1].mlp.c_proj.fan_in_fan_out
    assert isinstance(model.lm_head, lora.Linear) and not model.lm_head.fan_in_fan_out
    assert isinstance(model.wte, lora.Embedding)
    assert type(model.wpe) is nn.Embedding  # not a target
    qv = add_lora(base_model(), **QV)
    assert isinstance(qv.h[0].attn.c_attn, lora.MergedLinear)
    assert qv.h[0].attn.c_attn.enable_lora == [True, False, True]
    assert type(qv.h[0].attn.c_proj) is Conv1D


def test_injection_keeps_outputs_identical(settings):
    base, x = base_model(), tokens()
    expected = base(x)
    model = add_lora(copy.deepcopy(base), **settings)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)  # eval mode: merged, and the update is 0
    model.train()
    torch.testing.assert_close(model(x), expected)  # unmerged: separate low-rank path, still 0


def test_only_lora_is_trainable_and_counted(settings):
    model = add_lora(base_model(), **settings)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora.lora_parameter_names(model)) and trainable
    counts = parameter_counts(model)
    assert counts["trainable"] == counts["lora"] == sum(model.get_parameter(n).numel() for n in trainable)
    assert counts["total"] == sum(p.numel() for p in base_model().parameters()) + counts["lora"]
    assert trainable_summary(model).startswith(f"trainable params: {counts['trainable']:,} || all params: ")


def test_save_load_merge_export_round_trip(settings, tmp_path):
    base, x = base_model(), tokens()
    model = randomized(add_lora(copy.deepcopy(base), **settings))
    expected = model(x)
    assert not torch.allclose(expected, base(x))  # the update is not zero
    path = tmp_path / "adapter.pt"
    save_adapter(model, path)
    saved = torch.load(path, weights_only=True)
    assert set(saved["tensors"]) == set(lora.lora_parameter_names(model))  # only the LoRA tensors
    # into a fresh base: LoRA is injected as saved, then loaded
    reloaded = load_adapter(copy.deepcopy(base), path).eval()
    assert adapter_settings(reloaded) == adapter_settings(model)
    torch.testing.assert_close(reloaded(x), expected, rtol=0, atol=0)
    exported = merge_and_export(reloaded)
    modules = {type(m).__module__ for m in exported.modules()}
    assert not any(name.startswith("lora_basics") for name in modules), modules
    assert not any(isinstance(m, lora.LoRALayer) for m in exported.modules())
    torch.testing.assert_close(exported(x), expected, rtol=0, atol=0)
    # a plain state dict: it loads into a freshly built base model
    plain = GPT(SMALL).eval()
    plain.load_state_dict(exported.state_dict())
    torch.testing.assert_close(plain(x), expected, rtol=0, atol=0)
    # export does not touch the LoRA model, in train mode (unmerged) too
    reloaded.train()
    torch.testing.assert_close(merge_and_export(reloaded).eval()(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reloaded.eval()(x), expected, rtol=0, atol=0)


def test_switching_adapters_on_one_base(tmp_path):
    base, x = base_model(), tokens()
    outputs = []
    for seed in (1, 2):
        model = randomized(add_lora(copy.deepcopy(base), **QV), seed=seed)
        save_adapter(model, tmp_path / f"{seed}.pt")
        outputs.append(model(x))
    model = load_adapter(copy.deepcopy(base), tmp_path / "1.pt").eval()
    for seed in (2, 1, 2):
        load_adapter(model, tmp_path / f"{seed}.pt")  # into a merged model: unmerge, load, merge
        torch.testing.assert_close(model(x), outputs[seed - 1], rtol=1e-5, atol=1e-6)


def test_wrong_settings_raise(tmp_path):
    base = base_model()
    path = tmp_path / "adapter.pt"
    save_adapter(randomized(add_lora(copy.deepcopy(base), **QV)), path)
    other_r = add_lora(copy.deepcopy(base), **{**QV, "r": 8})
    with pytest.raises(ValueError, match=r"h.0.attn.c_attn: r is 4 in the adapter, 8 in the model"):
        load_adapter(other_r, path)
    other_alpha = add_lora(copy.deepcopy(base), **{**QV, "lora_alpha": 16})
    with pytest.raises(ValueError, match="lora_alpha is 8.0 in the adapter, 16.0 in the model"):
        load_adapter(other_alpha, path)
    other_slices = add_lora(copy.deepcopy(base), **{**QV, "enable_lora": {"c_attn": [True, True, True]}})
    with pytest.raises(ValueError, match="enable_lora is"):
        load_adapter(other_slices, path)
    other_targets = add_lora(copy.deepcopy(base), **ALL)
    with pytest.raises(ValueError, match="the model has a LoRA layer 'h.0.attn.c_proj' that the adapter does not"):
        load_adapter(other_targets, path)
    with pytest.raises(ValueError, match="not a lora_basics adapter"):
        torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
        load_adapter(copy.deepcopy(base), tmp_path / "other.pt")


def test_wrong_base_raises(tmp_path):
    path = tmp_path / "adapter.pt"
    save_adapter(randomized(add_lora(base_model(), **QV)), path)
    with pytest.raises(ValueError, match=r"wrong base model for this adapter: h.0.attn.c_attn has a weight of shape"):
        load_adapter(GPT(GPTConfig(vocab_size=16, block_size=16, n_layer=2, n_head=2, n_embd=8)), path)
    with pytest.raises(
        ValueError, match="wrong base model for this adapter: the model has no module 'h.1.attn.c_attn'"
    ):
        load_adapter(GPT(GPTConfig(vocab_size=16, block_size=16, n_layer=1, n_head=2, n_embd=16)), path)
    other_weights = base_model(seed=1)  # same architecture, other pretrained weights
    with pytest.raises(ValueError, match=r"wrong base model: the adapter was trained on other pretrained weights"):
        load_adapter(other_weights, path)
    load_adapter(base_model(seed=1), path, check_base=False)  # on purpose: allowed


def test_add_lora_errors():
    with pytest.raises(ValueError, match="target 'q_proj' matches no module"):
        add_lora(base_model(), ["q_proj"])
    with pytest.raises(TypeError, match="target_modules must be a list"):
        add_lora(base_model(), "c_attn")
    with pytest.raises(ValueError, match="enable_lora has keys"):
        add_lora(base_model(), ["c_fc"], enable_lora={"c_attn": [True, False, True]})
    with pytest.raises(TypeError, match=r"module 'h.0.ln_1' \(LayerNorm\): add_lora supports nn.Linear"):
        add_lora(base_model(), ["ln_1"])
    model = add_lora(base_model(), **QV)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        add_lora(model, ["c_fc"])


def test_suffix_patterns():
    model = add_lora(base_model(), ["attn.c_proj"], r=2)
    assert isinstance(model.h[0].attn.c_proj, lora.Linear)
    assert type(model.h[0].mlp.c_proj) is Conv1D
