"""Speed benchmark: LoRA layers against the frozen torch layer, measured side by side in one run.

    python -m tools.bench            # or: make bench

GPT-2-small shapes: a batch of 8 x 128 tokens, d = 768, 2 threads. Each case times one
training step (forward + backward) of a layer whose base weight is frozen, as inside a network
being fine-tuned: the input requires grad, so the frozen base still pays for its input gradient
(without that, a frozen ``nn.Linear`` would have no backward at all). The cases are interleaved
round by round and each reports its median, so a slow moment of the machine hits all of them.
Ratios are ``median(case) / median(frozen torch layer)``: 1.00x means LoRA costs nothing extra.
The "formula" rows run the layer's ``forward_formula`` (the maths as written) instead of its fused
``forward``: the difference is what the fused ``addmm`` buys. The "variants" group times DoRA and the
4-bit (NF4) base of QLoRA against the same frozen layer.

Multi-adapter serving (lesson 13, :mod:`lora_course.serving`): inference throughput of a batch whose
rows use 1, 2, 4, 8 or 16 different adapters, on a GPT-2-small block and on the tiny GPT (both as
Hugging Face ``GPT2LMHeadModel`` so that PEFT runs on the very same model): (a) one merged model per
adapter, (b) merge/unmerge swapping between sub-batches, (c) the mixed batch of
``lora_basics.MultiAdapterModel``, and PEFT's mixed batch. Ratios are throughputs over one merged model
running the whole batch (the speed of the base model): higher is better, 1.00x means no cost.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn

import lora_basics as lora
from lora_course import serving
from lora_course.serving import time_cases

TOKENS, D = (8, 128), 768


def _train_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(grad)

    return step


def _eval_step(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            layer(x)

    return step


def _frozen(layer: nn.Module) -> nn.Module:
    for p in layer.parameters():
        p.requires_grad = False
    return layer


def _lora_ready(layer: nn.Module) -> nn.Module:
    """Train only the LoRA factors (the same rule for every library: loralib would leave the bias
    trainable) and give B non-zero values (B = 0 would not change the cost, but be honest)."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.requires_grad = "lora_" in name
            if "lora_B" in name:
                p.normal_(std=0.02)
    return layer


class _Formula(nn.Module):
    """Runs a layer's ``forward_formula`` (the formula as written) instead of its fused ``forward``."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.forward_formula(x)


def _peft_linear(in_features: int, out_features: int, r: int) -> nn.Module | None:
    """A PEFT LoRA-wrapped ``nn.Linear`` (None if peft is not installed)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        return None
    model = nn.Sequential(nn.Linear(in_features, out_features))
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["0"]))


