"""Checkers for the exercises of lesson 09 fine-tune a tiny GPT."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import lora_basics as lora

from .common import (
    expect_equal,
    expect_tensor,
    fail,
    keeps_rng,
    randomize_lora,
    run_learner,
    say_passed,
    seeded,
)

# -- 09 fine-tune a tiny GPT -----------------------------------------------------------------------


def _tiny_gpt_tokens(config: Any, seed: int, batch: int = 3) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (batch, min(8, config.block_size)), generator=seeded(seed))


@keeps_rng
def check_lora_counts(fn: Callable) -> None:
    """``fn(config, r, targets) -> (trainable, total)``: the parameter counts of ``add_lora(GPT(config), targets, r)``."""
    from ..gpt import GPT, GPTConfig

    ex = "lora_counts"
    cases = [
        (GPTConfig(), 4, ["c_attn"]),
        (GPTConfig(n_layer=3, n_embd=32), 2, ["c_fc"]),
        (GPTConfig(n_layer=2, n_embd=48, vocab_size=11), 3, ["c_proj"]),
        (GPTConfig(n_layer=1, n_embd=16), 8, ["c_attn", "c_proj", "c_fc"]),
        (GPTConfig(n_layer=2, n_embd=24, vocab_size=13), 4, ["wte", "lm_head"]),
    ]
    for config, r, targets in cases:
        torch.manual_seed(0)
        counts = lora.parameter_counts(lora.add_lora(GPT(config), list(targets), r=r))
        expected = (counts["trainable"], counts["total"])
        case = f"n_layer={config.n_layer}, n_embd={config.n_embd}, vocab_size={config.vocab_size}, r={r}, targets={targets}"
        got = run_learner(ex, fn, config, r, list(targets), case=case)
        got = tuple(int(v) for v in got) if isinstance(got, (tuple, list)) else got
        expect_equal(
            ex,
            got,
            expected,
            case,
            "each matched module (in, out) adds r * (in + out) LoRA parameters, and only those train; a target "
            "matches every module whose name ends with it: 'c_proj' is attn.c_proj (d -> d) AND mlp.c_proj "
            "(4d -> d) in every block; total = the base model's parameters + the LoRA ones.",
        )
    trainable, total = run_learner(ex, fn, GPTConfig(), 4, ["c_attn"])
    say_passed(
        ex, f"LoRA r=4 on the whole c_attn of the tiny GPT trains {trainable:,} of {total:,} ({trainable / total:.2%})"
    )


def _reference_qv(r: int, alpha: float) -> nn.Module:
    from ..gpt import load_pretrained

    return lora.add_lora(
        load_pretrained(), ["c_attn"], r=r, lora_alpha=alpha, enable_lora={"c_attn": [True, False, True]}
    )


@keeps_rng
def check_inject_qv(fn: Callable) -> None:
    """``fn(model, r, alpha)``: every block's ``c_attn`` becomes a Q/V ``MergedLinear`` with its weights; the rest frozen."""
    from ..gpt import load_pretrained

    ex = "inject_qv"
    for seed, (r, alpha) in enumerate([(4, 8), (2, 2)]):
        base = load_pretrained()
        x = _tiny_gpt_tokens(base.config, seed)
        with torch.no_grad():
            before = base(x)
        case = f"the pretrained tiny GPT, r={r}, alpha={alpha}"
        got = run_learner(ex, fn, base, r, alpha, case=case)
        if not isinstance(got, nn.Module):
            fail(ex, f"on {case}: expected the model back, got {type(got).__name__}. Hint: return model.")
        reference = _reference_qv(r, alpha)
        for index, block in enumerate(got.h):
            layer = block.attn.c_attn
            name = f"h.{index}.attn.c_attn"
            if not isinstance(layer, lora.MergedLinear):
                fail(
                    ex,
                    f"on {case}: {name} is a {type(layer).__name__}, expected a lora.MergedLinear. "
                    "Hint: assign the new layer to block.attn.c_attn for every block in model.h.",
                )
            settings = (list(layer.enable_lora), layer.fan_in_fan_out, layer.r, layer.lora_alpha)
            expect_equal(
                ex,
                settings,
                ([True, False, True], True, r, alpha),
                f"{case}, {name} (enable_lora, fan_in_fan_out, r, lora_alpha)",
                "Q and V only: enable_lora=[True, False, True]; Conv1D stores its weight (in, out): fan_in_fan_out=True.",
            )
        shapes = {k: tuple(p.shape) for k, p in got.named_parameters()}
        expected_shapes = {k: tuple(p.shape) for k, p in reference.named_parameters()}
        expect_equal(
            ex,
            shapes,
            expected_shapes,
            f"{case}: parameter names and shapes",
            "MergedLinear(d, 3 * d, r=..., lora_alpha=..., enable_lora=[True, False, True], fan_in_fan_out=True) "
            "holds the Conv1D weight as it is, (d, 3d).",
        )
        trainable = sorted(k for k, p in got.named_parameters() if p.requires_grad)
        expected_trainable = sorted(k for k, p in reference.named_parameters() if p.requires_grad)
        expect_equal(
            ex,
            trainable,
            expected_trainable,
            f"{case}: the parameters with requires_grad=True",
            "only the LoRA factors train: call lora.mark_only_lora_as_trainable(model) at the end.",
        )
        got.train()
        with torch.no_grad():
            after = got(x)
        expect_tensor(
            ex,
            after,
            before,
            f"{case}: the output right after injecting (B = 0, so nothing may change)",
            "copy the pretrained weight AND bias into the new layer (with torch.no_grad(): layer.weight.copy_(...)).",
        )
        randomize_lora(reference, seed=seed)
        got.load_state_dict(reference.state_dict())
        for mode in ("train", "eval"):
            got.train(mode == "train")
            reference.train(mode == "train")
            with torch.no_grad():
                expect_tensor(
                    ex,
                    got(x),
                    reference(x),
                    f"{case}, random LoRA factors, {mode} mode",
                    "the layer must compute what add_lora's does: same class, same settings, same weights.",
                )
    say_passed(
        ex, "your Q/V injection builds the same model as add_lora(..., enable_lora={'c_attn': [True, False, True]})"
    )


