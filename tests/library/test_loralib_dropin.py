"""Client code written for loralib runs unchanged with ``import lora_basics as lora`` and computes the same.

Each test runs the same client code twice, once with loralib and once with lora_basics, where loralib
is right: its conv structure, subclassing ``LoRALayer``, selection of LoRA parameters by name, and the
flags it accepts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lora_basics as lora
from tests.helpers import randomize_lora

loralib = pytest.importorskip("loralib")


# -- convolutions: loralib's structure ----------------------------------------------------------


@pytest.mark.parametrize("library", [loralib, lora], ids=["loralib", "lora_basics"])
def test_client_code_builds_conv_lora_from_the_torch_class_and_copies_into_conv(library):
    torch.manual_seed(0)
    old = nn.Conv2d(3, 8, 3, padding=1)
    new = library.ConvLoRA(nn.Conv2d, 3, 8, 3, r=2, lora_alpha=4, padding=1)
    with torch.no_grad():
        new.conv.weight.copy_(old.weight)
        new.conv.bias.copy_(old.bias)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(new(x), old(x))  # B = 0: the pretrained convolution
    assert type(new.conv) is nn.Conv2d and not new.conv.weight.requires_grad
    assert sorted(new.state_dict()) == ["conv.bias", "conv.weight", "lora_A", "lora_B"]


def test_conv1d_2d_3d_pass_their_torch_class():
    for cls, torch_conv, x in [
        (lora.Conv1d, nn.Conv1d, torch.randn(1, 4, 9)),
        (lora.Conv2d, nn.Conv2d, torch.randn(1, 4, 9, 9)),
        (lora.Conv3d, nn.Conv3d, torch.randn(1, 4, 5, 5, 5)),
    ]:
        layer = cls(4, 6, 3, r=2, lora_alpha=4, groups=2, lora_dropout=0.1)
        assert type(layer.conv) is torch_conv and layer.conv.groups == 2
        assert layer(x).shape[:2] == (1, 6)


def test_conv_lora_refuses_what_is_not_a_convolution_class():
    with pytest.raises(TypeError, match="conv_module must be nn.Conv1d, nn.Conv2d or nn.Conv3d"):
        lora.ConvLoRA(nn.Linear, 4, 6, 3, r=2)
    with pytest.raises(TypeError, match="conv_module must be"):
        lora.ConvLoRA(nn.Conv2d(4, 6, 3), 4, 6, 3, r=2)  # an instance, not the class


@pytest.mark.parametrize("r", [0, 2])
def test_a_plain_torch_conv_checkpoint_loads_into_conv(r):
    torch.manual_seed(0)
    plain = nn.Conv2d(4, 6, 3, padding=1)
    layer = lora.Conv2d(4, 6, 3, r=r, padding=1)
    result = layer.load_state_dict(plain.state_dict(), strict=r == 0)  # keys weight, bias
    assert not result.unexpected_keys and sorted(result.missing_keys) == (["lora_A", "lora_B"] if r else [])
    x = torch.randn(2, 4, 7, 7)
    for mode in (True, False):
        torch.testing.assert_close(layer.train(mode)(x), plain(x), rtol=0, atol=1e-6)


def test_conv_merges_into_its_child_and_exports_to_it():
    torch.manual_seed(0)
    layer = randomize_lora(lora.Conv2d(4, 6, (3, 1), r=2, lora_alpha=4, padding=(1, 0), groups=2))
    w0 = layer.conv.weight.detach().clone()
    x = torch.randn(2, 4, 7, 7)
    expected = layer(x)
    layer.eval()
    torch.testing.assert_close(layer.conv.weight, w0 + layer.delta_weight())
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    plain = lora.merge_and_export(nn.Sequential(layer))[0]
    assert type(plain) is nn.Conv2d and plain.groups == 2
    torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
    layer.train()
    torch.testing.assert_close(layer.conv.weight, w0, rtol=0, atol=1e-6)


# -- subclassing LoRALayer the loralib way --------------------------------------------------------


def user_layer(base: type):
    """A user's own LoRA layer written as loralib's README suggests: it holds its own weight and
    merges itself in its own ``train()`` (no ``delta_weight``)."""

    class ScaledLinear(base, nn.Module):
        def __init__(self, in_features: int, out_features: int, r: int, lora_alpha: float):
            nn.Module.__init__(self)
            base.__init__(self, r=r, lora_alpha=lora_alpha, lora_dropout=0.0, merge_weights=True)
            self.weight = nn.Parameter(torch.randn(out_features, in_features), requires_grad=False)
            self.lora_A = nn.Parameter(torch.randn(r, in_features))
            self.lora_B = nn.Parameter(torch.randn(out_features, r))
            self.scaling = self.lora_alpha / self.r

        def train(self, mode: bool = True):
            super().train(mode)
            if mode and self.merge_weights and self.merged:
                self.weight.data -= self.lora_B @ self.lora_A * self.scaling
                self.merged = False
            elif not mode and self.merge_weights and not self.merged:
                self.weight.data += self.lora_B @ self.lora_A * self.scaling
                self.merged = True
            return self

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = x @ self.weight.T
            if not self.merged:
                out = out + self.lora_dropout(x) @ self.lora_A.T @ self.lora_B.T * self.scaling
            return out

    return ScaledLinear


def _run_user_layer(library) -> list[torch.Tensor]:
    """Client code: build, train a step, evaluate, save while merged, reload into a fresh layer."""
    torch.manual_seed(0)
    cls = user_layer(library.LoRALayer)
    layer = cls(6, 4, r=2, lora_alpha=4)
    x = torch.randn(3, 6)
    seen = [layer(x).detach()]
    layer(x).pow(2).sum().backward()
    with torch.no_grad():
        layer.lora_B -= 0.1 * layer.lora_B.grad
    layer.eval()
    seen.append(layer(x).detach())
    state = layer.state_dict()  # merged: the user's layer saves what it holds
    seen += [state[key].clone() for key in sorted(state)]
    fresh = cls(6, 4, r=2, lora_alpha=4)
    fresh.load_state_dict(state)
    seen.append(fresh(x).detach())
    fresh.eval()
    seen.append(fresh(x).detach())
    layer.train()
    seen += [layer.weight.detach().clone(), layer(x).detach()]
    return seen


def test_a_user_subclass_of_lora_layer_behaves_as_with_loralib():
    expected, got = _run_user_layer(loralib), _run_user_layer(lora)
    assert len(got) == len(expected)
    for theirs, ours in zip(expected, got, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


# -- LoRA parameters by name, as loralib documents ------------------------------------------------


class Gated(nn.Module):
    """A user's module with its own parameter named ``lora_gate`` (LoRA by loralib's naming rule)."""

    def __init__(self, library):
        super().__init__()
        self.proj = library.Linear(8, 8, r=2)
        self.lora_gate = nn.Parameter(torch.zeros(8))
        self.norm = nn.LayerNorm(8)
        self.register_buffer("bias", torch.tril(torch.ones(4, 4)))  # like GPT-2's causal mask

    def forward(self, x):
        return self.norm(self.proj(x) * torch.sigmoid(self.lora_gate))


@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
def test_selection_by_name_matches_loralib(bias):
    theirs, ours = (nn.Sequential(Gated(library), Gated(library)) for library in (loralib, lora))
    loralib.mark_only_lora_as_trainable(theirs, bias=bias)
    ours.requires_grad_(False)  # frozen before: lora_basics still unfreezes the LoRA parameters
    lora.mark_only_lora_as_trainable(ours, bias=bias)
    trainable = {name for name, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {name for name, p in theirs.named_parameters() if p.requires_grad}
    assert "0.lora_gate" in trainable
    saved = lora.lora_state_dict(ours, bias=bias)
    assert set(saved) == set(loralib.lora_state_dict(theirs, bias=bias))
    assert "1.lora_gate" in saved
    assert ("0.bias" in saved) == (bias != "none")  # the mask buffer too, as loralib


# -- flags ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("true, false", [(np.True_, np.False_), (1, 0)])
def test_flags_accept_numpy_bools_and_0_1_as_loralib_does(true, false):
    torch.manual_seed(0)
    theirs = loralib.Linear(6, 4, r=2, fan_in_fan_out=true, merge_weights=false)
    ours = lora.Linear(6, 4, r=2, fan_in_fan_out=true, merge_weights=false)
    assert ours.fan_in_fan_out is True and ours.merge_weights is False
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(3, 6)
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))
    assert not ours.merged  # merge_weights=0: never merged
    merged = lora.MergedLinear(6, 6, r=2, enable_lora=np.array([True, False, True]), merge_weights=true)
    assert merged.enable_lora == [True, False, True] and merged.merge_weights is True
