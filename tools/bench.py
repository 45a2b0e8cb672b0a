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
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import lora_basics as lora

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


def time_cases(cases: dict[str, Callable[[], None]], rounds: int, warmup: int = 5) -> dict[str, float]:
    """Median seconds per call of each case, interleaving the cases round by round."""
    for step in cases.values():
        for _ in range(warmup):
            step()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, step in cases.items():
            start = time.perf_counter()
            step()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60, help="timed calls per case (default 60)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    main()
