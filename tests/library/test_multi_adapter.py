"""MultiAdapterModel: several adapters on one frozen base, a different adapter for each row of a batch.

Every row of a mixed batch must equal that row run through its own adapter merged into a fresh base
(lora_basics' own ``load_adapter`` + ``eval()``), and PEFT's mixed-batch inference on the same weights.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import lora_basics as lora
from lora_basics import MultiAdapterModel, MultiLoRAEmbedding, MultiLoRALinear
from lora_course.gpt import GPT, Conv1D, GPTConfig, load_pretrained
from tests.helpers import randomize_lora, tiny_gpt2

QV = {"target_modules": ["c_attn"], "enable_lora": {"c_attn": [True, False, True]}}
#: target kind -> the settings of two adapters of that kind (different ranks and scales).
KINDS = {
    "linear": (  # nn.Linear (lm_head) and GPT-2 Conv1D (c_proj, c_fc) targets
        {"target_modules": ["lm_head", "attn.c_proj"], "r": 4, "lora_alpha": 8},
        {"target_modules": ["lm_head", "c_fc"], "r": 2, "lora_alpha": 6},
    ),
    "fused": ({**QV, "r": 4, "lora_alpha": 8}, {**QV, "r": 2, "lora_alpha": 2}),  # c_attn, Q and V only
    "embedding": (
        {"target_modules": ["wte"], "r": 4, "lora_alpha": 8},
        {"target_modules": ["wte"], "r": 3, "lora_alpha": 3},
    ),
    "different targets": (
        {**QV, "r": 4, "lora_alpha": 8},
        {"target_modules": ["wte", "c_fc", "lm_head"], "r": 2, "lora_alpha": 4},
    ),
}
ROWS = ["first", "second", None, "second", "first", "first"]


def tokens(rows: int = len(ROWS), seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 15, (rows, 12), generator=torch.Generator().manual_seed(seed))


def trained_adapter(settings: dict, seed: int, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, bytes]:
    """A tiny GPT with a random (non-zero) adapter, merged (eval), and its adapter file's bytes."""
    model = lora.add_lora(load_pretrained().to(dtype).train(), **settings)
    randomize_lora(model, std=0.1, seed=seed)
    buffer = io.BytesIO()
    lora.save_adapter(model, buffer)
    return model.eval(), buffer.getvalue()


def served_with(*adapters: tuple[str, bytes], dtype: torch.dtype = torch.float32) -> MultiAdapterModel:
    served = MultiAdapterModel(load_pretrained().to(dtype))
    for name, data in adapters:
        served.load_adapter(name, io.BytesIO(data))
    return served


