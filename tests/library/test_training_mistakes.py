"""Training mistakes never destroy the frozen weight, and add_lora never silently changes what a model computes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

import lora_basics as lora
from lora_basics import add_lora
from tests.helpers import make_layer, randomize_lora

# -- factors changed while merged ---------------------------------------------------------------


def test_an_optimizer_step_after_eval_does_not_move_the_frozen_weight(kind):
    layer, x = make_layer(kind)
    w0 = layer.frozen_weight.detach().clone()
    optimizer = torch.optim.SGD([layer.lora_A, layer.lora_B], lr=0.5)
    layer(x).float().pow(2).mean().backward()  # a training step's gradients ...
    layer.eval()  # ... an evaluation in between ...
    optimizer.step()  # ... and the step lands on a merged layer
    layer.train()
    torch.testing.assert_close(layer.frozen_weight, w0, rtol=0, atol=1e-6)
    expected = layer(x)  # W0 with the stepped factors, unmerged
    torch.testing.assert_close(layer.eval()(x), expected, rtol=1e-5, atol=1e-5)


def test_factors_zeroed_while_merged_come_out_as_merged(kind):
    layer, x = make_layer(kind)
    w0 = layer.frozen_weight.detach().clone()
    layer.eval()
    with torch.no_grad():
        layer.lora_B.zero_()
    # The state dict pairs its weight with the factors it saves: W0, recorded as not merged.
    state = layer.state_dict()
    assert state._metadata[""]["lora_merged"] is False
    torch.testing.assert_close(state[layer.frozen_weight_name], w0, rtol=0, atol=1e-6)
    layer.train()
    torch.testing.assert_close(layer.frozen_weight, w0, rtol=0, atol=1e-6)


# -- non-finite updates ---------------------------------------------------------------------------


def test_a_nan_factor_is_never_merged_and_the_layer_stays_usable(kind):
    layer, x = make_layer(kind)
    w0 = layer.frozen_weight.detach().clone()
    good_A = layer.lora_A.detach().clone()
    with torch.no_grad():
        layer.lora_A[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="LoRA update is not finite"):
        layer.eval()
    assert not layer.merged and torch.equal(layer.frozen_weight, w0)
    with torch.no_grad():
        layer.lora_A.copy_(good_A)  # fixed: merging works again
    layer.eval()
    assert layer.merged
    layer.train()
    torch.testing.assert_close(layer.frozen_weight, w0, rtol=0, atol=1e-6)


def test_an_fp16_overflow_is_never_merged():
    layer = lora.Linear(8, 4, r=2, lora_alpha=2, dtype=torch.float16)
    w0 = layer.weight.detach().clone()
    with torch.no_grad():
        layer.lora_A.fill_(200.0)
        layer.lora_B.fill_(200.0)  # each entry of the update: 2 * 200 * 200 = 80,000 > 65,504
    with pytest.raises(FloatingPointError, match="float16"):
        layer.merge()
    assert not layer.merged and torch.equal(layer.weight, w0)


def test_non_finite_factors_loaded_into_a_merged_layer_are_refused():
    layer, x = make_layer("linear")
    layer.eval()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    spoiled = {"lora_B": torch.full_like(layer.lora_B, float("inf"))}
    with pytest.raises(FloatingPointError):
        layer.load_state_dict(spoiled, strict=False)
    assert layer.merged
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("alpha", [float("inf"), float("nan")])
def test_an_infinite_lora_alpha_is_refused_at_construction(alpha):
    with pytest.raises(ValueError, match="lora_alpha must be"):
        lora.Linear(4, 4, r=2, lora_alpha=alpha)


# -- add_lora: exact, or refused up front -------------------------------------------------------


class Net(nn.Module):
    def __init__(self, **modules):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)


class ScaledLinear(nn.Linear):
    """An nn.Linear subclass with its own forward: the LoRA layer could not reproduce it."""

    def forward(self, x):
        return 2 * super().forward(x)


def parametrized_linear() -> nn.Linear:
    layer = nn.Linear(6, 6)
    parametrize.register_parametrization(layer, "weight", nn.Identity())
    return layer


def pruned_linear() -> nn.Linear:
    layer = nn.Linear(6, 6)
    prune.l1_unstructured(layer, "weight", amount=0.5)
    return layer


@pytest.mark.parametrize(
    "module, target, reason",
    [
        (nn.Embedding(10, 6, max_norm=1.0), "m", "max_norm=1.0"),
        (ScaledLinear(6, 6), "m", "ScaledLinear subclasses nn.Linear with its own forward"),
        (nn.MultiheadAttention(6, 2), "out_proj", "never calls out_proj's forward"),
        (parametrized_linear(), "m", "parametrized"),
        (pruned_linear(), "m", "hooks"),
    ],
    ids=["max_norm", "own forward", "attention out_proj", "parametrized", "pruned"],
)
def test_add_lora_refuses_what_it_could_not_reproduce(module, target, reason):
    model = Net(m=module)
    types = [type(m) for m in model.modules()]
    with pytest.raises((TypeError, ValueError), match=rf"cannot add LoRA to module '(m\.)?{target}'.*{reason}"):
        add_lora(model, [target], r=2)
    assert [type(m) for m in model.modules()] == types
    assert all(p.requires_grad for p in model.parameters() if p.is_leaf)  # nothing frozen


def test_a_sparse_embedding_is_adapted_exactly():
    torch.manual_seed(0)
    plain = nn.Embedding(12, 6, sparse=True, padding_idx=0)
    model = randomize_lora(add_lora(Net(emb=copy.deepcopy(plain)), ["emb"], r=2).train())
    ids = torch.randint(0, 12, (3, 5))
    out = model.emb(ids)
    out.pow(2).sum().backward()  # a sparse frozen table no longer breaks the LoRA gradient
    assert model.emb.lora_A.grad is not None and model.emb.lora_A.grad.abs().sum() > 0
    expected = nn.functional.embedding(ids, plain.weight + model.emb.delta_weight().detach(), padding_idx=0)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(model.eval().emb(ids), expected)


@pytest.mark.parametrize(
    "targets, settings, error, message",
    [
        (
            (name for name in ["m"]),
            {},
            TypeError,
            "target_modules must be a list of names such as \\['c_attn'\\], got a generator",
        ),
        ([], {}, ValueError, "target_modules is empty"),
        (["m"], {"r": 0}, ValueError, "r must be r >= 1, got r=0"),
    ],
    ids=["generator", "empty", "r=0"],
)
def test_add_lora_refuses_targets_that_would_only_freeze_the_model(targets, settings, error, message):
    model = Net(m=nn.Linear(4, 4))
    with pytest.raises(error, match=message):
        add_lora(model, targets, **settings)
    assert type(model.m) is nn.Linear and all(p.requires_grad for p in model.parameters())
