"""Checkers for the exercises of lesson 09 fine-tune a tiny GPT."""

from __future__ import annotations

import functools
import io

import torch
from torch import nn

import lora_basics as lora
import lora_basics.export
import lora_basics.inject

from ..gpt import CHECKPOINT, GPT, GPTConfig, load_pretrained
from .common import (
    Watch,
    call,
    call_watched,
    expect_equal,
    expect_no_shortcut,
    expect_tensor,
    fail,
    generator,
    peek,
    random_lora_state,
    randomize_lora,
    recorded_cases,
    register,
    returned,
    wrong_type,
)

EX_COUNTS, EX_INJECT, EX_EXPORT = "lora_counts", "inject_qv", "export_plain"


@functools.cache
def _checkpoint_bytes() -> bytes:
    """``data/tiny_gpt.pt``, read once: the grader reads it before any learner code runs (:func:`prepare`)."""
    return CHECKPOINT.read_bytes()


def prepare() -> None:
    """Read now every file the judges of this lesson need later."""
    _checkpoint_bytes()


def _pretrained() -> GPT:
    return load_pretrained(io.BytesIO(_checkpoint_bytes()))


def _tokens(config: GPTConfig, seed: int, case: int) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (3, min(8, config.block_size)), generator=generator(seed, 10 + case))


# -- 9.1 lora_counts -------------------------------------------------------------------------------

COUNT_CASES = [
    (GPTConfig(), 4, ["c_attn"]),
    (GPTConfig(n_layer=3, n_embd=32), 2, ["c_fc"]),
    (GPTConfig(n_layer=2, n_embd=48, vocab_size=11), 3, ["c_proj"]),
    (GPTConfig(n_layer=1, n_embd=16), 8, ["c_attn", "c_proj", "c_fc"]),
    (GPTConfig(n_layer=2, n_embd=24, vocab_size=13), 4, ["wte", "lm_head"]),
]


def probe_lora_counts(fn, seed: int) -> dict:
    return {"cases": [call(fn, config, r, list(targets)).record() for config, r, targets in COUNT_CASES]}


def judge_lora_counts(record: dict, seed: int) -> str:
    """``fn(config, r, targets) -> (trainable, total)``: the parameter counts of ``add_lora(GPT(config), targets, r)``."""
    ex = EX_COUNTS
    for (config, r, targets), got in zip(COUNT_CASES, recorded_cases(record, len(COUNT_CASES)), strict=True):
        counts = lora.parameter_counts(lora.add_lora(GPT(config), list(targets), r=r))
        case = f"n_layer={config.n_layer}, n_embd={config.n_embd}, vocab_size={config.vocab_size}, r={r}, targets={targets}"
        got = returned(ex, got, case)
        if isinstance(got, (tuple, list)) and len(got) == 2 and all(isinstance(v, torch.Tensor) for v in got):
            got = tuple(v.item() for v in got)
        if not (isinstance(got, (tuple, list)) and len(got) == 2 and all(isinstance(v, int) for v in got)):
            wrong_type(ex, case, "a pair (trainable, total) of ints", got)
        expect_equal(
            ex,
            tuple(got),
            (counts["trainable"], counts["total"]),
            case,
            "each matched module (in, out) adds r * (in + out) LoRA parameters, and only those train; a target "
            "matches every module whose name ends with it: 'c_proj' is attn.c_proj (d -> d) AND mlp.c_proj "
            "(4d -> d) in every block; total = the base model's parameters + the LoRA ones.",
        )
    counts = lora.parameter_counts(lora.add_lora(GPT(GPTConfig()), ["c_attn"], r=4))
    trainable, total = counts["trainable"], counts["total"]
    return f"LoRA r=4 on the whole c_attn of the tiny GPT trains {trainable:,} of {total:,} ({trainable / total:.2%})"


check_lora_counts = register(EX_COUNTS, probe_lora_counts, judge_lora_counts)

# -- 9.2 inject_qv ---------------------------------------------------------------------------------

QV_CASES = [(4, 8), (2, 2)]
INJECT_FORBIDDEN = {
    "add_lora": "the task asks you to build each layer with the constructor (lora.MergedLinear(...)) and copy the "
    "pretrained weight and bias yourself.",
    "from_module": "the task asks you to build each layer with the constructor (lora.MergedLinear(...)) and copy "
    "the pretrained weight and bias yourself.",
}
INJECT_WATCH = {
    "functions": [(lora_basics, "add_lora"), (lora_basics.inject, "add_lora")],
    "methods": [(lora.Linear, "from_module"), (lora.MergedLinear, "from_module")],
}


def _qv_layer(layer: nn.Module) -> dict:
    settings = None
    if isinstance(layer, lora.MergedLinear):
        settings = [list(layer.enable_lora), layer.fan_in_fan_out, layer.r, layer.lora_alpha]
    return {"type": type(layer).__name__, "settings": settings}


