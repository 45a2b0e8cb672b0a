"""Serving many LoRA adapters from one base, three ways, timed side by side (lesson 13 and ``make bench``).

A batch of ``rows`` requests, spread evenly over ``n`` adapters (row ``i`` uses adapter ``i % n``):

(a) **one merged model per adapter**: every adapter merged into its own copy of the base
    (:func:`lora_basics.merge_and_export`); each adapter's rows run through its copy, one sub-batch each.
    As fast per token as the base model, but ``n`` copies of every weight.
(b) **merge/unmerge swapping**: one model with LoRA layers, merged (``eval()``); for each sub-batch the
    adapter's tensors are loaded into it, which unmerges the previous update and merges the new one
    (``W <- W - dW_old + dW_new``, a dense ``(out, in)`` update of every LoRA layer per switch).
(c) **the mixed batch**: one :class:`lora_basics.MultiAdapterModel`, the whole batch in one forward pass,
    each row with its own adapter, never merged.

With a Hugging Face model, PEFT's mixed batch (``peft_model(input_ids, adapter_names=[...])``) runs on the
same adapters too. The baseline is one merged model on the whole batch: the speed of the base model.
Times are medians of interleaved rounds (:func:`time_cases`), so a slow moment of a shared machine hits
every case alike.
"""

from __future__ import annotations

import copy
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import lora_basics as lora

#: The adapter counts of the lesson's and the benchmark's tables.
ADAPTER_COUNTS = (1, 2, 4, 8, 16)
BASELINE = "one merged model, whole batch"
CASES = ("(a) merged copies", "(b) merge/unmerge swap", "(c) mixed batch", "PEFT mixed batch")


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


def nbytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``module``."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


@torch.no_grad()
def random_adapters(base: nn.Module, n: int, settings: dict, std: float = 0.02, seed: int = 0) -> list[nn.Module]:
    """``n`` copies of ``base`` with ``add_lora(**settings)`` and random factors (the speed of an adapter does
    not depend on its values; non-zero ones keep the work honest), in eval mode (merged)."""
    generator = torch.Generator().manual_seed(seed)
    adapters = []
    for _ in range(n):
        model = lora.add_lora(copy.deepcopy(base).train(), **settings)
        for name in lora.lora_parameter_names(model):
            param = model.get_parameter(name)
            param.copy_(torch.randn(param.shape, generator=generator) * std)
        adapters.append(model.eval())
    return adapters


