"""loralib (installed from the registry) is the numerical reference wherever it is correct.

For each layer type loralib gets right, build loralib's layer, give it a non-zero update, load its
state dict into ours with ``strict=True``, and compare outputs in train and eval (merged) mode.
"""

from __future__ import annotations

import pytest
import torch

import lora_basics as lora
from tests.helpers import randomize_lora

loralib = pytest.importorskip("loralib")


def _compare(reference, ours, x, atol=1e-6):
    randomize_lora_loralib(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)
    for mode in (True, False):
        reference.train(mode)
        ours.train(mode)
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=atol)
    assert ours.merged and reference.merged


@torch.no_grad()
def randomize_lora_loralib(module):
    generator = torch.Generator().manual_seed(0)
    for name, param in module.named_parameters():
        if "lora_" in name:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("fan_in_fan_out", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_loralib(fan_in_fan_out, bias):
    torch.manual_seed(0)
    kwargs = dict(r=4, lora_alpha=8, fan_in_fan_out=fan_in_fan_out, bias=bias)
    _compare(loralib.Linear(16, 12, **kwargs), lora.Linear(16, 12, **kwargs), torch.randn(3, 5, 16))


@pytest.mark.parametrize("enable_lora", [[True, False, True], [False, True, False], [True, True, True], [True, False]])
@pytest.mark.parametrize("fan_in_fan_out", [False, True])
def test_merged_linear_matches_loralib(enable_lora, fan_in_fan_out):
    torch.manual_seed(0)
    out = 6 * len(enable_lora)
    kwargs = dict(r=2, lora_alpha=4, enable_lora=enable_lora, fan_in_fan_out=fan_in_fan_out)
    _compare(loralib.MergedLinear(16, out, **kwargs), lora.MergedLinear(16, out, **kwargs), torch.randn(3, 5, 16))


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding_matches_loralib(padding_idx):
    torch.manual_seed(0)
    kwargs = dict(r=3, lora_alpha=6, padding_idx=padding_idx)
    ids = torch.randint(0, 30, (4, 9))
    _compare(loralib.Embedding(30, 8, **kwargs), lora.Embedding(30, 8, **kwargs), ids)


@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(stride=2, groups=2, dilation=2, padding=2), dict(bias=False)])
def test_conv2d_matches_loralib_and_checkpoints_load_both_ways(kwargs):
    torch.manual_seed(0)
    reference = loralib.Conv2d(4, 6, 3, r=2, lora_alpha=4, **kwargs)
    ours = lora.Conv2d(4, 6, 3, r=2, lora_alpha=4, **kwargs)
    x = torch.randn(2, 4, 9, 9)
    _compare(reference, ours, x, atol=1e-5)
    # ... and back: our checkpoint into a fresh loralib layer, strict, same keys
    again = loralib.Conv2d(4, 6, 3, r=2, lora_alpha=4, **kwargs)
    again.eval()
    again.load_state_dict(ours.state_dict(), strict=True)
    torch.testing.assert_close(again(x), reference(x), rtol=0, atol=1e-5)


def test_same_seed_builds_the_same_conv_as_loralib():
    torch.manual_seed(5)
    reference = loralib.ConvLoRA(torch.nn.Conv2d, 3, 4, 3, r=2, lora_alpha=4, padding=1)
    torch.manual_seed(5)
    ours = lora.ConvLoRA(torch.nn.Conv2d, 3, 4, 3, r=2, lora_alpha=4, padding=1)
    assert list(ours.state_dict()) == list(reference.state_dict())
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)


LAYER_PAIRS = {
    "linear": (lambda lib: lib.Linear(16, 12, r=4, lora_alpha=8), torch.randn(3, 5, 16)),
    "linear_fifo": (lambda lib: lib.Linear(16, 12, r=4, lora_alpha=8, fan_in_fan_out=True), torch.randn(3, 16)),
    "merged": (
        lambda lib: lib.MergedLinear(16, 18, r=2, lora_alpha=4, enable_lora=[True, False, True]),
        torch.randn(3, 16),
    ),
    "embedding": (lambda lib: lib.Embedding(30, 8, r=3, lora_alpha=6), torch.randint(0, 30, (4, 9))),
    "conv2d": (lambda lib: lib.Conv2d(4, 6, 3, r=2, lora_alpha=4, padding=1), torch.randn(2, 4, 7, 7)),
}


@pytest.mark.parametrize("kind", LAYER_PAIRS)
def test_eval_mode_checkpoints_load_both_ways_between_eval_mode_models(kind):
    """Saved in eval mode (merged weight), loaded into a model in eval mode: loralib's own outputs."""
    build, x = LAYER_PAIRS[kind]
    torch.manual_seed(0)
    theirs = build(loralib)
    randomize_lora_loralib(theirs)
    theirs.eval()
    expected = theirs(x)
    ours = build(lora)
    ours.eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # loralib's merged weight
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5)
    again = build(loralib)
    again.eval()
    again.load_state_dict(ours.state_dict(), strict=True)  # ours, saved in eval mode
    torch.testing.assert_close(again(x), expected, rtol=0, atol=1e-5)
    # ours takes the loaded update out again on train(): the pretrained weight loralib had
    theirs.train()
    torch.testing.assert_close(ours.train()(x), theirs(x), rtol=0, atol=1e-5)


def test_same_seed_builds_the_same_linear_as_loralib():
    """Same constructor, same RNG draws: ``import lora_basics as lora`` is a drop-in."""
    torch.manual_seed(3)
    reference = loralib.Linear(10, 7, r=2, lora_alpha=4)
    torch.manual_seed(3)
    ours = lora.Linear(10, 7, r=2, lora_alpha=4)
    for (name, theirs), (our_name, mine) in zip(reference.state_dict().items(), ours.state_dict().items(), strict=True):
        assert name == our_name
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def test_loralib_bugs_we_fix():
    """Documents what loralib gets wrong, so the fixes above are known to be needed."""
    # Conv1d: loralib's shapes do not multiply out to the kernel, it fails in forward.
    with pytest.raises(RuntimeError):
        loralib.Conv1d(4, 6, 3, r=2)(torch.randn(1, 4, 9))
    assert lora.Conv1d(4, 6, 3, r=2)(torch.randn(1, 4, 9)).shape == (1, 6, 7)
    # Saving a merged loralib layer stores W0 + delta: a fresh layer counts the update twice.
    torch.manual_seed(0)
    ref = loralib.Linear(8, 8, r=2)
    randomize_lora_loralib(ref)
    x = torch.randn(2, 8)
    expected = ref(x)
    ref.eval()
    again = loralib.Linear(8, 8, r=2)
    again.load_state_dict(ref.state_dict())
    assert not torch.allclose(again(x), expected, atol=1e-4)
    # ... while ours round-trips.
    ours = randomize_lora(lora.Linear(8, 8, r=2))
    expected = ours(x)
    ours.eval()
    fresh = lora.Linear(8, 8, r=2)
    fresh.load_state_dict(ours.state_dict())
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=1e-6)
