"""Bad input fails at construction with an error naming the argument, the value and what is allowed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lora_basics as lora

LAYERS = {
    "Linear": lambda **kw: lora.Linear(8, 6, **kw),
    "MergedLinear": lambda **kw: lora.MergedLinear(8, 6, enable_lora=[True, False], **kw),
    "Embedding": lambda **kw: lora.Embedding(10, 6, **kw),
    "Conv2d": lambda **kw: lora.Conv2d(3, 6, 3, **kw),
}


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize(
    "r, error, message",
    [
        (-1, ValueError, r"r must be r >= 0 .*got r=-1"),
        (2.5, TypeError, r"r must be an int, got 2.5"),
        ("4", TypeError, r"r must be an int, got '4'"),
        (True, TypeError, r"r must be an int, got True"),
    ],
)
def test_bad_rank(layer, r, error, message):
    with pytest.raises(error, match=message):
        LAYERS[layer](r=r)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("alpha", [0, -2.0])
def test_non_positive_alpha_with_lora(layer, alpha):
    with pytest.raises(ValueError, match=rf"lora_alpha must be > 0 when r > 0, got lora_alpha={alpha}"):
        LAYERS[layer](r=2, lora_alpha=alpha)
    LAYERS[layer](r=0, lora_alpha=alpha)  # r = 0: LoRA is off, alpha unused


@pytest.mark.parametrize("layer", ["Linear", "MergedLinear", "Conv2d"])
@pytest.mark.parametrize("p, error", [(1.0, ValueError), (-0.1, ValueError), (1.5, ValueError), ("0.1", TypeError)])
def test_dropout_outside_unit_interval(layer, p, error):
    with pytest.raises(error, match=r"lora_dropout must be .*\[0, 1\)"):
        LAYERS[layer](r=2, lora_dropout=p)


@pytest.mark.parametrize(
    "enable_lora, error, message",
    [
        ([], ValueError, "enable_lora must not be empty"),
        ([1, 0, 1], TypeError, r"enable_lora must contain only True/False, got \[1, 0, 1\]"),
        ("TFT", TypeError, "enable_lora must be a list of bools"),
        (True, TypeError, "enable_lora must be a list of bools"),
        ([True, False, True, False], ValueError, r"len\(enable_lora\)=4 must divide out_features=6"),
    ],
)
def test_bad_enable_lora(enable_lora, error, message):
    with pytest.raises(error, match=message):
        lora.MergedLinear(8, 6, r=2, enable_lora=enable_lora)


@pytest.mark.parametrize("layer", ["Embedding", "Conv2d"])
def test_fan_in_fan_out_where_it_cannot_apply(layer):
    with pytest.raises(TypeError, match=rf"{layer} got fan_in_fan_out=True, but fan_in_fan_out is only for Linear"):
        LAYERS[layer](r=2, fan_in_fan_out=True)


def test_fan_in_fan_out_must_be_a_flag():
    with pytest.raises(TypeError, match=r"fan_in_fan_out must be True or False \(or 0/1\), got 2"):
        lora.Linear(4, 4, r=2, fan_in_fan_out=2)


def test_config_missing_attributes():
    class NoDropout:
        lora_r = 4

    with pytest.raises(
        TypeError, match="config must have attributes lora_r and lora_dropout; NoDropout is missing lora_dropout"
    ):
        lora.LoRALinear(4, 4, NoDropout())
    with pytest.raises(TypeError, match="missing lora_r, lora_dropout"):
        lora.LoRALinear(4, 4, object())
    with pytest.raises(ValueError, match="r must be r >= 1, got r=0"):
        lora.LoRALinear(4, 4, lora.LoRAConfig(lora_r=0))


@pytest.mark.parametrize("function", [lora.mark_only_lora_as_trainable, lora.lora_state_dict])
def test_unknown_bias_mode(function):
    with pytest.raises(ValueError, match=r"bias must be one of \('none', 'all', 'lora_only'\), got bias='some'"):
        function(lora.Linear(4, 4, r=2), bias="some")


def test_state_dict_with_wrong_lora_shapes_names_the_key_and_both_shapes():
    model = nn.Sequential(lora.Linear(8, 6, r=2))
    other = nn.Sequential(lora.Linear(8, 6, r=4))
    with pytest.raises(ValueError, match=r"'0.lora_A' has shape \(4, 8\), but this Linear expects \(2, 8\) \(r=2\)"):
        model.load_state_dict(other.state_dict())
    merged = lora.MergedLinear(8, 6, r=2, enable_lora=[True, False, True])
    with pytest.raises(ValueError, match=r"'lora_A' has shape \(2, 8\), but this MergedLinear expects \(4, 8\)"):
        merged.load_state_dict(lora.MergedLinear(8, 6, r=2, enable_lora=[False, True, False]).state_dict())


def test_a_failed_load_leaves_a_merged_layer_untouched():
    layer = lora.Linear(8, 6, r=2)
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.eval()
    before = layer.weight.clone()
    with pytest.raises(ValueError):
        layer.load_state_dict(lora.Linear(8, 6, r=3).state_dict())
    assert layer.merged and torch.equal(layer.weight, before)


def test_embedding_max_norm_is_refused_with_lora():
    with pytest.raises(ValueError, match="max_norm=1.0 is not supported with r > 0"):
        lora.Embedding(10, 4, r=2, max_norm=1.0)


def test_merge_weights_must_be_bool():
    with pytest.raises(TypeError, match=r"merge_weights must be True or False \(or 0/1\), got 'yes'"):
        lora.Linear(4, 4, r=2, merge_weights="yes")