@keeps_rng
def check_export_plain(fn: Callable) -> None:
    """``fn(model)``: a copy of a LoRA-injected GPT with plain layers holding merged weights, like ``merge_and_export``."""
    from ..gpt import GPT, load_pretrained

    ex = "export_plain"
    cases = [
        (["c_attn"], {"c_attn": [True, False, True]}, "train"),
        (["c_attn"], {"c_attn": [True, False, True]}, "eval"),
        (["c_fc", "lm_head", "wte"], None, "eval"),
        (["c_proj", "wte"], None, "train"),
    ]
    for seed, (targets, enable_lora, mode) in enumerate(cases):
        model = lora.add_lora(load_pretrained(), targets, r=2, lora_alpha=4, enable_lora=enable_lora)
        randomize_lora(model, seed=seed)
        model.train(mode == "train")
        x = _tiny_gpt_tokens(model.config, seed)
        with torch.no_grad():
            before = model(x)
            expected = lora.merge_and_export(model).train(mode == "train")(x)
        merged = {name: layer.merged for name, layer in lora.lora_layers(model).items()}
        case = (
            f"a tiny GPT with LoRA on {targets}{' (Q/V)' if enable_lora else ''}, random LoRA factors, in {mode} mode"
        )
        got = run_learner(ex, fn, model, case=case)
        if not isinstance(got, nn.Module):
            fail(ex, f"on {case}: expected a model, got {type(got).__name__}. Hint: return the exported copy.")
        left = [name for name, m in got.named_modules() if isinstance(m, lora.LoRALayer)]
        if left:
            fail(
                ex,
                f"on {case}: the exported model still has LoRA layers: {left}. Hint: replace every LoRA layer "
                "(isinstance(m, lora.LoRALayer)) by a plain Conv1D / nn.Linear / nn.Embedding (setattr on its parent).",
            )
        now = {name: layer.merged for name, layer in lora.lora_layers(model).items()}
        with torch.no_grad():
            unchanged = now == merged and torch.allclose(model(x), before, atol=1e-6)
        if not unchanged:
            fail(
                ex,
                f"on {case}: `model` itself was changed. Hint: work on copy.deepcopy(model) and leave the original "
                "(its layers and their merged flags) alone.",
            )
        result = GPT(model.config).load_state_dict(got.state_dict(), strict=False)
        if result.missing_keys or result.unexpected_keys:
            fail(
                ex,
                f"on {case}: the exported state dict does not fit a fresh GPT (missing {result.missing_keys[:3]}, "
                f"unexpected {result.unexpected_keys[:3]}). Hint: a layer with fan_in_fan_out becomes "
                "lora_course.gpt.Conv1D(nf=out_features, nx=in_features), others nn.Linear / nn.Embedding.",
            )
        got.train(mode == "train")
        with torch.no_grad():
            out = got(x)
        expect_tensor(
            ex,
            out,
            expected,
            case,
            "weight + layer.delta_weight() (already in the weight's layout), unless layer.merged: in eval mode the "
            "weight is ALREADY merged; copy the bias too.",
        )
    say_passed(ex, "your export computes what merge_and_export's plain model computes, with no LoRA layer left")