def run(rounds: int = 60, threads: int = 2, seed: int = 0) -> list[tuple[str, str, float, float]]:
    """Return rows ``(group, case, median ms, ratio to the group's baseline)``."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rows = []
    x = torch.randn(*TOKENS, D, requires_grad=True)

    # 1. Linear r=8 vs frozen nn.Linear(768, 768), forward + backward.
    grad = torch.randn(*TOKENS, D)
    linear_cases = {
        "nn.Linear (frozen)": _frozen(nn.Linear(D, D)),
        "lora_basics.Linear r=8": _lora_ready(lora.Linear(D, D, r=8, lora_alpha=16)),
        "lora_basics.Linear, formula (unfused)": _lora_ready(_Formula(lora.Linear(D, D, r=8, lora_alpha=16))),
    }
    try:
        import loralib

        linear_cases["loralib.Linear r=8"] = _lora_ready(loralib.Linear(D, D, r=8, lora_alpha=16))
    except ImportError:
        pass
    peft_layer = _peft_linear(D, D, r=8)
    if peft_layer is not None:
        linear_cases["peft LoRA r=8"] = peft_layer
    rows += _group("Linear 768->768, train step", linear_cases, lambda m: _train_step(m, x, grad), rounds)

    # 2. MergedLinear 768->2304 (Q|K|V), r=4, LoRA on Q and V, GPT-2 layout.
    grad3 = torch.randn(*TOKENS, 3 * D)
    merged_kwargs = dict(r=4, lora_alpha=8, enable_lora=[True, False, True], fan_in_fan_out=True)
    merged_cases = {
        "nn.Linear (frozen)": _frozen(nn.Linear(D, 3 * D)),
        "lora_basics.MergedLinear": _lora_ready(lora.MergedLinear(D, 3 * D, **merged_kwargs)),
        "lora_basics.MergedLinear, formula": _lora_ready(_Formula(lora.MergedLinear(D, 3 * D, **merged_kwargs))),
    }
    try:
        import loralib

        merged_cases["loralib.MergedLinear"] = _lora_ready(loralib.MergedLinear(D, 3 * D, **merged_kwargs))
    except ImportError:
        pass
    rows += _group(
        "MergedLinear 768->2304 [T,F,T], train step", merged_cases, lambda m: _train_step(m, x, grad3), rounds
    )

    # 3. Merged inference: after eval() the LoRA layer is a plain matmul.
    eval_cases = {
        "nn.Linear": nn.Linear(D, D).eval(),
        "lora_basics.Linear r=8, merged": _lora_ready(lora.Linear(D, D, r=8, lora_alpha=16)).eval(),
    }
    rows += _group("Linear 768->768, eval forward", eval_cases, lambda m: _eval_step(m, x), rounds)

    # 4. Variants of LoRA, train step: DoRA (a dense B A and a norm per step), QLoRA (dequantize the
    #    4-bit base per step). Numbers, not targets: they cost what their extra work costs.
    variant_cases = {
        "nn.Linear (frozen)": _frozen(nn.Linear(D, D)),
        "lora_basics.Linear r=8": _lora_ready(lora.Linear(D, D, r=8, lora_alpha=16)),
        "lora_basics.Linear r=8, DoRA": _lora_ready(lora.Linear(D, D, r=8, lora_alpha=16, use_dora=True)),
        "lora_basics.QLoRALinear r=8, NF4": _lora_ready(lora.QLoRALinear(D, D, r=8, lora_alpha=16)),
        "lora_basics.QLoRALinear r=8, NF4+DQ": _lora_ready(
            lora.QLoRALinear(D, D, r=8, lora_alpha=16, double_quant=True)
        ),
    }
    try:
        from peft import LoraConfig, get_peft_model

        dora_config = LoraConfig(r=8, lora_alpha=16, target_modules=["0"], use_dora=True)
        variant_cases["peft DoRA r=8"] = get_peft_model(nn.Sequential(nn.Linear(D, D)), dora_config)
    except ImportError:
        pass
    rows += _group("Linear 768->768 variants, train step", variant_cases, lambda m: _train_step(m, x, grad), rounds)
    return rows


def _group(title: str, layers: dict[str, nn.Module], make_step, rounds: int) -> list[tuple[str, str, float, float]]:
    medians = time_cases({name: make_step(layer) for name, layer in layers.items()}, rounds)
    baseline = next(iter(medians.values()))
    return [(title, name, 1000 * t, t / baseline) for name, t in medians.items()]


#: The LoRA adapters served: Q and V of every fused c_attn, r = 8 (the LoRA paper's GPT-2 targets).
SERVED_ADAPTER = {
    "target_modules": ["c_attn"],
    "r": 8,
    "lora_alpha": 16,
    "enable_lora": {"c_attn": [True, False, True]},
}


def _serving_models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """``{title: (Hugging Face GPT-2 model, batch of token ids)}``, or ``{}`` without transformers/peft."""
    try:
        import peft  # noqa: F401
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return {}
    from lora_course.gpt import load_pretrained
    from lora_course.hf import to_hf_gpt2

    torch.manual_seed(0)
    small = GPT2Config(
        n_embd=D,
        n_head=12,
        n_layer=1,
        vocab_size=64,
        n_positions=32,
        tie_word_embeddings=False,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    tiny = to_hf_gpt2(load_pretrained()).eval()
    generator = torch.Generator().manual_seed(0)
    return {
        "GPT-2-small block (d=768, 12 heads, 1 layer, vocab 64)": (
            GPT2LMHeadModel(small).eval(),
            torch.randint(0, 64, (16, 16), generator=generator),
        ),
        "tiny GPT of lesson 09 (d=144, 2 layers)": (tiny, torch.randint(0, 15, (32, 13), generator=generator)),
    }


def run_serving(rounds: int = 6, counts: tuple[int, ...] = serving.ADAPTER_COUNTS) -> list[tuple[str, list[dict]]]:
    """The multi-adapter serving tables: ``[(title, rows of lora_course.serving.Serving.measure)]``."""
    tables = []
    for title, (base, x) in _serving_models().items():
        adapters = serving.random_adapters(base, max(counts), SERVED_ADAPTER)
        setups = serving.Serving(base, adapters, SERVED_ADAPTER, peft=True)
        del adapters
        rows = setups.measure(x, counts=counts, rounds=rounds)
        tables.append((f"{title}, batch {x.shape[0]}x{x.shape[1]} tokens", rows))
    return tables


def print_serving(tables: list[tuple[str, list[dict]]], rounds: int) -> None:
    for title, rows in tables:
        print(f"\nMulti-adapter serving, {title}: LoRA r=8 on Q,V, row i uses adapter i % n")
        print(f"  median of {rounds} interleaved rounds; ratio = throughput / that of one merged model")
        print(f"  {'adapters':>8s}  {'case':<30s} {'ms':>8s} {'tokens/s':>10s} {'ratio':>6s} {'memory':>10s}")
        for row in rows:
            memory = f"{row['bytes'] / 2**20:7.1f} MB" if row["bytes"] else f"{'-':>10s}"
            print(
                f"  {row['adapters']:>8d}  {row['case']:<30s} {1000 * row['seconds']:8.2f} "
                f"{row['tokens_per_second']:10,.0f} {row['ratio']:5.2f}x {memory}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60, help="timed calls per case (default 60)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--adapters",
        default=",".join(map(str, serving.ADAPTER_COUNTS)),
        help="adapter counts of the serving tables (default 1,2,4,8,16)",
    )
    args = parser.parse_args(argv)
    counts = tuple(int(n) for n in args.adapters.split(","))
    rows = run(rounds=args.rounds, threads=args.threads)
    print(
        f"batch {TOKENS[0]}x{TOKENS[1]} tokens, d={D}, {args.threads} threads, median of {args.rounds} interleaved rounds"
    )
    group = None
    for title, name, ms, ratio in rows:
        if title != group:
            print(f"\n{title}")
            group = title
        print(f"  {name:<38s} {ms:8.2f} ms   {ratio:5.2f}x")
    # The serving cases run a whole model per call: a tenth of the rounds keeps `make bench` short.
    serving_rounds = max(1, args.rounds // 10)
    print_serving(run_serving(rounds=serving_rounds, counts=counts), serving_rounds)


if __name__ == "__main__":
    main()
