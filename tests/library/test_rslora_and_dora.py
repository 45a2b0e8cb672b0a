"""rsLoRA (scale lora_alpha / sqrt(r)) and DoRA (a trainable magnitude per output feature), each checked
against its formula and against PEFT's ``use_rslora`` / ``use_dora`` on the same weights and factors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import lora_basics as lora
from lora_basics import dora
from tests.helpers import LAYER_KINDS, base_model, make_layer, randomize_lora, tokens

# -- rsLoRA ---------------------------------------------------------------------------------------


# DoRA normalises the update's direction, so its output is not linear in the scale: its rsLoRA is
# checked against PEFT below.
@pytest.mark.parametrize("kind", [kind for kind in LAYER_KINDS if kind != "dora"])
def test_rslora_scales_by_alpha_over_sqrt_r_in_every_layer(kind):
    plain, x = make_layer(kind)
    stable, _ = make_layer(kind, use_rslora=True)  # the same weights and factors
    assert plain.scaling == plain.lora_alpha / plain.r  # loralib's scale stays the default
    assert stable.use_rslora and stable.scaling == pytest.approx(stable.lora_alpha / math.sqrt(stable.r))
    without_update = copy.deepcopy(plain)
    with torch.no_grad():
        for name in lora.lora_parameter_names(without_update):
            without_update.get_parameter(name).zero_()
    base = without_update(x)
    # y = base + scaling * update: 1/sqrt(r) instead of 1/r makes the update sqrt(r) times larger.
    expected = base + math.sqrt(plain.r) * (plain(x) - base)
    assert not torch.allclose(expected, plain(x))
    torch.testing.assert_close(stable(x), expected)
    torch.testing.assert_close(stable.eval()(x), expected)  # merged, the same update is folded in


def test_rslora_is_refused_when_not_a_flag():
    with pytest.raises(TypeError, match="use_rslora must be True or False"):
        lora.Linear(4, 4, r=2, use_rslora="yes")


def with_same_factors(theirs: nn.Module, ours: nn.Module, seed: int = 0) -> None:
    """Give PEFT's model the factors (and DoRA magnitudes) of ours, by matching parameter names."""
    mine = dict(ours.named_parameters())
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_" not in name:
                continue
            key = name.removeprefix("base_model.model.").replace(".default", "")
            key = key.replace("lora_magnitude_vector.weight", "lora_magnitude").replace(".weight", "")
            key = key.replace("lora_embedding_A", "lora_A").replace("lora_embedding_B", "lora_B")
            param.copy_(mine[key])


def test_rslora_equals_peft_use_rslora():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = nn.Sequential(nn.Embedding(20, 12), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5))
    ours = randomize_lora(lora.add_lora(copy.deepcopy(base), ["0", "1", "3"], r=4, lora_alpha=6, use_rslora=True))
    config = peft.LoraConfig(r=4, lora_alpha=6, target_modules=["0", "1", "3"], use_rslora=True)
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    with_same_factors(theirs, ours)
    x = torch.randint(0, 20, (3, 7))
    difference = (ours(x) - theirs(x)).abs().max().item()
    print(f"rsLoRA vs PEFT, largest difference: {difference:.2e}")
    assert difference <= 1e-5
    assert theirs.base_model.model[1].scaling["default"] == ours[1].scaling == 6 / 2


# -- DoRA: the layer ------------------------------------------------------------------------------