def _probe_inject_case(fn, seed: int, case: int) -> dict:
    r, alpha = QV_CASES[case]
    base = _pretrained()
    x = _tokens(base.config, seed, case)
    outcome, seen = call_watched(Watch(**INJECT_WATCH), fn, base, r, alpha)
    got = outcome.value
    seen["module"] = outcome.ok and isinstance(got, nn.Module)
    if seen["module"]:
        seen["layers"] = peek(lambda: [_qv_layer(block.attn.c_attn) for block in got.h])
        seen["shapes"] = {k: tuple(p.shape) for k, p in got.named_parameters()}
        seen["trainable"] = sorted(k for k, p in got.named_parameters() if p.requires_grad)
        with torch.no_grad():
            seen["after"] = call(lambda: got.train()(x)).record()
            seen["load"] = call(
                lambda: got.load_state_dict(random_lora_state(got, generator(seed, case)), strict=False)
            ).record()
            seen["train"] = call(lambda: got.train()(x)).record()
            seen["eval"] = call(lambda: got.eval()(x)).record()
    return seen


def probe_inject_qv(fn, seed: int) -> dict:
    return {"cases": [_probe_inject_case(fn, seed, case) for case in range(len(QV_CASES))]}


def judge_inject_qv(record: dict, seed: int) -> str:
    """``fn(model, r, alpha)``: every block's ``c_attn`` becomes a Q/V ``MergedLinear`` with its weights; the rest frozen."""
    ex = EX_INJECT
    for case, seen in enumerate(recorded_cases(record, len(QV_CASES))):
        r, alpha = QV_CASES[case]
        text = f"the pretrained tiny GPT, r={r}, alpha={alpha}"
        got = returned(ex, seen, text)
        expect_no_shortcut(ex, seen["watch"], text, INJECT_FORBIDDEN)
        if not seen["module"]:
            wrong_type(ex, text, "the model (an nn.Module): return model", got)
        base = _pretrained()
        x = _tokens(base.config, seed, case)
        with torch.no_grad():
            before = base(x)
        reference = lora.add_lora(base, ["c_attn"], r=r, lora_alpha=alpha, enable_lora={"c_attn": [True, False, True]})
        for index, layer in enumerate(returned(ex, seen["layers"], text)):
            name = f"h.{index}.attn.c_attn"
            if layer["settings"] is None:
                fail(
                    ex,
                    f"on {text}: {name} is a {layer['type']}, expected a lora.MergedLinear. "
                    "Hint: assign the new layer to block.attn.c_attn for every block in model.h.",
                )
            expect_equal(
                ex,
                list(layer["settings"]),
                [[True, False, True], True, r, alpha],
                f"{text}, {name} [enable_lora, fan_in_fan_out, r, lora_alpha]",
                "Q and V only: enable_lora=[True, False, True]; Conv1D stores its weight (in, out): fan_in_fan_out=True.",
            )
        expect_equal(
            ex,
            dict(seen["shapes"]),
            {k: tuple(p.shape) for k, p in reference.named_parameters()},
            f"{text}: parameter names and shapes",
            "MergedLinear(d, 3 * d, r=..., lora_alpha=..., enable_lora=[True, False, True], fan_in_fan_out=True) "
            "holds the Conv1D weight as it is, (d, 3d).",
        )
        expect_equal(
            ex,
            list(seen["trainable"]),
            sorted(k for k, p in reference.named_parameters() if p.requires_grad),
            f"{text}: the parameters with requires_grad=True",
            "only the LoRA factors train: call lora.mark_only_lora_as_trainable(model) at the end.",
        )
        expect_tensor(
            ex,
            returned(ex, seen["after"], text),
            before,
            f"{text}: the output right after injecting (B = 0, so nothing may change)",
            "copy the pretrained weight AND bias into the new layer (with torch.no_grad(): layer.weight.copy_(...)).",
        )
        returned(ex, seen["load"], text + ", loading random LoRA factors")
        reference.load_state_dict(random_lora_state(reference, generator(seed, case)), strict=False)
        for mode in ("train", "eval"):
            with torch.no_grad():
                expected = reference.train(mode == "train")(x)
            expect_tensor(
                ex,
                returned(ex, seen[mode], text),
                expected,
                f"{text}, random LoRA factors, {mode} mode",
                "the layer must compute what add_lora's does: same class, same settings, same weights.",
            )
    return "your Q/V injection builds the same model as add_lora(..., enable_lora={'c_attn': [True, False, True]})"


check_inject_qv = register(EX_INJECT, probe_inject_qv, judge_inject_qv, forbidden=INJECT_FORBIDDEN)

# -- 9.3 export_plain ------------------------------------------------------------------------------

