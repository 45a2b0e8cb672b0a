"""Half precision, .to(), deepcopy, pickle and torch.save/load(weights_only=True)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import lora_basics as lora
from tests.helpers import make_layer

# Merged vs unmerged in half precision: the two paths round differently. Measured worst absolute
# differences on these small layers (outputs of size ~1): 7.8e-3 in bf16 (8 significant bits) and
# 9.8e-4 in fp16 (11 bits), i.e. one unit in the last place. The tolerance allows ~2-4 of them.
HALF_TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 4e-3}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_layers_train_and_merge(kind, dtype):
    layer, x = make_layer(kind, dtype=dtype)
    assert layer.lora_A.dtype == dtype and layer.lora_B.dtype == dtype
    out = layer(x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    assert layer.lora_A.grad is not None and layer.lora_A.grad.dtype == dtype
    assert layer.frozen_weight.grad is None  # frozen
    layer.eval()
    tol = HALF_TOLERANCE[dtype]
    torch.testing.assert_close(layer(x).float(), out.detach().float(), rtol=tol, atol=tol)


def test_lora_on_a_half_precision_model_via_from_module():
    base = nn.Linear(16, 8).to(torch.bfloat16)
    layer = lora.Linear.from_module(base, r=4, lora_alpha=8)
    assert layer.weight.dtype == torch.bfloat16 and layer.lora_A.dtype == torch.bfloat16
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    torch.testing.assert_close(layer(x), base(x))


def test_to_dtype_moves_everything(kind):
    layer, x = make_layer(kind)
    layer = layer.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    assert layer(x.double() if x.is_floating_point() else x).dtype == torch.float64


def test_to_device_moves_buffers_too():
    layer = lora.MergedLinear(8, 12, r=2, enable_lora=[True, False, True])
    assert "lora_ind" in dict(layer.named_buffers())  # moved by .to(device), unlike loralib's attribute
    assert "lora_ind" not in layer.state_dict()  # and not saved: loralib's keys only
    layer = layer.to("meta")
    assert layer.lora_ind.device.type == "meta" and layer.lora_A.device.type == "meta"


def test_deepcopy_and_pickle(kind):
    layer, x = make_layer(kind)
    expected = layer(x)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        torch.testing.assert_close(clone(x), expected)
        clone.eval()
        torch.testing.assert_close(clone(x), expected, rtol=1e-5, atol=1e-5)
    layer.eval()
    merged_clone = pickle.loads(pickle.dumps(layer))
    assert merged_clone.merged
    torch.testing.assert_close(merged_clone(x), expected, rtol=1e-5, atol=1e-5)


def test_torch_save_load_weights_only(kind):
    layer, x = make_layer(kind)
    layer.eval()
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh, _ = make_layer(kind)
    fresh.reset_parameters()
    fresh.load_state_dict(state)
    fresh.eval()
    torch.testing.assert_close(fresh(x), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_layers_match_cpu(kind):
    layer, x = make_layer(kind)
    expected = layer(x)
    gpu = copy.deepcopy(layer).cuda()
    torch.testing.assert_close(gpu(x.cuda()).cpu(), expected, rtol=1e-4, atol=1e-4)
    gpu.eval()
    torch.testing.assert_close(gpu(x.cuda()).cpu(), expected, rtol=1e-4, atol=1e-4)
