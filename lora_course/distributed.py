"""LoRA on several processes: fine-tune the tiny GPT under ``DistributedDataParallel`` (lesson 14).

    torchrun --nproc-per-node 2 -m lora_course.distributed --steps 20 --out result.json
    python -m lora_course.distributed --steps 20 --out single.json          # one process, same global batch

Each step takes one *global* batch of ``batch`` lines of task A; with ``N`` processes each takes its own
``batch / N`` rows, computes its part of the loss, and DDP averages the gradients across processes (an
all-reduce) before the optimizer step. The loss is a mean over answer tokens and the ranks' rows hold
different numbers of them, so each rank divides its *sum* by the global token count (times ``N``, which
DDP's averaging divides out): then ``N`` processes compute, up to float rounding, exactly what one
process computes on the whole batch. The script checks that, and more:

- **what is communicated**: DDP all-reduces the gradients of *trainable* parameters only. A comm hook
  counts the bytes of every all-reduced bucket: LoRA sends ``4 * trainable`` bytes per step (fp32
  gradients), full fine-tuning ``4 * all parameters``;
- **replicas stay identical**: after training every rank holds the same LoRA factors, bit for bit;
- **eval() merges on every rank**: ``model.eval()`` reaches each rank's LoRA layers;
- **a checkpoint saved on rank 0** (the adapter only) reloads on every rank into a fresh base and gives
  the same outputs.

Backend: ``gloo`` on CPU (here), ``nccl`` when every rank has a GPU; the script is the same. Addresses
come from ``torchrun`` (``MASTER_ADDR``/``MASTER_PORT``; loopback when run on one machine).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

import lora_basics as lora

from .gpt import load_pretrained
from .tasks import IGNORE, exact_match, task_data

SEED = 0


def build_model(method: str) -> torch.nn.Module:
    """The pretrained tiny GPT with LoRA on Q and V (``"lora"``), or all of it trainable (``"full"``)."""
    torch.manual_seed(SEED)  # the same LoRA initialisation on every rank (DDP also broadcasts rank 0's)
    model = load_pretrained().train()
    if method == "lora":
        lora.add_lora(model, ["c_attn"], r=4, lora_alpha=8, enable_lora={"c_attn": [True, False, True]})
    elif method != "full":
        raise ValueError(f"method must be 'lora' or 'full', got {method!r}")
    return model


def global_batches(steps: int, batch: int) -> list[torch.Tensor]:
    """Row indices into task A's training set: one global batch per step, the same on every rank."""
    generator = torch.Generator().manual_seed(SEED)
    (x, _), _ = task_data("A")
    return [torch.randint(0, x.shape[0], (batch,), generator=generator) for _ in range(steps)]


def _uses_nccl() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl"


def count_bytes(counter: dict, bucket):  # no annotations: DDP inspects them, and these are strings here
    """A DDP comm hook: count the bucket's bytes, then all-reduce it as DDP would (averaging)."""
    counter["bytes"] += bucket.buffer().numel() * bucket.buffer().element_size()
    counter["buckets"] += 1
    return allreduce_hook(None, bucket)


