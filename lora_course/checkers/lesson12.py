"""Checkers for the exercises of lesson 12 from scratch to PEFT.

The judges compare with ``lora.to_peft`` and ``lora.from_peft`` (the library's bridge). They write small
adapters to a temporary folder and never import ``peft`` itself, so a check takes a fraction of a second.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch
from torch import nn

import lora_basics as lora
import lora_basics.peft_bridge
from lora_basics.peft_bridge import CONFIG_FILE, WEIGHTS_FILE, load_safetensors

from ..gpt import GPT, GPTConfig
from .common import (
    Watch,
    call,
    call_watched,
    expect_no_shortcut,
    expect_tensor,
    fail,
    generator,
    manual_seed,
    randomize_lora,
    recorded_cases,
    register,
    returned,
    wrong_type,
)

EX_KEY, EX_CONFIG, EX_MERGED = "peft_key", "lora_config", "merged_as_lora"
TO_PEFT_WATCH = [(lora_basics, "to_peft"), (lora_basics.peft_bridge, "to_peft")]


def _adapter(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """What ``lora.to_peft`` writes for ``model``: its config and its tensors by key."""
    with tempfile.TemporaryDirectory() as folder:
        lora.to_peft(model, folder)
        return json.loads((Path(folder) / CONFIG_FILE).read_text()), load_safetensors(Path(folder) / WEIGHTS_FILE)


def _gpt(seed: int, case: int, n_layer: int = 2) -> GPT:
    manual_seed(seed, case)
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=n_layer, n_head=2, n_embd=8))


# -- 12.1 peft_key ---------------------------------------------------------------------------------

FACTORS = ("lora_A", "lora_B")
KEY_FORBIDDEN = {"to_peft": "the task asks you to build the key yourself, not to read it from a written adapter."}


def _key_model(seed: int, case: int) -> nn.Module:
    if case == 0:
        manual_seed(seed, case)
        model = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 10))
        lora.add_lora(model, ["0", "1", "3"], r=2, lora_alpha=4)
    else:  # GPT-2's names, an embedding, and Q/V of the fused c_attn (a MergedLinear)
        model = lora.add_lora(
            _gpt(seed, case), ["wte", "c_attn", "mlp.c_proj"], r=2, enable_lora={"c_attn": [True, False, True]}
        )
    return randomize_lora(model, generator(seed, case))


KEY_CASES = ["nn.Sequential(Embedding, Linear, ReLU, Linear)", "a tiny GPT: wte, c_attn on Q/V, mlp.c_proj"]


def probe_peft_key(fn, seed: int) -> dict:
    cases = []
    for case in range(len(KEY_CASES)):
        model = _key_model(seed, case)
        keys = {}
        for name, layer in lora.lora_layers(model).items():
            for factor in FACTORS:
                _, seen = call_watched(Watch(functions=TO_PEFT_WATCH), fn, name, layer, factor)
                keys[f"{name} {factor}"] = seen
        cases.append(keys)
    return {"cases": cases}


def judge_peft_key(record: dict, seed: int) -> str:
    """``fn(module_name, layer, factor) -> str``: the key of ``layer``'s ``factor`` in PEFT's adapter file."""
    ex = EX_KEY
    for case, keys in enumerate(recorded_cases(record, len(KEY_CASES))):
        model = _key_model(seed, case)
        _, tensors = _adapter(model)
        for name, layer in lora.lora_layers(model).items():
            for factor in FACTORS:
                text = f"{KEY_CASES[case]}, module {name!r} ({type(layer).__name__}), factor {factor!r}"
                seen = keys[f"{name} {factor}"]
                got = returned(ex, seen, text)
                expect_no_shortcut(ex, seen["watch"], text, KEY_FORBIDDEN)
                if not isinstance(got, str):
                    wrong_type(ex, text, "a str (a key of the adapter file)", got)
                # The key to_peft gave this tensor (the values are random: each tensor is only one key's).
                merged = factor == "lora_B" and isinstance(layer, lora.MergedLinear)
                ours = layer.full_lora_B() if merged else getattr(layer, factor)
                (expected,) = [key for key, value in tensors.items() if torch.equal(value, ours.detach())]
                if got != expected:
                    fail(
                        ex,
                        f"on {text}: expected {expected!r}, got {got!r}. Hint: PEFT's keys are "
                        "'base_model.model.' + the module's full name + '.lora_A.weight' (or '.lora_B.weight'): its "
                        "factors are nn.Linear layers; an embedding's are plain parameters, 'lora_embedding_A' and "
                        "'lora_embedding_B'.",
                    )
    return "your keys are the ones lora.to_peft writes, and PeftModel.from_pretrained reads"


check_peft_key = register(EX_KEY, probe_peft_key, judge_peft_key, forbidden=KEY_FORBIDDEN)

# -- 12.2 lora_config ------------------------------------------------------------------------------

#: add_lora's settings of each case (enable_lora: LoRA on some slices of a fused layer).
CONFIG_CASES = [
    {"target_modules": ["c_attn", "c_fc"], "r": 4, "lora_alpha": 8, "lora_dropout": 0.1},
    {"target_modules": ["c_attn", "c_proj"], "r": 2, "lora_alpha": 16, "enable_lora": {"c_attn": [True, False, True]}},
    {"target_modules": ["c_attn"], "r": 4, "lora_alpha": 8, "enable_lora": {"c_attn": [True, True, True]}},
    {
        "target_modules": ["c_attn", "c_fc"],
        "r": 2,
        "lora_alpha": 4,
        "use_rslora": True,
        "enable_lora": {"c_attn": [False, True, True]},
    },
]
CONFIG_HINT = (
    "every target of add_lora is a target of PEFT (a name matches the modules whose full name ends with it); "
    "a MergedLinear with k enabled slices is ONE LoRA of rank r*k on the fused layer, and its scale must stay "
    "lora_alpha/r (lora_alpha/sqrt(r) with use_rslora): give such layers their own rank and alpha in "
    "rank_pattern and alpha_pattern."
)


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in settings.items())


def probe_lora_config(fn, seed: int) -> dict:
    return {"cases": [call(fn, **settings).record() for settings in CONFIG_CASES]}


def _layer_settings(layer: nn.Module) -> str:
    return f"rank {layer.lora_A.shape[0]}, scale {layer.scaling:.4g}"


def judge_lora_config(record: dict, seed: int) -> str:
    """``fn(target_modules, r, lora_alpha, lora_dropout=0.0, enable_lora=None, use_rslora=False) -> dict``: the
    fields of PEFT's ``LoraConfig`` that describe ``add_lora``'s layers, judged by reading them with ``from_peft``."""
    ex = EX_CONFIG
    for case, got in enumerate(recorded_cases(record, len(CONFIG_CASES))):
        settings = CONFIG_CASES[case]
        text = _settings_text(settings)
        got = returned(ex, got, text)
        if not isinstance(got, dict) or not {"r", "lora_alpha", "target_modules"} <= set(got):
            wrong_type(ex, text, "a dict with at least the keys 'r', 'lora_alpha' and 'target_modules'", got)
        for key, default in (("lora_dropout", 0.0), ("use_rslora", False)):
            value, wanted = got.get(key, default), settings.get(key, default)
            if value != wanted:
                fail(ex, f"on {text}: {key} is {value!r}, expected {wanted!r}. Hint: PEFT has a {key} field too.")
        reference = randomize_lora(lora.add_lora(_gpt(seed, case), **settings), generator(seed, case))
        config, tensors = _adapter(reference)
        try:
            text_config = json.dumps({**got, "peft_type": "LORA"})
        except (TypeError, ValueError):
            wrong_type(ex, text, "a dict of plain values (str, numbers, lists, dicts): what LoraConfig takes", got)
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / CONFIG_FILE).write_text(text_config)
            lora.peft_bridge.save_safetensors(tensors, Path(folder) / WEIGHTS_FILE)
            try:
                loaded = lora.from_peft(_gpt(seed, case), folder)
            except Exception as error:  # noqa: BLE001 - any field of any type may be wrong: every failure is a verdict
                fail(
                    ex, f"on {text}: reading your config with the adapter's tensors fails: {error}. Hint: {CONFIG_HINT}"
                )
        ours, theirs = lora.lora_layers(reference), lora.lora_layers(loaded)
        if sorted(ours) != sorted(theirs):
            fail(ex, f"on {text}: your config adapts {sorted(theirs)}, expected {sorted(ours)}. Hint: {CONFIG_HINT}")
        for name, layer in ours.items():
            if not math.isclose(layer.scaling, theirs[name].scaling, rel_tol=1e-6):
                fail(
                    ex,
                    f"on {text}: {name} reads as {_layer_settings(theirs[name])}, expected "
                    f"{_layer_settings(layer)}. Hint: {CONFIG_HINT}",
                )
        tokens = torch.randint(0, 11, (2, 8), generator=generator(seed, 10 + case))
        with torch.no_grad():
            expect_tensor(ex, loaded.eval()(tokens), reference.eval()(tokens), f"{text}: the logits", CONFIG_HINT)
    return "PEFT reads your config as the layers add_lora built (rank r*k and alpha*k for a MergedLinear)"


check_lora_config = register(EX_CONFIG, probe_lora_config, judge_lora_config)

# -- 12.3 merged_as_lora ---------------------------------------------------------------------------

MERGED_CASES = [  # (in, out, r, enable_lora, fan_in_fan_out)
    (6, 12, 2, [True, False, True], True),
    (5, 8, 3, [False, True], False),
    (4, 16, 1, [True, True, False, True], False),
]
MERGED_FORBIDDEN = {
    "full_lora_B": "the task asks you to lay out B yourself.",
    "delta_weight": "the task asks for the two factors, not the dense update.",
    "to_peft": "the task asks you to build the factors yourself, not to read them from a written adapter.",
}
MERGED_WATCH = {
    "methods": [(lora.MergedLinear, "full_lora_B"), (lora.Linear, "delta_weight")],
    "functions": TO_PEFT_WATCH,
}


def _merged_layer(seed: int, case: int) -> lora.MergedLinear:
    fan_in, fan_out, r, enable_lora, fan_in_fan_out = MERGED_CASES[case]
    manual_seed(seed, case)
    layer = lora.MergedLinear(
        fan_in, fan_out, r=r, lora_alpha=2 * r, enable_lora=enable_lora, fan_in_fan_out=fan_in_fan_out
    )
    return randomize_lora(layer, generator(seed, case))


def _merged_text(case: int) -> str:
    fan_in, fan_out, r, enable_lora, fan_in_fan_out = MERGED_CASES[case]
    return f"MergedLinear({fan_in}, {fan_out}, r={r}, enable_lora={enable_lora}, fan_in_fan_out={fan_in_fan_out})"


def probe_merged_as_lora(fn, seed: int) -> dict:
    cases = []
    for case in range(len(MERGED_CASES)):
        layer = _merged_layer(seed, case)
        _, seen = call_watched(Watch(**MERGED_WATCH), fn, layer)
        cases.append(seen)
    return {"cases": cases}


def judge_merged_as_lora(record: dict, seed: int) -> str:
    """``fn(layer) -> (A, B)``: the factors of a ``MergedLinear`` as one LoRA of rank ``r * k`` on the fused layer."""
    ex = EX_MERGED
    for case, seen in enumerate(recorded_cases(record, len(MERGED_CASES))):
        text = _merged_text(case)
        got = returned(ex, seen, text)
        expect_no_shortcut(ex, seen["watch"], text, MERGED_FORBIDDEN)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            wrong_type(ex, text, "a pair (A, B) of tensors", got)
        layer = _merged_layer(seed, case)
        expect_tensor(
            ex,
            got[0],
            layer.lora_A.detach(),
            f"{text}, A",
            "A is lora_A as it is: A_1; ...; A_k stacked, (r*k, in).",
        )
        expect_tensor(
            ex,
            got[1],
            layer.full_lora_B().detach(),
            f"{text}, B",
            "B is (out, r*k), zero except block j = lora_B[j*d:(j+1)*d] (d = out / len(enable_lora)) on the rows of "
            "the j-th ENABLED slice and in the columns j*r:(j+1)*r that multiply A_j; fan_in_fan_out changes only "
            "how the frozen weight is stored, not the factors.",
        )
    return "scaling * B @ A is the MergedLinear's update: a rank r*k LoRA that PEFT can load"


check_merged_as_lora = register(EX_MERGED, probe_merged_as_lora, judge_merged_as_lora, forbidden=MERGED_FORBIDDEN)