EXPORT_CASES = [
    (["c_attn"], {"c_attn": [True, False, True]}, "train"),
    (["c_attn"], {"c_attn": [True, False, True]}, "eval"),
    (["c_fc", "lm_head", "wte"], None, "eval"),
    (["c_proj", "wte"], None, "train"),
]
EXPORT_FORBIDDEN = {"merge_and_export": "the task asks you to write your own merge_and_export."}
EXPORT_WATCH = {"functions": [(lora_basics, "merge_and_export"), (lora_basics.export, "merge_and_export")]}


def _export_model(seed: int, case: int) -> tuple[nn.Module, torch.Tensor]:
    targets, enable_lora, mode = EXPORT_CASES[case]
    model = lora.add_lora(_pretrained(), targets, r=2, lora_alpha=4, enable_lora=enable_lora)
    randomize_lora(model, generator(seed, case))
    return model.train(mode == "train"), _tokens(model.config, seed, case)


def _probe_export_case(fn, seed: int, case: int) -> dict:
    model, x = _export_model(seed, case)
    training = EXPORT_CASES[case][2] == "train"
    outcome, seen = call_watched(Watch(**EXPORT_WATCH), fn, model)
    got = outcome.value
    seen["module"] = outcome.ok and isinstance(got, nn.Module)
    if seen["module"]:
        seen["left"] = [name for name, m in got.named_modules() if isinstance(m, lora.LoRALayer)]
        seen["shapes"] = peek(lambda: {k: tuple(v.shape) for k, v in got.state_dict().items()})
        with torch.no_grad():
            seen["out"] = call(lambda: got.train(training)(x)).record()
    seen["merged_after"] = {name: layer.merged for name, layer in lora.lora_layers(model).items()}
    with torch.no_grad():
        seen["model_after"] = call(model, x).record()
    return seen


def probe_export_plain(fn, seed: int) -> dict:
    return {"cases": [_probe_export_case(fn, seed, case) for case in range(len(EXPORT_CASES))]}


def judge_export_plain(record: dict, seed: int) -> str:
    """``fn(model)``: a copy of a LoRA-injected GPT with plain layers holding merged weights, like ``merge_and_export``."""
    ex = EX_EXPORT
    for case, seen in enumerate(recorded_cases(record, len(EXPORT_CASES))):
        targets, enable_lora, mode = EXPORT_CASES[case]
        text = (
            f"a tiny GPT with LoRA on {targets}{' (Q/V)' if enable_lora else ''}, random LoRA factors, in {mode} mode"
        )
        got = returned(ex, seen, text)
        expect_no_shortcut(ex, seen["watch"], text, EXPORT_FORBIDDEN)
        if not seen["module"]:
            wrong_type(ex, text, "a model (an nn.Module): return the exported copy", got)
        if seen["left"]:
            fail(
                ex,
                f"on {text}: the exported model still has LoRA layers: {list(seen['left'])}. Hint: replace every LoRA "
                "layer (isinstance(m, lora.LoRALayer)) by a plain Conv1D / nn.Linear / nn.Embedding (setattr on its "
                "parent).",
            )
        model, x = _export_model(seed, case)
        with torch.no_grad():
            before = model(x)
            expected = lora.merge_and_export(model).train(mode == "train")(x)
        fresh = {k: tuple(v.shape) for k, v in GPT(model.config).state_dict().items()}
        shapes = dict(returned(ex, seen["shapes"], text))
        if shapes != fresh:
            missing = sorted(set(fresh) - set(shapes))[:3]
            unexpected = sorted(set(shapes) - set(fresh))[:3]
            reshaped = sorted(k for k in set(fresh) & set(shapes) if fresh[k] != shapes[k])[:3]
            fail(
                ex,
                f"on {text}: the exported state dict does not fit a fresh GPT (missing {missing}, unexpected "
                f"{unexpected}, other shapes {reshaped}). Hint: a layer with fan_in_fan_out becomes "
                "lora_course.gpt.Conv1D(nf=out_features, nx=in_features), others nn.Linear / nn.Embedding.",
            )
        expect_tensor(
            ex,
            returned(ex, seen["out"], text),
            expected,
            text,
            "W0 + delta_weight() (delta_weight() is s * B @ A, already scaled and in the weight's layout), unless "
            "layer.merged: in eval mode the weight is ALREADY merged; copy the bias too.",
        )
        merged = {name: layer.merged for name, layer in lora.lora_layers(model).items()}
        after = returned(ex, seen["model_after"], text)
        if dict(seen["merged_after"]) != merged or not (
            isinstance(after, torch.Tensor) and after.shape == before.shape and torch.allclose(after, before, atol=1e-6)
        ):
            fail(
                ex,
                f"on {text}: `model` itself was changed. Hint: work on copy.deepcopy(model) and leave the original "
                "(its layers and their merged flags) alone.",
            )
    return "your export computes what merge_and_export's plain model computes, with no LoRA layer left"


check_export_plain = register(EX_EXPORT, probe_export_plain, judge_export_plain, forbidden=EXPORT_FORBIDDEN)