def train(method: str = "lora", steps: int = 20, batch: int = 32, lr: float = 3e-3) -> dict:
    """Train on this process's share of each global batch; returns what the lesson and the test compare."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if batch % world:
        raise ValueError(f"batch={batch} must be a multiple of the number of processes ({world})")
    # nccl (GPUs) needs each rank on its own device; gloo runs on the CPU.
    device = torch.device("cuda", rank % torch.cuda.device_count()) if _uses_nccl() else torch.device("cpu")
    model = build_model(method).to(device)
    counter = {"bytes": 0, "buckets": 0}
    net = model
    if distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        net.register_comm_hook(counter, count_bytes)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    (x, y), (x_test, y_test) = task_data("A")
    x, y, x_test, y_test = (tensor.to(device) for tensor in (x, y, x_test, y_test))
    losses, started = [], None
    for step, rows in enumerate(global_batches(steps, batch)):
        if step == 1:
            started = time.perf_counter()  # step 0 pays one-off costs (DDP's first bucket rebuild)
        mine = rows.view(world, -1)[rank]  # this rank's equal share of the global batch
        logits = net(x[mine])
        # The loss is a mean over answer tokens, and ranks hold different numbers of them: divide this
        # rank's sum by the *global* count, times world, so that DDP's average is the global mean.
        answer_tokens = (y[rows] != IGNORE).sum()
        token_losses = F.cross_entropy(logits.flatten(0, 1), y[mine].flatten(), ignore_index=IGNORE, reduction="sum")
        loss = token_losses * world / answer_tokens
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces (averages) the gradients here
        optimizer.step()
        # The global-batch loss, for comparison with one process: the mean of the ranks' means.
        global_loss = loss.detach().clone()
        if distributed:
            dist.all_reduce(global_loss)
            global_loss /= world
        losses.append(round(global_loss.item(), 6))
    seconds_per_step = (time.perf_counter() - started) / (steps - 1) if started else float("nan")
    model.eval()  # merges the LoRA update on this rank
    result = {
        "method": method,
        "world_size": world,
        "losses": losses,
        "exact_match": exact_match(model, x_test, y_test),
        "trainable": sum(p.numel() for p in trainable),
        "parameters": sum(p.numel() for p in model.parameters()),
        "allreduce_bytes_per_step": counter["bytes"] // steps if distributed else 0,
        "seconds_per_step": seconds_per_step,
        "merged_on_every_rank": all(layer.merged for layer in lora.lora_layers(model).values()),
    }
    if distributed:
        result.update(check_replicas_and_checkpoint(model, method))
    return result


def check_replicas_and_checkpoint(model: torch.nn.Module, method: str) -> dict:
    """Compare every rank's trained tensors with rank 0's; save the adapter on rank 0 and reload it everywhere."""
    flat = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad or method == "full"])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    identical = all(torch.equal(gathered[0], other) for other in gathered)
    device = flat.device  # collectives need tensors where the backend works (GPU for nccl)
    merged = [m for m in lora.lora_layers(model).values()]
    all_merged = torch.tensor([float(all(layer.merged for layer in merged))], device=device)
    dist.all_reduce(all_merged, op=dist.ReduceOp.MIN)
    reload_ok = True
    if method == "lora":
        # One directory for everyone: rank 0 makes it and broadcasts its name.
        name = [tempfile.mkdtemp(prefix="lora_ddp_") if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(name, src=0)
        path = Path(name[0]) / "adapter.pt"
        if dist.get_rank() == 0:
            lora.save_adapter(model, path)
        dist.barrier()  # the file exists before anyone reads it
        reloaded = lora.load_adapter(load_pretrained(), path).eval().to(device)
        (x, _), _ = task_data("A")
        x = x.to(device)
        with torch.no_grad():
            reload_ok = torch.allclose(reloaded(x[:64]), model(x[:64]), rtol=0, atol=1e-6)
        dist.barrier()
    ok = torch.tensor([float(reload_ok)], device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return {
        "replicas_identical": identical,
        "merged_on_every_rank": bool(all_merged.item()),
        "checkpoint_reloads_on_every_rank": bool(ok.item()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=["lora", "full", "both"], default="lora", help="both: lora, then full")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32, help="global batch (split over the processes)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, help="write the result as JSON here (rank 0)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread per process: the processes share the machine's cores
    launched = "WORLD_SIZE" in os.environ  # torchrun sets it
    if launched:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    methods = ["lora", "full"] if args.method == "both" else [args.method]
    try:
        results = [train(method, args.steps, args.batch, args.lr) for method in methods]
    finally:
        if launched:
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        text = json.dumps(results if args.method == "both" else results[0], indent=2)
        if args.out:
            args.out.write_text(text + "\n")
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
