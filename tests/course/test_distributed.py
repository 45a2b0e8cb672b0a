"""LoRA under DistributedDataParallel: 2 processes (torchrun, gloo, loopback) compute what 1 process computes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from lora_course import distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(tmp_path, nproc: int, *args: str) -> dict:
    out = tmp_path / "result.json"
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    command += ["--master-addr=127.0.0.1", f"--master-port={free_port()}", "-m", "lora_course.distributed"]
    command += [*args, "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_processes_train_like_one_on_the_same_global_batch(tmp_path):
    two = run_torchrun(tmp_path, 2, "--steps", "4", "--batch", "16")
    one = distributed.train("lora", steps=4, batch=16)
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    assert two["exact_match"] == pytest.approx(one["exact_match"], abs=0.005)
    assert two["replicas_identical"] and two["merged_on_every_rank"] and two["checkpoint_reloads_on_every_rank"]
    # Only the trainable (LoRA) gradients travel: 4 bytes each per step, not the 513k frozen weights.
    assert two["allreduce_bytes_per_step"] == 4 * two["trainable"] < 0.01 * 4 * two["parameters"]


@pytest.mark.cuda
def test_the_same_script_runs_with_nccl_on_gpus(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs (one per process) for nccl")
    two = run_torchrun(tmp_path, 2, "--steps", "4", "--batch", "16")
    assert two["replicas_identical"] and two["checkpoint_reloads_on_every_rank"]
