"""mark_only_lora_as_trainable and lora_state_dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lora_basics as lora


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        lora.Embedding(20, 8, r=2),
        lora.Linear(8, 8, r=2),
        nn.LayerNorm(8),
        lora.MergedLinear(8, 12, r=2, enable_lora=[True, False, True]),
        lora.Linear(12, 4, r=0),  # LoRA off: a plain layer
        nn.Linear(4, 3),
        lora.LoRALinear(3, 3, lora.LoRAConfig(lora_r=1)),
    )


LORA = {"0.lora_A", "0.lora_B", "1.lora_A", "1.lora_B", "3.lora_A", "3.lora_B", "6.A.weight", "6.B.weight"}
ALL_BIASES = {"1.bias", "2.bias", "3.bias", "4.bias", "5.bias", "6.bias"}
LORA_BIASES = {"1.bias", "3.bias", "6.bias"}  # biases of the layers that carry LoRA


def trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("bias, extra", [("none", set()), ("all", ALL_BIASES), ("lora_only", LORA_BIASES)])
def test_mark_only_lora_as_trainable(bias, extra):
    model = make_model()
    lora.mark_only_lora_as_trainable(model, bias=bias)
    assert trainable(model) == LORA | extra


def test_lora_parameters_are_unfrozen_even_if_the_model_was_frozen():
    model = make_model()
    model.requires_grad_(False)  # e.g. frozen before LoRA was set up; loralib leaves LoRA frozen too
    lora.mark_only_lora_as_trainable(model, bias="lora_only")
    assert trainable(model) == LORA | LORA_BIASES


@pytest.mark.parametrize("bias, extra", [("none", set()), ("all", ALL_BIASES), ("lora_only", LORA_BIASES)])
def test_lora_state_dict_is_exactly_the_lora_tensors(bias, extra):
    model = make_model()
    state = lora.lora_state_dict(model, bias=bias)
    assert set(state) == LORA | extra
    full = model.state_dict()
    for key, value in state.items():
        assert torch.equal(value, full[key])


def test_lora_state_dict_round_trip_into_a_fresh_model():
    model = make_model()
    with torch.no_grad():
        for name in lora.lora_parameter_names(model):
            model.get_parameter(name).normal_()
    fresh = make_model()
    result = fresh.load_state_dict(lora.lora_state_dict(model), strict=False)
    assert not result.unexpected_keys
    ids = torch.randint(0, 20, (2, 5))
    torch.testing.assert_close(fresh(ids), model(ids))


def test_training_changes_only_lora_parameters():
    model = make_model()
    lora.mark_only_lora_as_trainable(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randint(0, 20, (4, 5))).pow(2).mean().backward()
        optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= LORA
