"""The committed pretrained model (data/tiny_gpt.pt): checksum, provenance, and that its command rebuilds it.

The full rebuild (``python -m lora_course.pretrain``, a few minutes) only runs with
``LORA_BASICS_REBUILD_DATA=1``; the unit suite checks instead that a short pretraining run is
deterministic (same checksum twice) and that the committed file matches its checksum.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lora_course.gpt import CHECKPOINT, GPT, GPTConfig, load_pretrained
from lora_course.pretrain import pretrain, state_checksum
from lora_course.tasks import VOCAB

ROOT = Path(__file__).resolve().parents[2]
CHECKSUM_FILE = CHECKPOINT.with_suffix(".sha256")


def committed_checksum() -> str:
    return CHECKSUM_FILE.read_text().split()[0]


def test_checkpoint_matches_its_checksum():
    checkpoint = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    assert state_checksum(checkpoint["state_dict"]) == committed_checksum()


def test_checkpoint_is_small_and_loads():
    assert CHECKPOINT.stat().st_size < 4 * 2**20
    model = load_pretrained()
    assert model.config == GPTConfig(vocab_size=len(VOCAB))
    assert isinstance(model, GPT) and not model.training


def test_readme_documents_every_data_file():
    readme = (ROOT / "data" / "README.md").read_text()
    assert committed_checksum() in readme
    assert "python -m lora_course.pretrain" in readme
    for path in (ROOT / "data").iterdir():
        assert path.name == "README.md" or path.name in readme, f"data/README.md does not describe {path.name}"


def test_short_pretraining_is_deterministic():
    small = GPTConfig(vocab_size=len(VOCAB), block_size=16, n_layer=1, n_head=2, n_embd=16)
    first, second = (state_checksum(pretrain(steps=5, config=small).state_dict()) for _ in range(2))
    assert first == second
    other_seed = state_checksum(pretrain(steps=5, seed=1, config=small).state_dict())
    assert other_seed != first


@pytest.mark.skipif(
    os.environ.get("LORA_BASICS_REBUILD_DATA") != "1",
    reason="rebuilds data/tiny_gpt.pt (minutes): set LORA_BASICS_REBUILD_DATA=1",
)
def test_the_command_rebuilds_the_checkpoint(tmp_path):
    out = tmp_path / "tiny_gpt.pt"
    subprocess.run([sys.executable, "-m", "lora_course.pretrain", "--out", str(out)], check=True, cwd=ROOT)
    rebuilt = torch.load(out, map_location="cpu", weights_only=True)
    assert state_checksum(rebuilt["state_dict"]) == committed_checksum()
    assert out.with_suffix(".sha256").read_text().split()[0] == committed_checksum()


def test_a_missing_checkpoint_says_where_it_belongs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data/tiny_gpt\.pt \(`make data` rebuilds it\)"):
        load_pretrained(tmp_path / "tiny_gpt.pt")
