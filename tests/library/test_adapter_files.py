"""Adapter files are untrusted input: malformed files, foreign tensors, failed loads, half precision, the textbook layer."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

import lora_basics as lora
from lora_basics import add_lora, load_adapter, merge_and_export, save_adapter
from tests.helpers import QV, base_model, randomize_lora, randomized, tokens


def state_of(model: nn.Module) -> dict:
    """Everything a load could change: module types, tensors (bit for bit), what trains, merged flags."""
    return {
        "modules": [(name, type(m)) for name, m in model.named_modules()],
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "trains": {n: p.requires_grad for n, p in model.named_parameters()},
        "merged": {n: m.merged for n, m in model.named_modules() if isinstance(m, lora.LoRALayer)},
    }


def assert_same_state(model: nn.Module, before: dict) -> None:
    after = state_of(model)
    assert after["modules"] == before["modules"]
    assert after["trains"] == before["trains"] and after["merged"] == before["merged"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(after["tensors"][key], value), key


def edited_adapter(tmp_path, edit, name="edited.pt", seed=0, base=None):
    """Save an adapter of the small GPT, let ``edit(payload)`` change it, and save it again."""
    path = tmp_path / name
    save_adapter(randomized(add_lora(base or base_model(), **QV), seed=seed), path)
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)
    return path


# -- LoRA tensors only -----------------------------------------------------------------------------


def test_an_adapter_holding_a_base_tensor_is_refused(tmp_path):
    def add_base_tensor(payload):
        payload["tensors"]["h.0.attn.c_attn.weight"] = torch.zeros(16, 48)

    path = edited_adapter(tmp_path, add_base_tensor)
    fresh = base_model()
    weight = fresh.h[0].attn.c_attn.weight.detach().clone()
    with pytest.raises(ValueError, match=r"holds pretrained tensors that are not LoRA parameters: \['h.0.attn.c_attn"):
        load_adapter(fresh, path)
    assert torch.equal(fresh.h[0].attn.c_attn.weight, weight)
    served = randomized(add_lora(base_model(), **QV), seed=3)  # switching adapters: refused too
    before = state_of(served)
    with pytest.raises(ValueError, match="not LoRA parameters"):
        load_adapter(served, path)
    assert_same_state(served, before)


# -- all or nothing -------------------------------------------------------------------------------


def test_a_failed_load_into_a_fresh_base_leaves_it_as_it_was(tmp_path):
    path = tmp_path / "adapter.pt"
    save_adapter(randomized(add_lora(base_model(), **QV)), path)
    other = base_model(seed=1)  # other pretrained weights: refused after the layers were built
    before = state_of(other)
    with pytest.raises(ValueError, match="other pretrained weights"):
        load_adapter(other, path)
    assert_same_state(other, before)
    assert not lora.lora_layers(other)
    load_adapter(other, path, check_base=False)  # and it can be retried
    assert lora.lora_layers(other)


def test_an_adapter_missing_a_tensor_leaves_the_model_as_it_was(tmp_path):
    path = edited_adapter(tmp_path, lambda payload: payload["tensors"].pop("h.1.attn.c_attn.lora_B"))
    fresh = base_model()
    before = state_of(fresh)
    with pytest.raises(ValueError, match=r"lacks the LoRA tensors \['h.1.attn.c_attn.lora_B'\]"):
        load_adapter(fresh, path)
    assert_same_state(fresh, before)


def test_an_adapter_whose_settings_do_not_fit_leaves_the_model_as_it_was(tmp_path):
    path = edited_adapter(tmp_path, lambda payload: payload["layers"]["h.1.attn.c_attn"].update(type="Embedding"))
    fresh = base_model()
    before = state_of(fresh)
    with pytest.raises(
        ValueError, match="h.1.attn.c_attn: type is Embedding in the adapter, MergedLinear in the model"
    ):
        load_adapter(fresh, path)  # found after both layers were injected: both are taken out again
    assert_same_state(fresh, before)


@pytest.mark.parametrize("problem", ["wrong shape", "NaN"])
def test_a_failed_switch_leaves_the_served_adapter_in_place(tmp_path, problem):
    def spoil_last_tensor(payload):
        last = sorted(payload["tensors"])[-1]
        good = payload["tensors"][last]
        payload["tensors"][last] = (
            torch.zeros(good.shape[0] + 1, good.shape[1]) if problem == "wrong shape" else good * torch.nan
        )

    path = edited_adapter(tmp_path, spoil_last_tensor, seed=2)
    served = randomized(add_lora(base_model(), **QV), seed=1)  # merged with adapter 1
    x = tokens()
    expected = served(x)
    before = state_of(served)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_adapter(served, path)
    assert_same_state(served, before)
    torch.testing.assert_close(served(x), expected, rtol=0, atol=0)


def test_add_lora_failing_on_a_later_target_changes_nothing_and_can_be_retried():
    model = base_model()
    before = state_of(model)
    with pytest.raises(TypeError, match="module 'h.0.ln_1'"):
        add_lora(model, ["c_attn", "ln_1"], r=2)
    assert_same_state(model, before)
    add_lora(model, ["c_attn"], r=2)
    assert set(lora.lora_layers(model)) == {"h.0.attn.c_attn", "h.1.attn.c_attn"}


# -- malformed files --------------------------------------------------------------------------------


def _valid_bytes(tmp_path) -> bytes:
    path = tmp_path / "valid.pt"
    save_adapter(randomized(add_lora(base_model(), **QV)), path)
    return path.read_bytes()


MALFORMED = {
    "text": (lambda path, valid: path.write_text("not an adapter\n"), "torch.load failed"),
    "empty": (lambda path, valid: path.write_bytes(b""), "torch.load failed"),
    "truncated": (lambda path, valid: path.write_bytes(valid[: len(valid) // 2]), "torch.load failed"),
    "not a dict": (lambda path, valid: torch.save([1, 2, 3], path), "it holds a list, not an adapter dict"),
    "no layers": (
        lambda path, valid: torch.save({"format": "lora_basics.adapter", "version": 2, "tensors": {}}, path),
        "'layers' must be a non-empty dict",
    ),
    "layers of the wrong type": (
        lambda path, valid: torch.save({"format": "lora_basics.adapter", "version": 2, "layers": ["h.0"]}, path),
        "'layers' must be a non-empty dict of layer settings, got list",
    ),
    "unknown version": (
        lambda path, valid: torch.save({"format": "lora_basics.adapter", "version": 99, "layers": {}}, path),
        "unknown adapter version 99",
    ),
}


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_file_raises_a_value_error_naming_the_file_and_the_problem(tmp_path, kind):
    write, problem = MALFORMED[kind]
    path = tmp_path / "adapter.pt"
    write(path, _valid_bytes(tmp_path))
    model = base_model()
    before = state_of(model)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(problem)):
        load_adapter(model, path)
    assert_same_state(model, before)


def test_a_file_written_before_the_variants_existed_loads_as_plain_lora(tmp_path):
    def as_version_2(payload):
        payload["version"] = 2
        for entry in payload["layers"].values():
            for field in ("use_rslora", "use_dora", "init_lora_weights", "quantize_base"):
                del entry[field]

    path = edited_adapter(tmp_path, as_version_2)
    expected = randomized(add_lora(base_model(), **QV))(tokens())
    loaded = load_adapter(base_model(), path)
    layer = loaded.get_submodule("h.0.attn.c_attn")
    assert not layer.use_rslora and not layer.use_dora and layer.init_lora_weights is True
    torch.testing.assert_close(loaded(tokens()), expected)
    # In a file of the current version the variant settings are required.
    path = edited_adapter(tmp_path, lambda payload: payload["layers"]["h.0.attn.c_attn"].pop("use_dora"))
    with pytest.raises(ValueError, match=r"settings of layer 'h.0.attn.c_attn' have missing or invalid \['use_dora'\]"):
        load_adapter(base_model(), path)


def test_a_layer_entry_with_bad_settings_is_named(tmp_path):
    path = edited_adapter(tmp_path, lambda payload: payload["layers"]["h.0.attn.c_attn"].update(r="4"))
    with pytest.raises(ValueError, match=r"settings of layer 'h.0.attn.c_attn' have missing or invalid \['r'\]"):
        load_adapter(base_model(), path)


# -- half precision ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_an_adapter_trained_in_half_precision_loads_into_its_base(tmp_path, dtype):
    base = base_model().to(dtype)
    model = randomized(add_lora(copy.deepcopy(base), **QV))  # saved in eval mode: merged, rounded
    path = tmp_path / "half.pt"
    save_adapter(model, path)
    x = tokens()
    reloaded = load_adapter(copy.deepcopy(base), path).eval()
    torch.testing.assert_close(reloaded(x), model(x), rtol=0, atol=0)
    model.train()  # unmerged again: W0 up to one rounding; still the same base
    save_adapter(model, path)
    load_adapter(copy.deepcopy(base), path)
    with pytest.raises(
        ValueError,
        match=rf"another dtype than the adapter's base: 29 tensor\(s\) are torch.float32 in the model, {dtype} in",
    ):
        load_adapter(base_model(), path)  # the same weights in float32: a dtype change, said so


# -- the textbook LoRALinear -------------------------------------------------------------------------


def textbook_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def test_the_textbook_layer_saves_loads_and_exports(tmp_path):
    base = textbook_model()
    model = copy.deepcopy(base)
    model[0] = lora.LoRALinear.from_linear(model[0], lora.LoRAConfig(lora_r=2, lora_alpha=4, lora_dropout=0.1))
    randomize_lora(model)
    x = torch.randn(5, 8)
    expected = model.eval()(x)
    path = tmp_path / "textbook.pt"
    save_adapter(model, path)
    reloaded = load_adapter(copy.deepcopy(base), path).eval()
    assert type(reloaded[0]) is lora.LoRALinear and reloaded[0].scaling == 2.0 and reloaded[0].dropout.p == 0.1
    torch.testing.assert_close(reloaded(x), expected, rtol=0, atol=0)
    assert [n for n, p in reloaded.named_parameters() if p.requires_grad] == ["0.A.weight", "0.B.weight"]
    exported = merge_and_export(reloaded)
    assert not any(type(m).__module__.startswith("lora_basics") for m in exported.modules())
    assert type(exported[0]) is nn.Linear
    torch.testing.assert_close(exported(x), expected, rtol=1e-6, atol=1e-6)
    plain = textbook_model()
    plain.load_state_dict(exported.state_dict())  # the base model's own keys
