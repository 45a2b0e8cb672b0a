"""to_peft / from_peft: the same adapter as a Hugging Face PEFT adapter, both ways, on a tiny GPT-2."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import lora_basics as lora
from lora_basics.peft_bridge import CONFIG_FILE, PREFIX, WEIGHTS_FILE, load_safetensors, save_safetensors
from tests.helpers import randomize_lora, tiny_gpt2

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


TOKENS = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(1))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


def assert_from_peft_refuses(directory, match: str) -> None:
    """``from_peft`` raises a ValueError matching ``match`` and leaves the base model exactly as it was."""
    base = tiny_gpt2()
    before = copy.deepcopy(base.state_dict())
    with pytest.raises(ValueError, match=match):
        lora.from_peft(base, directory)
    assert not lora.lora_layers(base)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def ours_with_lora():
    model = lora.add_lora(
        tiny_gpt2().train(),  # factors are set below: in train mode, unmerged
        ["c_attn", "attn.c_proj", "wte", "lm_head"],
        r=4,
        lora_alpha=8,
        enable_lora={"c_attn": [True, False, True]},
    )
    return randomize_lora(model, std=0.2).eval()


def test_to_peft_loads_in_peft_and_gives_the_same_logits(tmp_path):
    ours = ours_with_lora()
    expected = logits(ours)
    lora.to_peft(ours, tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["rank_pattern"] == {f"transformer.h.{i}.attn.c_attn": 8 for i in range(2)}  # r * k = 4 * 2
    assert config["alpha_pattern"] == {f"transformer.h.{i}.attn.c_attn": 16.0 for i in range(2)}
    theirs = peft.PeftModel.from_pretrained(tiny_gpt2(), tmp_path).eval()
    assert not torch.allclose(expected, logits(tiny_gpt2()), atol=1e-3)  # the adapter does change the model
    torch.testing.assert_close(logits(theirs), expected, rtol=0, atol=1e-5)


def test_from_peft_reads_a_peft_adapter_and_gives_the_same_logits(tmp_path):
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["c_attn", "mlp.c_fc", "wte"],
        rank_pattern={"wte": 2},
        alpha_pattern={"wte": 3},
    )
    theirs = peft.get_peft_model(tiny_gpt2(), config)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        for name, param in theirs.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    theirs.eval()
    theirs.save_pretrained(tmp_path)
    ours = lora.from_peft(tiny_gpt2(), tmp_path).eval()
    assert (
        isinstance(ours.transformer.h[0].attn.c_attn, lora.Linear) and ours.transformer.h[0].attn.c_attn.fan_in_fan_out
    )
    assert isinstance(ours.transformer.wte, lora.Embedding) and ours.transformer.wte.r == 2
    torch.testing.assert_close(logits(ours), logits(theirs), rtol=0, atol=1e-5)
    # and back again: ours -> PEFT -> the same logits
    lora.to_peft(ours, tmp_path / "again")
    again = peft.PeftModel.from_pretrained(tiny_gpt2(), tmp_path / "again").eval()
    torch.testing.assert_close(logits(again), logits(theirs), rtol=0, atol=1e-5)


def test_trained_adapter_round_trips(tmp_path):
    ours = lora.add_lora(tiny_gpt2().train(), ["c_attn"], r=2, lora_alpha=4)
    optimizer = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        loss = ours(TOKENS, labels=TOKENS).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ours.eval()
    lora.to_peft(ours, tmp_path)
    torch.testing.assert_close(logits(peft.PeftModel.from_pretrained(tiny_gpt2(), tmp_path).eval()), logits(ours))
    torch.testing.assert_close(logits(lora.from_peft(tiny_gpt2(), tmp_path).eval()), logits(ours))


def test_our_safetensors_files_read_with_the_safetensors_package_and_back(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(6, dtype=torch.float64), "c": torch.randn(2).bfloat16()}
    save_safetensors(tensors, tmp_path / "ours.safetensors")
    read = safetensors.load_file(tmp_path / "ours.safetensors")
    safetensors.save_file(tensors, tmp_path / "theirs.safetensors")
    for key, value in tensors.items():
        assert torch.equal(read[key], value) and read[key].dtype == value.dtype
        assert torch.equal(load_safetensors(tmp_path / "theirs.safetensors")[key], value)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="bad.safetensors is not a readable safetensors file"):
        load_safetensors(tmp_path / "bad.safetensors")


def test_what_peft_cannot_express_is_refused(tmp_path):
    conv = lora.add_lora(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), ["0"], r=2)
    with pytest.raises(ValueError, match="no exact PEFT form"):
        lora.to_peft(conv, tmp_path)
    # OLoRA also moves part of W0 into the factors, by a QR decomposition this library does not redo.
    theirs = peft.get_peft_model(
        tiny_gpt2(), peft.LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights="olora")
    )
    theirs.save_pretrained(tmp_path / "olora")
    assert_from_peft_refuses(tmp_path / "olora", match="init_lora_weights")


def test_an_adapter_that_carries_a_changed_base_tensor_is_refused_and_changes_nothing(tmp_path):
    ours = ours_with_lora()
    lora.to_peft(ours, tmp_path)
    tensors = load_safetensors(tmp_path / WEIGHTS_FILE)
    tensors[PREFIX + "transformer.h.0.mlp.c_fc.weight"] = torch.zeros(16, 64)  # would overwrite a frozen weight
    save_safetensors(tensors, tmp_path / WEIGHTS_FILE)
    assert_from_peft_refuses(tmp_path, match="not a LoRA factor")


def test_the_textbook_lora_linear_exports_too(tmp_path):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    ours = copy.deepcopy(base)
    ours[0] = lora.LoRALinear.from_linear(ours[0], lora.LoRAConfig(lora_r=2, lora_alpha=6))
    with torch.no_grad():
        ours[0].B.weight.normal_()
    lora.to_peft(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    x = torch.randn(4, 6)
    torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=1e-6)


VARIANTS = [
    {"use_rslora": True},
    {"use_dora": True},
    {"use_dora": True, "use_rslora": True},
    {"init_lora_weights": "pissa"},
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "+".join(f"{k}={v[k]}" for k in v))
def test_variants_of_lora_go_to_peft_and_come_back(tmp_path, variant):
    # GPT-2's c_attn and c_fc are Conv1D (fan_in_fan_out), lm_head an nn.Linear.
    ours = lora.add_lora(tiny_gpt2().train(), ["c_attn", "c_fc", "lm_head"], r=4, lora_alpha=8, **variant)
    ours = randomize_lora(ours, std=0.2).eval()
    lora.to_peft(ours, tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / CONFIG_FILE).read_text())
    assert all(config[key] == value for key, value in variant.items())
    if variant.get("use_dora"):
        tensors = load_safetensors(tmp_path / "ours" / WEIGHTS_FILE)
        magnitude = tensors[PREFIX + "transformer.h.0.attn.c_attn.lora_magnitude_vector"]
        assert torch.equal(magnitude, ours.transformer.h[0].attn.c_attn.lora_magnitude)
    # PEFT on the original base (for PiSSA it redoes the split of W0) computes what ours computes.
    theirs = peft.PeftModel.from_pretrained(tiny_gpt2(), tmp_path / "ours").eval()
    difference = (logits(theirs) - logits(ours)).abs().max().item()
    print(f"to_peft {variant}: largest difference of the logits {difference:.2e}")
    assert difference <= 1e-5
    # And a PEFT adapter with the variant, trained (random factors) in PEFT, read back by from_peft.
    theirs = peft.get_peft_model(tiny_gpt2(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], **variant))
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        for name, param in theirs.named_parameters():
            if "lora_" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.2)
    theirs.eval().save_pretrained(tmp_path / "theirs")
    back = lora.from_peft(tiny_gpt2(), tmp_path / "theirs").eval()
    layer = back.transformer.h[0].attn.c_attn
    assert all(getattr(layer, key) == value for key, value in variant.items())
    difference = (logits(back) - logits(theirs)).abs().max().item()
    print(f"from_peft {variant}: largest difference of the logits {difference:.2e}")
    assert difference <= 1e-5


def test_a_merged_linear_with_rslora_keeps_its_scale_at_rank_r_times_k(tmp_path):
    ours = lora.add_lora(
        tiny_gpt2().train(), ["c_attn"], r=4, lora_alpha=8, use_rslora=True, enable_lora={"c_attn": [True, False, True]}
    )
    ours = randomize_lora(ours, std=0.2).eval()
    lora.to_peft(ours, tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    # A rank-8 PEFT LoRA scales by alpha / sqrt(8): alpha = (8 / sqrt(4)) * sqrt(8) keeps our scale 8 / sqrt(4).
    assert config["r"] == 8 and config["lora_alpha"] == pytest.approx(4 * 8**0.5)
    theirs = peft.PeftModel.from_pretrained(tiny_gpt2(), tmp_path).eval()
    torch.testing.assert_close(logits(theirs), logits(ours), rtol=0, atol=1e-5)


def test_settings_that_peft_keeps_once_per_adapter_must_agree(tmp_path):
    model = lora.add_lora(tiny_gpt2(), ["c_attn"], r=2)
    model.transformer.h[1].attn.c_attn = lora.Linear.from_module(
        tiny_gpt2().transformer.h[1].attn.c_attn, fan_in_fan_out=True, r=2, use_rslora=True
    )
    with pytest.raises(ValueError, match="PEFT has one use_rslora per adapter"):
        lora.to_peft(model, tmp_path)


def test_a_dora_adapter_on_an_embedding_is_refused_and_changes_nothing(tmp_path):
    theirs = peft.get_peft_model(tiny_gpt2(), peft.LoraConfig(r=2, target_modules=["wte"], use_dora=True))
    theirs.save_pretrained(tmp_path)
    assert_from_peft_refuses(tmp_path, match="'transformer.wte' .*does not support use_dora=True")


def test_a_qlora_model_exports_its_factors_as_a_plain_lora_adapter(tmp_path):
    ours = randomize_lora(lora.add_lora(tiny_gpt2(), ["c_attn"], r=2, quantize_base="nf4"))
    lora.to_peft(ours, tmp_path)
    tensors = load_safetensors(tmp_path / WEIGHTS_FILE)
    layer = ours.transformer.h[0].attn.c_attn
    assert torch.equal(tensors[PREFIX + "transformer.h.0.attn.c_attn.lora_B.weight"], layer.lora_B)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["fan_in_fan_out"]