class Serving:
    """The set-ups (a), (b), (c) (and PEFT's, with ``peft=True``) holding the same ``adapters`` on ``base``.

    Args:
        base: the plain pretrained model (not changed: every set-up works on copies).
        adapters: models with LoRA layers (e.g. from :func:`random_adapters`, or trained), all injected
            with the same ``settings`` (the ``add_lora`` arguments).
        peft: also build PEFT's model (``base`` must then be a Hugging Face model).
    """

    def __init__(self, base: nn.Module, adapters: list[nn.Module], settings: dict, peft: bool = False):
        self.names = [f"adapter {i}" for i in range(len(adapters))]
        self.merged = [lora.merge_and_export(model).eval() for model in adapters]  # (a)
        self.tensors = [lora.lora_state_dict(model) for model in adapters]  # (b): what a switch loads
        self.swap = lora.add_lora(copy.deepcopy(base).train(), **settings).eval()
        self.loaded: int | None = None
        self.served = lora.MultiAdapterModel(copy.deepcopy(base).eval())  # (c)
        for name, tensors in zip(self.names, self.tensors, strict=True):
            self.served.add_adapter(name, **settings, tensors=tensors)
        self.base_bytes = nbytes(base)
        self.adapter_bytes = [sum(t.numel() * t.element_size() for t in s.values()) for s in self.tensors]
        self.peft_model = self._peft(base, adapters) if peft else None

    def _peft(self, base: nn.Module, adapters: list[nn.Module]):
        from peft import PeftModel

        model = None
        with tempfile.TemporaryDirectory() as directory:
            for name, adapter in zip(self.names, adapters, strict=True):
                path = lora.to_peft(adapter, Path(directory) / name.replace(" ", "_"))
                if model is None:
                    model = PeftModel.from_pretrained(copy.deepcopy(base), path, adapter_name=name)
                else:
                    model.load_adapter(path, adapter_name=name)
        return model.eval()

    def rows(self, n: int, batch: int) -> list[int]:
        """The adapter of each row: row ``i`` uses adapter ``i % n``."""
        return [i % n for i in range(batch)]

    def groups(self, n: int, batch: int) -> list[tuple[int, torch.Tensor]]:
        """``(adapter, its rows)`` for each adapter used."""
        rows = torch.tensor(self.rows(n, batch))
        return [(a, (rows == a).nonzero().flatten()) for a in range(min(n, batch))]

    def merged_copies(self, x: torch.Tensor, n: int) -> None:
        """(a): each adapter's rows through that adapter's merged copy of the model."""
        for a, rows in self.groups(n, len(x)):
            self.merged[a](x[rows])

    def swapping(self, x: torch.Tensor, n: int) -> None:
        """(b): one merged LoRA model; load each adapter (unmerge the old, merge the new), run its rows."""
        for a, rows in self.groups(n, len(x)):
            if self.loaded != a:
                self.swap.load_state_dict(self.tensors[a], strict=False)  # eval mode: unmerge, load, merge
                self.loaded = a
            self.swap(x[rows])

    def mixed(self, x: torch.Tensor, n: int) -> None:
        """(c): the whole batch through the MultiAdapterModel, each row with its adapter."""
        self.served(x, adapter_names=[self.names[a] for a in self.rows(n, len(x))])

    def peft_mixed(self, x: torch.Tensor, n: int) -> None:
        """PEFT's mixed batch on the same adapters."""
        self.peft_model(input_ids=x, adapter_names=[self.names[a] for a in self.rows(n, len(x))])

    def memory(self, case: str, n: int) -> int:
        """Bytes held by set-up ``case`` serving ``n`` adapters (PEFT: not counted, 0)."""
        if case == CASES[0]:
            return n * self.base_bytes
        if case == CASES[1]:
            return nbytes(self.swap) + sum(self.adapter_bytes[:n])
        if case == CASES[2]:  # the stacks hold one slot per adapter, plus slot 0 (the base)
            layers = self.served.multi_adapter_layers().values()
            per_slot = sum(nbytes(layer) - nbytes(layer.base_layer) for layer in layers) / (len(self.names) + 1)
            return round(self.base_bytes + (n + 1) * per_slot)
        return 0

    def measure(
        self, x: torch.Tensor, counts: tuple[int, ...] = ADAPTER_COUNTS, rounds: int = 5, warmup: int = 1
    ) -> list[dict]:
        """Time every set-up for each adapter count in ``counts`` on the batch ``x``, interleaved.

        Returns rows ``{"adapters", "case", "seconds", "tokens_per_second", "ratio", "bytes"}``, the
        baseline (one merged model, whole batch) first; ``ratio`` is throughput over the baseline's.
        """
        steps = {
            CASES[0]: self.merged_copies,
            CASES[1]: self.swapping,
            CASES[2]: self.mixed,
            CASES[3]: self.peft_mixed,
        }
        if self.peft_model is None:
            del steps[CASES[3]]
        cases = {(1, BASELINE): lambda: self.merged[0](x)}
        for n in counts:
            for case, step in steps.items():
                cases[(n, case)] = functools.partial(step, x, n)
        with torch.no_grad():
            seconds = time_cases(cases, rounds=rounds, warmup=warmup)
        tokens = x.numel()
        baseline = seconds[(1, BASELINE)]
        return [
            {
                "adapters": n,
                "case": case,
                "seconds": s,
                "tokens_per_second": tokens / s,
                "ratio": baseline / s,
                "bytes": self.base_bytes if case == BASELINE else self.memory(case, n),
            }
            for (n, case), s in seconds.items()
        ]