def assert_rows_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to rounding: 1e-10 in float64; in float32 1e-5 of the logits' scale (the tiny GPT's
    logits are ~14 in size, and a merged reference rounds ``W0 + dW``: both sides carry ~1e-5)."""
    scale = expected.abs().max().item()
    atol = 1e-10 * scale if expected.dtype == torch.float64 else 1e-5 * scale
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)


@pytest.fixture(params=sorted(KINDS))
def two_adapters(request):
    """``{name: (merged reference model, adapter file bytes)}`` for two adapters of one kind."""
    first, second = KINDS[request.param]
    return {"first": trained_adapter(first, seed=0), "second": trained_adapter(second, seed=1)}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@torch.no_grad()
def test_each_row_of_a_mixed_batch_equals_its_own_adapter_merged(kind, dtype):
    adapters = {
        name: trained_adapter(KINDS[kind][i], seed=i, dtype=dtype) for i, name in enumerate(["first", "second"])
    }
    served = served_with(*((name, data) for name, (_, data) in adapters.items()), dtype=dtype)
    x = tokens()
    got = served(x, adapter_names=ROWS)
    base = load_pretrained().to(dtype)(x)
    for i, name in enumerate(ROWS):
        assert_rows_close(got[i], base[i] if name is None else adapters[name][0](x)[i])
        if name is not None:  # the adapter does change the row (else the check above proves nothing)
            assert (got[i] - base[i]).abs().max() > 0.05
    torch.testing.assert_close(got[2], base[2], rtol=0, atol=0)  # a base row is exactly the base model's


@torch.no_grad()
def test_set_adapter_sends_every_row_through_it_and_none_is_the_base(two_adapters):
    served = served_with(*((name, data) for name, (_, data) in two_adapters.items()))
    x = tokens()
    assert served.active_adapter is None
    torch.testing.assert_close(served(x), load_pretrained()(x), rtol=0, atol=0)
    for name, (reference, _) in two_adapters.items():
        served.set_adapter(name)
        assert served.active_adapter == name
        assert_rows_close(served(x), reference(x))
        # one name for every row takes the single-adapter path; it must agree with the gathered one
        assert_rows_close(served(x, adapter_names=[name] * len(x)), reference(x))
    served.set_adapter(None)
    torch.testing.assert_close(served(x), load_pretrained()(x), rtol=0, atol=0)


def test_the_batched_forward_equals_the_row_by_row_formula():
    served = served_with(("first", trained_adapter({**QV, "r": 4, "lora_alpha": 8}, 0)[1]))
    served.load_adapter("second", io.BytesIO(trained_adapter(KINDS["embedding"][1], 1)[1]))
    served.add_adapter("third", ["wte", "c_attn"], r=2)
    randomize_lora_stacks(served)
    layers = served.multi_adapter_layers()
    assert isinstance(layers["h.0.attn.c_attn"], MultiLoRALinear) and isinstance(layers["wte"], MultiLoRAEmbedding)
    inputs = {"h.0.attn.c_attn": torch.randn(4, 5, 144), "wte": tokens(4)}
    for rows in (["first", "third", None, "second"], ["third"] * 4):
        with served.per_row(rows), torch.no_grad():
            for name, x in inputs.items():
                layer = layers[name]
                torch.testing.assert_close(layer(x), layer.forward_formula(x), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def randomize_lora_stacks(served: MultiAdapterModel) -> None:
    """Random values in every adapter slot (slot 0, the base, stays zero; padding stays zero)."""
    generator = torch.Generator().manual_seed(5)
    for layer in served.multi_adapter_layers().values():
        factors = [
            (torch.randn(A.shape, generator=generator) * 0.1, torch.randn(B.shape, generator=generator) * 0.1, s)
            for A, B, s in layer.slot_factors()
        ]
        factors[0] = layer.slot_factors()[0]
        layer.set_slots(factors)


def test_slots_of_other_ranks_are_zero_padded_and_an_untouched_module_gets_an_empty_slot():
    served = served_with(
        ("first", trained_adapter({**QV, "r": 4, "lora_alpha": 8}, 0)[1]),
        ("second", trained_adapter(KINDS["different targets"][1], 1)[1]),
    )
    c_attn = served.model.h[0].attn.c_attn
    assert c_attn.ranks == [0, 8, 0]  # Q and V of rank 4: one rank-8 update of the fused layer; second: none
    assert tuple(c_attn.lora_A_T.shape) == (3, 144, 8) and tuple(c_attn.lora_B_T.shape) == (3, 8, 432)
    assert served.model.wte.ranks == [0, 0, 2]
    assert not c_attn.lora_A_T[2].any() and not c_attn.lora_B_T[0].any()
    assert type(served.model.h[0].attn.c_proj) is Conv1D  # no adapter targets it: not wrapped


def test_add_adapter_starts_as_the_base_and_is_kept_in_order():
    served = MultiAdapterModel(load_pretrained())
    served.add_adapter("fresh", ["c_attn", "wte"], r=4, lora_alpha=8, enable_lora={"c_attn": [True, False, True]})
    served.add_adapter("other", ["lm_head"], r=2)
    assert served.adapter_names == ["fresh", "other"]
    assert served.model.h[1].attn.c_attn.ranks == [0, 8, 0] and served.model.lm_head.ranks == [0, 0, 2]
    x = tokens(2)
    with torch.no_grad():  # add_lora's init: B = 0 (A = 0 for an embedding), so nothing changes yet
        torch.testing.assert_close(served(x, adapter_names=["fresh", "other"]), load_pretrained()(x), rtol=0, atol=0)


def test_add_adapter_with_tensors_equals_loading_the_adapter_file():
    reference, data = trained_adapter(KINDS["different targets"][0], 0)
    from_file = served_with(("first", data))
    from_tensors = MultiAdapterModel(load_pretrained())
    from_tensors.add_adapter("first", **KINDS["different targets"][0], tensors=lora.lora_state_dict(reference))
    x = tokens(2)
    with torch.no_grad():
        expected = from_file(x, adapter_names=["first", None])
        torch.testing.assert_close(from_tensors(x, adapter_names=["first", None]), expected, rtol=0, atol=0)
    good = lora.lora_state_dict(reference)
    wrong = [
        (TypeError, "tensors must be a dict", ["not", "a", "dict"]),
        (ValueError, r"tensors do not fit the adapter: unexpected \[\], missing \['h.0.attn.c_attn.lora_A', ", {}),
        (ValueError, r"unexpected \['h.0.attn.c_proj.lora_A'\]", {**good, "h.0.attn.c_proj.lora_A": torch.zeros(2)}),
        (ValueError, r"has shape \(3, 144\)", {**good, "h.0.attn.c_attn.lora_A": torch.zeros(3, 144)}),
    ]
    for error, message, tensors in wrong:
        with pytest.raises(error, match=message):
            from_tensors.add_adapter("second", **KINDS["different targets"][0], tensors=tensors)
    assert from_tensors.adapter_names == ["first"]
    assert not any(isinstance(m, lora.LoRALayer) for m in from_tensors.modules())


def test_delete_adapter_keeps_the_others_and_puts_untouched_modules_back():
    adapters = {
        "first": trained_adapter({**QV, "r": 4, "lora_alpha": 8}, 0),
        "second": trained_adapter(KINDS["different targets"][1], 1),
    }
    served = served_with(*((name, data) for name, (_, data) in adapters.items()))
    served.set_adapter("first")
    served.delete_adapter("first")
    assert served.adapter_names == ["second"] and served.active_adapter is None
    assert type(served.model.h[0].attn.c_attn) is Conv1D  # only "first" touched c_attn
    x = tokens(3)
    with torch.no_grad():
        got = served(x, adapter_names=["second", None, "second"])
        assert_rows_close(got[0], adapters["second"][0](x)[0])
        torch.testing.assert_close(got[1], load_pretrained()(x)[1], rtol=0, atol=0)
    served.load_adapter("first", io.BytesIO(adapters["first"][1]))  # the name is free again
    assert served.adapter_names == ["second", "first"]
    served.delete_adapter("second")
    assert served.adapter_names == ["first"] and type(served.model.wte) is nn.Embedding


def test_the_base_stays_frozen_and_bit_identical_and_the_state_dict_is_the_base():
    served = served_with(
        ("first", trained_adapter(KINDS["fused"][0], 0)[1]), ("second", trained_adapter(KINDS["linear"][0], 1)[1])
    )
    assert not any(p.requires_grad for p in served.parameters())
    pretrained = load_pretrained().state_dict()
    state = {key.replace(".base_layer", ""): value for key, value in served.model.state_dict().items()}
    assert state.keys() == pretrained.keys()
    assert all(torch.equal(state[key], value) for key, value in pretrained.items())


def test_per_row_works_for_any_call_of_the_model_and_resets_afterwards():
    adapters = {"first": trained_adapter(KINDS["fused"][0], 0), "second": trained_adapter(KINDS["fused"][1], 1)}
    served = served_with(*((name, data) for name, (_, data) in adapters.items()))
    prompt = tokens(2)[:, :4]
    with served.per_row(["second", "first"]):
        generated = served.model.generate(prompt, max_new_tokens=3)
    assert torch.equal(generated[0], adapters["second"][0].generate(prompt[:1], 3)[0])
    assert torch.equal(generated[1], adapters["first"][0].generate(prompt[1:], 3)[0])
    assert all(layer.row_slots is None for layer in served.multi_adapter_layers().values())
    for names in (["first", "second"], ["first", "first"]):  # mixed, or one adapter for every row
        with pytest.raises(
            ValueError, match="adapter_names has 2 entries, but a multi-adapter layer got an input with 3"
        ):
            served(tokens(3), adapter_names=names)
    assert all(layer.row_slots is None for layer in served.multi_adapter_layers().values())


def test_bad_input_raises_naming_the_argument_and_changes_nothing(tmp_path):
    served = served_with(("first", trained_adapter(KINDS["fused"][0], 0)[1]))
    x = tokens(2)
    with torch.no_grad():
        before = served(x, adapter_names=["first", None])
    cases = [
        (TypeError, "model must be a torch nn.Module", lambda: MultiAdapterModel("gpt")),
        (ValueError, "model must be the plain base model", lambda: MultiAdapterModel(lora.add_lora(GPT(), ["c_fc"]))),
        (TypeError, "name must be a string", lambda: served.add_adapter(3, ["c_fc"])),
        (ValueError, "name must be a non-empty string", lambda: served.add_adapter("", ["c_fc"])),
        (ValueError, "already holds an adapter 'first'", lambda: served.add_adapter("first", ["c_fc"])),
        (ValueError, "r must be r >= 1", lambda: served.add_adapter("new", ["c_fc"], r=0)),
        (ValueError, "target 'c_nope' matches no module", lambda: served.add_adapter("new", ["c_nope"])),
        (ValueError, "name='nope' is not an adapter of this model", lambda: served.set_adapter("nope")),
        (ValueError, "name='nope' is not an adapter of this model", lambda: served.delete_adapter("nope")),
        (ValueError, "name=None is the base model", lambda: served.delete_adapter(None)),
        (TypeError, "adapter_names must be a list", lambda: served(x, adapter_names="first")),
        (TypeError, "adapter_names must hold strings or None, got 0", lambda: served(x, adapter_names=[0, None])),
        (ValueError, "adapter_names must not be empty", lambda: served(x, adapter_names=[])),
        (ValueError, r"adapter_names names adapters \['nope'\]", lambda: served(x, adapter_names=["nope", None])),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()
    assert served.adapter_names == ["first"] and served.active_adapter is None
    with torch.no_grad():
        torch.testing.assert_close(served(x, adapter_names=["first", None]), before, rtol=0, atol=0)


def test_a_failed_load_leaves_the_model_as_it_was(tmp_path):
    served = served_with(("first", trained_adapter(KINDS["fused"][0], 0)[1]))
    modules = dict(served.model.named_modules())
    other_base = lora.add_lora(GPT(GPTConfig()).train(), ["c_attn", "wte"], r=2)  # same shapes, other weights
    lora.save_adapter(other_base, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="wrong base model"):
        served.load_adapter("other", tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not an adapter")
    with pytest.raises(Exception, match="junk.pt|pickle|load"):
        served.load_adapter("junk", tmp_path / "junk.pt")
    conv = MultiAdapterModel(nn.Sequential(nn.Linear(4, 4), nn.Conv1d(4, 4, 1)))
    with pytest.raises(TypeError, match="module '1' is a Conv1d; MultiAdapterModel serves"):
        conv.add_adapter("conv", ["0", "1"], r=2)
    assert conv.adapter_names == [] and type(conv.model[0]) is nn.Linear and type(conv.model[1]) is nn.Conv1d
    assert served.adapter_names == ["first"] and dict(served.model.named_modules()) == modules
    assert not any(isinstance(m, lora.LoRALayer) for m in served.modules())


def test_layers_refuse_modules_they_do_not_serve():
    with pytest.raises(TypeError, match="base_layer must be an nn.Linear or a GPT-2 Conv1D, got Conv2d"):
        MultiLoRALinear(nn.Conv2d(2, 2, 1))
    with pytest.raises(TypeError, match="base_layer must be an nn.Embedding, got Linear"):
        MultiLoRAEmbedding(nn.Linear(2, 2))
    layer = MultiLoRALinear(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"factors of shapes A \(2, 5\), B \(3, 2\) do not fit"):
        layer.add_slot(torch.zeros(2, 5), torch.zeros(3, 2), 1.0)
    assert layer.ranks == [0]
    layer.add_slot(torch.ones(2, 4), torch.ones(3, 2), 1.0)
    with pytest.raises(ValueError, match=r"slots must be in \[0, 2\), got \[0, 2\]"):
        layer.use_rows(torch.tensor([0, 2]))
    with pytest.raises(TypeError, match="slots must be a non-empty 1-D integer tensor"):
        layer.use_rows(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"slot must be in \[0, 2\), got 3"):
        layer.use_slot(3)
    layer.use_rows(torch.tensor([1, 0]))  # row 0 through the adapter: + 1 * (x A^T) B^T = 8 for x = 1
    with torch.no_grad():
        y = layer(torch.ones(2, 4))
    assert layer.rows_differ
    torch.testing.assert_close(y[0] - y[1], torch.full((3,), 8.0))


def test_a_float64_model_serves_in_float64():
    base = load_pretrained().double()
    reference = lora.add_lora(copy.deepcopy(base).train(), **KINDS["different targets"][1])
    randomize_lora(reference, seed=2)
    buffer = io.BytesIO()
    lora.save_adapter(reference, buffer)
    served = MultiAdapterModel(base)
    served.load_adapter("first", io.BytesIO(buffer.getvalue()))
    x = tokens(2)
    with torch.no_grad():
        got = served(x, adapter_names=["first", None])
    assert got.dtype == torch.float64 and served.model.lm_head.lora_B_T.dtype == torch.float64
    assert_rows_close(got[0], reference.eval()(x)[0])


# -- the same mixed batch as PEFT ----------------------------------------------------------------------

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


HF_TOKENS = torch.randint(0, 50, (4, 10), generator=torch.Generator().manual_seed(1))
PEFT_ROWS = ["first", "second", "__base__", "first"]


def peft_logits(theirs) -> torch.Tensor:
    with torch.no_grad():
        return theirs(input_ids=HF_TOKENS, adapter_names=PEFT_ROWS).logits


def ours_logits(served: MultiAdapterModel) -> torch.Tensor:
    with torch.no_grad():
        return served(input_ids=HF_TOKENS, adapter_names=[None if n == "__base__" else n for n in PEFT_ROWS]).logits


def test_mixed_batch_equals_peft_for_adapters_made_by_peft(tmp_path):
    configs = {
        "first": peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "attn.c_proj", "wte", "lm_head"]),
        "second": peft.LoraConfig(r=2, lora_alpha=6, target_modules=["c_attn", "mlp.c_fc", "wte"]),
    }
    theirs = peft.get_peft_model(tiny_gpt2(), configs["first"], adapter_name="first")
    theirs.add_adapter("second", configs["second"])
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        for name, param in theirs.named_parameters():
            if "lora_" in name:  # random non-zero factors (B = 0 at init would make every row the base)
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    theirs.eval().save_pretrained(tmp_path)  # one folder per adapter
    served = MultiAdapterModel(tiny_gpt2())
    for name in configs:  # the same factors: PEFT's files -> lora_basics adapters -> adapter files
        buffer = io.BytesIO()
        lora.save_adapter(lora.from_peft(tiny_gpt2(), tmp_path / name), buffer)
        served.load_adapter(name, io.BytesIO(buffer.getvalue()))
    expected = peft_logits(theirs)
    assert (expected[0] - expected[2]).abs().max() > 0.05  # the adapters matter
    torch.testing.assert_close(ours_logits(served), expected, rtol=0, atol=1e-5)


def test_mixed_batch_equals_peft_for_fused_qv_adapters_made_here(tmp_path):
    served = MultiAdapterModel(tiny_gpt2())
    theirs = None
    for seed, name in enumerate(("first", "second")):
        ours = lora.add_lora(
            tiny_gpt2().train(),
            ["c_attn", "wte"],
            r=2 + seed,
            lora_alpha=4,
            enable_lora={"c_attn": [True, False, True]},
        )
        randomize_lora(ours, std=0.3, seed=seed)
        buffer = io.BytesIO()
        lora.save_adapter(ours, buffer)
        served.load_adapter(name, io.BytesIO(buffer.getvalue()))
        lora.to_peft(ours.eval(), tmp_path / name)  # Q/V as one rank r*k update with a block-diagonal B
        if theirs is None:
            theirs = peft.PeftModel.from_pretrained(tiny_gpt2(), tmp_path / name, adapter_name=name)
        else:
            theirs.load_adapter(tmp_path / name, adapter_name=name)
    assert isinstance(served.model.transformer.h[0].attn.c_attn, MultiLoRALinear)
    torch.testing.assert_close(ours_logits(served), peft_logits(theirs.eval()), rtol=0, atol=1e-5)