def dora_pair(fan_in_fan_out: bool, lora_dropout: float = 0.0, use_rslora: bool = False):
    """Our DoRA ``Linear`` and PEFT's ``use_dora`` layer on the same pretrained layer, with the same
    random factors and magnitude. With ``fan_in_fan_out`` the base is GPT-2's ``Conv1D`` (weight ``(in, out)``)."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    if fan_in_fan_out:
        conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D
        base = nn.Sequential(conv1d(10, 12))  # 12 -> 10, weight (12, 10)
        nn.init.normal_(base[0].bias)
    else:
        base = nn.Sequential(nn.Linear(12, 10))
    config = dict(r=4, lora_alpha=8, lora_dropout=lora_dropout, use_rslora=use_rslora)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(target_modules=["0"], use_dora=True, **config))
    ours = lora.Linear.from_module(base[0], fan_in_fan_out=fan_in_fan_out, use_dora=True, **config)
    theirs_layer = theirs.base_model.model[0]
    # Both start with the same magnitude: the norms of W0's output rows.
    torch.testing.assert_close(ours.lora_magnitude, theirs_layer.lora_magnitude_vector["default"].weight)
    randomize_lora(ours, std=0.3)
    with torch.no_grad():
        ours.lora_magnitude.add_(1.0)  # a magnitude of its own, not the norms
    with_same_factors(theirs, nn.Sequential(ours))
    return ours, theirs, theirs_layer


@pytest.mark.parametrize("lora_dropout", [0.0, 0.3], ids=["no dropout", "dropout"])
@pytest.mark.parametrize("fan_in_fan_out", [False, True], ids=["nn.Linear", "Conv1D"])
def test_dora_equals_peft_forward_and_gradients(fan_in_fan_out, lora_dropout):
    ours, theirs, theirs_layer = dora_pair(fan_in_fan_out, lora_dropout)
    x = torch.randn(3, 5, 12)
    torch.manual_seed(1)  # the same dropout mask: both draw one mask of x's shape
    y_ours = ours(x)
    torch.manual_seed(1)
    y_theirs = theirs(x)
    target = torch.randn_like(y_ours)
    nn.functional.mse_loss(y_ours, target).backward()  # a training step's gradients
    nn.functional.mse_loss(y_theirs, target).backward()
    pairs = {
        "output": (y_ours, y_theirs),
        "lora_A.grad": (ours.lora_A.grad, theirs_layer.lora_A["default"].weight.grad),
        "lora_B.grad": (ours.lora_B.grad, theirs_layer.lora_B["default"].weight.grad),
        "lora_magnitude.grad": (ours.lora_magnitude.grad, theirs_layer.lora_magnitude_vector["default"].weight.grad),
    }
    differences = {name: (a - b).abs().max().item() for name, (a, b) in pairs.items()}
    print("DoRA vs PEFT, largest differences:", {k: f"{v:.2e}" for k, v in differences.items()})
    print("largest values:", {name: f"{a.abs().max().item():.2f}" for name, (a, _) in pairs.items()})
    assert all(a.abs().max() > 1e-2 for a, _ in pairs.values())  # nothing compared is trivially zero
    assert max(differences.values()) <= 1e-5
    # Merged (eval) they agree too: PEFT computes unmerged, ours from the merged weight.
    ours.eval(), theirs.eval()
    assert ours.merged
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)


def test_dora_equals_peft_with_rslora():
    ours, theirs, _ = dora_pair(fan_in_fan_out=False, use_rslora=True)
    x = torch.randn(4, 12)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("fan_in_fan_out", [False, True])
def test_dora_starts_as_the_pretrained_layer_with_the_row_norms_as_magnitude(fan_in_fan_out):
    torch.manual_seed(0)
    layer = lora.Linear(12, 10, r=4, lora_alpha=8, fan_in_fan_out=fan_in_fan_out, use_dora=True)
    W0 = layer.weight_out_in().detach()  # (out, in)
    assert layer.lora_magnitude.shape == (10,)
    torch.testing.assert_close(layer.lora_magnitude.detach(), W0.norm(dim=1))
    x = torch.randn(6, 12)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, W0, layer.bias))
    # The formula, written out: m ⊙ (W0 + s B A) x / ||W0 + s B A||_row + b.
    randomize_lora(layer)
    direction = W0 + layer.scaling * layer.lora_B.detach() @ layer.lora_A.detach()
    expected = nn.functional.linear(
        x, layer.lora_magnitude.detach()[:, None] * direction / direction.norm(dim=1)[:, None]
    )
    torch.testing.assert_close(layer(x), expected + layer.bias)
    torch.testing.assert_close(layer.forward_formula(x), layer(x))


def test_dora_norm_takes_no_gradient():
    # The norm is a constant of the backward pass (the paper's section 4.3, PEFT): B gets its gradient
    # through the numerator only, so with scale = m / n the gradient of B is scale-weighted LoRA's.
    torch.manual_seed(0)
    layer = randomize_lora(lora.Linear(6, 5, r=2, lora_alpha=2, use_dora=True))
    x = torch.randn(4, 6)
    layer(x).sum().backward()
    scale = (layer.lora_magnitude / dora.weight_norm(layer, layer.weight)).detach()  # (out,)
    after_A = x @ layer.lora_A.detach().T  # (4, r)
    expected = layer.scaling * (scale[:, None] * torch.ones(4, 5).T) @ after_A  # (out, r)
    torch.testing.assert_close(layer.lora_B.grad, expected)


# -- DoRA: merge-on-eval and state dicts -------------------------------------------------------


@pytest.mark.parametrize("fan_in_fan_out", [False, True])
def test_dora_merges_on_eval_and_unmerges_to_W0(fan_in_fan_out):
    torch.manual_seed(0)
    layer = randomize_lora(lora.Linear(64, 48, r=4, lora_alpha=8, fan_in_fan_out=fan_in_fan_out, use_dora=True))
    with torch.no_grad():
        layer.lora_magnitude.mul_(1.3)
    W0 = layer.weight.detach().clone()
    x = torch.randn(5, 64)
    unmerged = layer(x)
    layer.eval()
    assert layer.merged
    direction = W0.T if fan_in_fan_out else W0  # the merged weight, checked against its formula
    direction = direction + layer.scaling * layer.lora_B.detach() @ layer.lora_A.detach()
    merged = layer.lora_magnitude.detach()[:, None] * direction / direction.norm(dim=1)[:, None]
    torch.testing.assert_close(layer.weight_out_in(), merged)
    torch.testing.assert_close(layer(x), unmerged)
    layer.train()
    assert torch.equal(layer.weight, W0)  # the merge kept W0 aside: it comes back bit for bit
    for _ in range(100):
        layer.eval().train()
    assert torch.equal(layer.weight, W0)


def test_dora_unmerges_what_it_merged_when_the_factors_change_while_merged():
    torch.manual_seed(0)
    layer = randomize_lora(lora.Linear(16, 8, r=2, use_dora=True))
    W0 = layer.weight.detach().clone()
    layer.eval()
    with torch.no_grad():  # an optimizer step in eval mode changes the magnitude and B of the merged layer
        layer.lora_magnitude.mul_(2.0)
        layer.lora_B.add_(0.5)
    layer.train()
    assert torch.equal(layer.weight, W0)


@pytest.mark.parametrize("saved_mode, loaded_mode", [("train", "eval"), ("eval", "train"), ("eval", "eval")])
def test_dora_state_dict_holds_W0_and_the_magnitude_and_loads_in_either_mode(saved_mode, loaded_mode):
    torch.manual_seed(0)
    layer = randomize_lora(lora.Linear(12, 10, r=4, lora_alpha=8, use_dora=True))
    with torch.no_grad():
        layer.lora_magnitude.mul_(0.7)
    W0 = layer.weight.detach().clone()
    x = torch.randn(3, 12)
    expected = layer(x)
    state = layer.train(saved_mode == "train").state_dict()
    assert "lora_magnitude" in state and "lora_magnitude" in lora.lora_state_dict(layer)
    assert state._metadata[""]["lora_merged"] is False  # a DoRA layer always saves W0
    torch.testing.assert_close(state["weight"], W0)
    fresh = lora.Linear(12, 10, r=4, lora_alpha=8, use_dora=True).train(loaded_mode == "train")
    fresh.load_state_dict(state)
    assert fresh.merged == (loaded_mode == "eval")
    torch.testing.assert_close(fresh(x), expected)


def test_a_pretrained_checkpoint_sets_the_magnitude_of_a_dora_layer():
    # loralib's workflow: build the LoRA model, then load the pretrained weights with strict=False.
    torch.manual_seed(0)
    pretrained = nn.Linear(12, 10)
    layer = lora.Linear(12, 10, r=4, use_dora=True)
    layer.load_state_dict(pretrained.state_dict(), strict=False)
    torch.testing.assert_close(layer.lora_magnitude.detach(), pretrained.weight.detach().norm(dim=1))
    x = torch.randn(3, 12)
    torch.testing.assert_close(layer(x), pretrained(x))


def test_dora_is_refused_where_it_is_not_implemented():
    for build in (
        lambda: lora.MergedLinear(8, 12, r=2, enable_lora=[True, False, True], use_dora=True),
        lambda: lora.Embedding(10, 4, r=2, use_dora=True),
        lambda: lora.Conv2d(3, 4, 3, r=2, use_dora=True),
        lambda: lora.QLoRALinear(64, 8, r=2, use_dora=True),
    ):
        with pytest.raises(ValueError, match="does not support use_dora=True: DoRA is implemented for Linear"):
            build()
    with pytest.raises(ValueError, match="use_dora=True needs r > 0"):
        lora.Linear(4, 4, r=0, use_dora=True)
    model = base_model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="cannot add LoRA to module 'wte' .*does not support use_dora"):
        lora.add_lora(model, ["c_attn", "wte"], use_dora=True)
    assert not lora.lora_layers(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- DoRA and rsLoRA through add_lora, adapter files and export ----------------------------------


@pytest.mark.parametrize("variant", [{"use_dora": True}, {"use_rslora": True}, {"use_dora": True, "use_rslora": True}])
def test_add_lora_variants_round_trip_through_adapter_files_and_export(tmp_path, variant):
    model = lora.add_lora(base_model().train(), ["c_attn", "c_fc", "lm_head"], r=2, lora_alpha=4, **variant)
    layer = model.get_submodule("h.0.attn.c_attn")
    assert type(layer) is lora.Linear and layer.fan_in_fan_out  # the tiny GPT's Conv1D
    assert all(getattr(layer, key) == value for key, value in variant.items())
    if layer.use_dora:
        assert layer.lora_magnitude.requires_grad and "h.0.attn.c_attn.lora_magnitude" in lora.lora_state_dict(model)
    randomize_lora(model, std=0.3)
    model.eval()
    expected = model(tokens())
    lora.save_adapter(model, tmp_path / "adapter.pt")
    loaded = lora.load_adapter(base_model(), tmp_path / "adapter.pt")
    assert all(getattr(loaded.get_submodule("h.0.attn.c_attn"), key) == value for key, value in variant.items())
    torch.testing.assert_close(loaded(tokens()), expected)
    torch.testing.assert_close(lora.merge_and_export(model)(tokens()), expected)
    # Into a model whose layers are plain LoRA: the settings differ, and the error says which.
    plain = lora.add_lora(base_model(), ["c_attn", "c_fc", "lm_head"], r=2, lora_alpha=4)
    with pytest.raises(ValueError, match=f"{next(iter(variant))} is True in the adapter, False in the model"):
        lora.load_adapter(plain, tmp_path / "adapter.pt")
