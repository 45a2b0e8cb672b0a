"""Dropout: train mode only, element-wise on the input before A, independently per token."""

from __future__ import annotations

import torch

import lora_basics as lora


def identity_lora(p: float) -> lora.Linear:
    """A Linear whose output is exactly its LoRA path applied to dropout(x): W0 = 0, A = B = I."""
    layer = lora.Linear(6, 6, r=6, lora_alpha=6, lora_dropout=p, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.lora_A.copy_(torch.eye(6))
        layer.lora_B.copy_(torch.eye(6))
    return layer


def test_dropout_is_elementwise_on_the_input_in_train_mode():
    torch.manual_seed(0)
    layer = identity_lora(0.5)
    x = torch.rand(400, 6) + 1.0  # no zeros in x
    y = layer(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], (x / 0.5)[kept])  # kept elements are scaled by 1 / (1 - p)
    assert 0.4 < kept.float().mean().item() < 0.6
    rows = {tuple(row.tolist()) for row in kept}
    assert len(rows) > 40  # each token (row) gets its own mask; elements within a row differ too
    assert any(0 < sum(row) < 6 for row in rows)


def test_no_dropout_in_eval_mode_merged_or_not():
    layer = identity_lora(0.5)
    x = torch.rand(10, 6) + 1.0
    layer.eval()
    torch.testing.assert_close(layer(x), x)
    unmerged = identity_lora(0.5)
    unmerged.merge_weights = False
    unmerged.eval()
    assert not unmerged.merged
    torch.testing.assert_close(unmerged(x), x)


def test_dropout_does_not_touch_the_base_path():
    torch.manual_seed(0)
    layer = lora.Linear(6, 4, r=2, lora_dropout=0.9)  # B = 0: the output is the base path alone
    x = torch.randn(50, 6)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_merged_linear_dropout_before_A():
    torch.manual_seed(0)
    layer = lora.MergedLinear(6, 12, r=6, lora_alpha=6, lora_dropout=0.5, enable_lora=[True, False], bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.lora_A.copy_(torch.eye(6))
        layer.lora_B.copy_(torch.eye(6))
    x = torch.rand(100, 6) + 1.0
    y = layer(x)
    assert torch.all(y[:, 6:] == 0)
    assert set(torch.unique(y[:, :6] / x).round(decimals=4).tolist()) == {0.0, 2.0}
