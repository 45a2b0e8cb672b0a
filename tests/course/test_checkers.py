"""The exercise checkers: they pass the reference solutions, fail wrong answers with a message that names the
mistake, enforce what each task forbids, and keep the verdict out of the learner's reach.

- every checker passes the reference solution (the code of the instructor notebooks, run here in-process) and
  fails a plausible wrong answer, and every shortcut its task forbids, with a specific message;
- a wrong return type is reported as a type error, a stub as "not implemented yet", a crash with its line;
- the probe (which runs the learner's code) records plain data only, and the judge (which compares) never passes
  a record that a probe of a right answer did not produce.
"""

from __future__ import annotations

import copy
import io
import math
import re

import nbformat
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lora_basics as lora
from lora_course import checkers, exercises
from lora_course.checkers import EXERCISES, ExerciseFailed
from lora_course.checkers.common import Watch, forbidden_uses, plain
from lora_course.submission import Lesson
from tests.helpers import run_cells

SOLUTIONS = sorted(exercises.SOLUTIONS_DIR.glob("[0-9]*.ipynb"))
CHECKERS = sorted(name for name in dir(checkers) if name.startswith("check_"))


@pytest.fixture(scope="module")
def solved() -> dict:
    """Each exercise's reference answer (the function or class of its instructor notebook), by exercise name."""
    answers = {}
    for path in SOLUTIONS:
        namespace = run_cells(path)
        for checker, answer in Lesson.load(exercises.EXERCISES_DIR / path.name).checks.values():
            answers[checker] = namespace[answer]
    return answers


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_reference_solutions_pass_their_checks(path):
    out = run_cells(path)["__stdout__"]
    nb = nbformat.read(path, as_version=4)
    assert out.count("✓") == len(exercises.find_exercises(nb))
    assert "✗" not in out


def test_the_exercise_texts_never_scale_an_update_that_already_holds_the_scale():
    # Delta W (delta_weight(), conv_delta) is s * B @ A in the checkers: a text writing "s * Delta" scales twice.
    for path in SOLUTIONS:
        text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
        assert not re.search(r"s\s*(\\cdot|\\,)?\s*\\Delta", text), path.name


def test_every_checker_is_used_by_a_solution_notebook_and_registered():
    code = "\n".join(
        cell.source for p in SOLUTIONS for cell in nbformat.read(p, as_version=4).cells if cell.cell_type == "code"
    )
    assert [name for name in CHECKERS if f"checkers.{name}(" not in code] == []
    assert sorted(f"check_{name}" for name in EXERCISES) == CHECKERS


# -- plausible wrong answers fail, with a specific message -----------------------------------------


def _no_scaling_forward(x, W, b, A, B, scaling):
    return x @ W.T + b + (x @ A.T) @ B.T


def _freeze_too_little(model):
    for p in model.parameters():
        p.requires_grad = False
    for m in model.modules():
        if isinstance(m, lora.LoRALinear):
            for p in m.parameters():
                p.requires_grad = True


class _RandomBLoRALinear(lora.LoRALinear):
    def __init__(self, in_features, out_features, config, bias=True):
        super().__init__(in_features, out_features, config, bias=bias)
        nn.init.normal_(self.B.weight)


def _grads_no_scaling(x, grad_out, A, B, scaling):
    return (grad_out @ B).T @ x, grad_out.T @ (x @ A.T)


def _budget_first_layer_only(layers, budget, target):
    r = budget // sum(layers[0])
    return r, target * r


def _state_dict_all_biases(model, bias="none"):
    state = model.state_dict()
    return {k: v for k, v in state.items() if "lora_" in k or k.endswith("bias")}


def _wrap_top_level_only(model, r, lora_alpha):
    for name, child in model.named_children():
        if type(child) is nn.Linear:
            setattr(model, name, lora.Linear.from_module(child, r=r, lora_alpha=lora_alpha))
    return model


def _scatter_first_slices(y, out_features, enable_lora):
    out = y.new_zeros(*y.shape[:-1], out_features)
    out[..., : y.shape[-1]] = y
    return out


def _merged_forward_no_scaling(x, layer):
    d = layer.out_features // len(layer.enable_lora)
    after_A = x @ layer.lora_A.T
    out = x.new_zeros(*x.shape[:-1], layer.out_features)
    enabled = [s for s, on in enumerate(layer.enable_lora) if on]
    for j, s in enumerate(enabled):
        out[..., s * d : (s + 1) * d] = (
            after_A[..., j * layer.r : (j + 1) * layer.r] @ layer.lora_B[j * d : (j + 1) * d].T
        )
    return out


def _embedding_merge_in_place(layer):
    with torch.no_grad():
        layer.weight += (layer.lora_B @ layer.lora_A).T * layer.scaling
    return layer.weight


def _conv_forward_no_dilation(x, layer):
    conv = layer.conv
    kernel = conv.weight + (layer.lora_B @ layer.lora_A).view(conv.weight.shape) * layer.scaling
    return F.conv2d(x, kernel, conv.bias, conv.stride, conv.padding, 1, conv.groups)


@torch.no_grad()
def _export_adds_twice(layer):
    weight = layer.weight.T if layer.fan_in_fan_out else layer.weight
    plain_layer = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    plain_layer.weight.copy_(weight + layer.scaling * layer.lora_B @ layer.lora_A)
    if layer.bias is not None:
        plain_layer.bias.copy_(layer.bias)
    return plain_layer


def _counts_c_proj_once(config, r, targets):
    from lora_course.gpt import GPT

    d, vocab = config.n_embd, config.vocab_size
    shapes = {"c_attn": (d, 3 * d), "c_fc": (d, 4 * d), "c_proj": (d, d), "wte": (vocab, d), "lm_head": (d, vocab)}
    layers = {"wte": 1, "lm_head": 1}
    trainable = sum(r * sum(shapes[t]) * layers.get(t, config.n_layer) for t in targets)
    return trainable, sum(p.numel() for p in GPT(config).parameters()) + trainable


def _inject_qv_not_frozen(model, r, alpha):
    for block in model.h:
        old = block.attn.c_attn
        new = lora.MergedLinear(
            *old.weight.shape, r=r, lora_alpha=alpha, enable_lora=[True, False, True], fan_in_fan_out=True
        )
        with torch.no_grad():
            new.weight.copy_(old.weight)
            new.bias.copy_(old.bias)
        block.attn.c_attn = new
    return model


def _export_plain_adds_twice(model):
    from lora_course.gpt import Conv1D

    exported = copy.deepcopy(model)
    with torch.no_grad():
        for name, layer in list(exported.named_modules()):
            if isinstance(layer, lora.LoRALayer):
                if isinstance(layer, lora.Embedding):
                    new = nn.Embedding(layer.num_embeddings, layer.embedding_dim)
                elif layer.fan_in_fan_out:
                    new = Conv1D(layer.out_features, layer.in_features)
                else:
                    new = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
                new.weight.copy_(layer.weight + layer.delta_weight())
                if getattr(layer, "bias", None) is not None:
                    new.bias.copy_(layer.bias)
                parent, _, child = name.rpartition(".")
                setattr(exported.get_submodule(parent), child, new)
    return exported


def _config_without_patterns(target_modules, r, lora_alpha, lora_dropout=0.0, enable_lora=None, use_rslora=False):
    return {"r": r, "lora_alpha": lora_alpha, "target_modules": target_modules, "lora_dropout": lora_dropout}


def _merged_b_on_the_first_slices(layer):
    d = layer.out_features // len(layer.enable_lora)
    diagonal = torch.block_diag(*layer.lora_B.split(d))  # (k d, k r)
    return layer.lora_A, F.pad(diagonal, (0, 0, 0, layer.out_features - diagonal.shape[0]))  # rows of slices 1..k


def _levels_not_scaled(p_max):
    positive = torch.special.ndtri(torch.linspace(p_max, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(p_max, 0.5, 8, dtype=torch.float64)[:-1])
    return torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values.float()


def _levels_unsorted(p_max):
    positive = torch.special.ndtri(torch.linspace(p_max, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(p_max, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative])
    return (levels / levels.max()).float()


def _quantize_one_absmax(weight, blocksize):
    # every value scaled by the absmax of the whole weight, not by that of its block
    blocks = weight.reshape(-1, blocksize)
    scaled = (blocks / weight.abs().max()).reshape(-1, 1)
    return (scaled - lora.nf4.NF4_LEVELS).abs().argmin(dim=1), blocks.abs().amax(dim=1)


def _quantize_dividing_by_zero(weight, blocksize):
    blocks = weight.reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = (blocks / absmax[:, None]).reshape(-1, 1)  # a block of zeros becomes NaN
    return (scaled - lora.nf4.NF4_LEVELS).abs().argmin(dim=1), absmax


def _dequantize_low_half_first(packed, absmax, shape, blocksize):
    codes = torch.stack([packed.long() & 15, packed.long() >> 4], dim=1).reshape(-1)
    return (lora.nf4.NF4_LEVELS[codes].view(-1, blocksize) * absmax[:, None]).view(shape)


#: checker -> (wrong answer, expected status, a fragment the message must contain)
def _stack_without_transposing_b(factors):
    rank = max(A.shape[0] for A, _, _ in factors)
    A_T = torch.stack([F.pad(A.T, (0, rank - A.shape[0])) for A, _, _ in factors])  # (n, in, R)
    B = torch.stack([F.pad(B, (0, rank - B.shape[1])) for _, B, _ in factors])  # (n, out, R): B, not B^T
    return A_T, B, torch.tensor([s for _, _, s in factors])


def _dora_by_columns(W0, A, B, magnitude, scaling):
    V = W0 + scaling * B @ A
    return magnitude[:, None] * V / torch.linalg.vector_norm(V, dim=0, keepdim=True)


def _pissa_uneven(W0, r, scaling):
    U, S, Vh = torch.linalg.svd(W0, full_matrices=False)
    B, A = U[:, :r] * S[:r] / scaling, Vh[:r]  # the right product, all of S in B
    return A, B, W0 - scaling * B @ A


def _plus_forgets_the_bias(model, lr, ratio):
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if n.endswith("lora_A")], "lr": lr},
        {"params": [p for n, p in named if n.endswith("lora_B")], "lr": lr * ratio},
    ]


WRONG = {
    "check_param_counts": (lambda d, k, r: (d * k, r * d * k), "failed", "B is d x r"),
    "check_best_rank_r": (
        lambda M, r: (lambda U, S, Vh: U[:, :r] @ Vh[:r])(*torch.linalg.svd(M, full_matrices=False)),
        "failed",
        "diag(S[:r])",
    ),
    "check_rank_for_energy": (lambda S, e: int((torch.cumsum(S, 0) / S.sum() < e).sum()) + 1, "failed", "SQUARED"),
    "check_lora_forward": (_no_scaling_forward, "failed", "scaling *"),
    "check_freeze_base": (_freeze_too_little, "failed", "not the biases"),
    "check_lora_linear_class": (_RandomBLoRALinear, "failed", "B.weight should start at zero"),
    "check_scaling": (lambda alpha, r, rslora=False: alpha / r, "failed", "sqrt(r)"),
    "check_lora_grads": (_grads_no_scaling, "failed", "dA = scaling"),
    "check_budget": (_budget_first_layer_only, "failed", "sum(in + out)"),
    "check_fifo_delta": (lambda A, B, s, fifo: s * B @ A, "failed", "transpose"),
    "check_lora_state_dict": (_state_dict_all_biases, "failed", "only keys containing 'lora_'"),
    "check_wrap_linears": (_wrap_top_level_only, "failed", "recurse"),
    "check_merged_shapes": (lambda i, o, r, en: ((r * sum(en), i), (o, r)), "failed", "out/len(enable_lora)*k"),
    "check_merged_scatter": (_scatter_first_slices, "failed", "ENABLED"),
    "check_merged_forward": (_merged_forward_no_scaling, "failed", "multiply by scaling"),
    "check_embedding_merge": (_embedding_merge_in_place, "failed", "do not add in place"),
    "check_embedding_forward": (
        lambda ids, layer: layer.weight[ids] + layer.lora_A.T[ids] @ layer.lora_B.T,
        "failed",
        "scaling *",
    ),
    "check_changed_tokens": (
        lambda layer: [int(t) for t in torch.nonzero(layer.lora_B.abs().sum(1) > 0).flatten()],
        "failed",
        "COLUMNS of lora_A",
    ),
    "check_conv_shapes": (
        lambda i, o, ks, r, g: ((r * ks[0], i * math.prod(ks[1:])), (o * ks[0], r * ks[0])),
        "failed",
        "out/groups*k0",
    ),
    "check_conv_delta": (lambda A, B, s, shape: (B @ A).T.reshape(shape) * s, "failed", ".view(weight_shape)"),
    "check_conv_forward": (_conv_forward_no_dilation, "failed", "conv.dilation"),
    "check_no_double_merge": (checkers.NaiveMergeLinear, "failed", "self.merged"),
    "check_export_linear": (_export_adds_twice, "failed", "ALREADY merged"),
    "check_lora_counts": (_counts_c_proj_once, "failed", "AND mlp.c_proj"),
    "check_inject_qv": (_inject_qv_not_frozen, "failed", "mark_only_lora_as_trainable"),
    "check_export_plain": (_export_plain_adds_twice, "failed", "ALREADY merged"),
    "check_dora_weight": (_dora_by_columns, "failed", "each ROW"),
    "check_pissa_split": (_pissa_uneven, "failed", "evenly"),
    "check_lora_plus_groups": (_plus_forgets_the_bias, "failed", "0.bias is in no group"),
    "check_nf4_levels": (_levels_not_scaled, "failed", "divided by the largest"),
    "check_quantize_blockwise": (_quantize_one_absmax, "failed", "absmax of ITS block"),
    "check_dequantize_packed": (_dequantize_low_half_first, "failed", "FIRST code of each byte is in its HIGH 4 bits"),
    "check_stack_adapters": (_stack_without_transposing_b, "failed", "transpose each B"),
    "check_mixed_linear": (
        lambda x, W, b, A_T, B_T, s, slots: x @ W.T + b + torch.bmm(torch.bmm(x, A_T[slots]), B_T[slots]),
        "failed",
        "scaling[slots].view(-1, 1, 1)",
    ),
    "check_mixed_embedding": (
        lambda ids, W0, A_T, B_T, s, slots: W0[ids] + s[slots[0]] * A_T[slots[0]][ids] @ B_T[slots[0]],
        "failed",
        "ITS OWN table",
    ),
    "check_peft_key": (
        lambda name, layer, factor: f"base_model.model.{name}.{factor}.weight",
        "failed",
        "lora_embedding_A",
    ),
    "check_lora_config": (_config_without_patterns, "failed", "rank_pattern and alpha_pattern"),
    "check_merged_as_lora": (_merged_b_on_the_first_slices, "failed", "ENABLED"),
    "check_shard_loss": (
        lambda logits, targets, n, world: F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100),
        "failed",
        "GLOBAL number",
    ),
    "check_allreduce_bytes": (lambda model: 4 * sum(p.numel() for p in model.parameters()), "failed", "requires_grad"),
    "check_memory_per_gpu": (lambda n, t, method, gpus: 16 * n / 1e9 / gpus, "failed", "2 per frozen"),
}


def test_every_checker_has_a_wrong_answer():
    assert sorted(WRONG) == CHECKERS


def failure(checker: str, answer) -> ExerciseFailed:
    with pytest.raises(ExerciseFailed) as info:
        getattr(checkers, checker)(answer)
    return info.value


@pytest.mark.parametrize("checker", sorted(WRONG))
def test_checker_fails_a_plausible_wrong_answer(checker, capsys):
    wrong, status, fragment = WRONG[checker]
    found = failure(checker, wrong)
    message = str(found)
    assert found.status == status, message
    assert fragment in message, message
    assert message.startswith("✗ ") and "Hint: " in message, message
    assert message in capsys.readouterr().out  # printed as well as raised


# -- what each task forbids, or asks for beyond the numbers ----------------------------------------


def _forward_dense(x, W, b, A, B, scaling):
    return x @ (W + scaling * B @ A).T + b


def _forward_dense_einsum(x, W, b, A, B, scaling):
    return x @ W.T + b + x @ torch.einsum("or,ri->oi", B, A).T * scaling


def _lora_linear(forward=None, std=0.02):
    """A textbook LoRALinear class whose init uses ``std`` and whose forward is ``forward`` (default: the right one)."""

    class Layer(nn.Linear):
        def __init__(self, in_features, out_features, config, bias=True):
            super().__init__(in_features, out_features, bias=bias)
            r = config.lora_r
            self.scaling = (r if config.lora_alpha is None else config.lora_alpha) / r
            self.A = nn.Linear(in_features, r, bias=False)
            self.B = nn.Linear(r, out_features, bias=False)
            nn.init.normal_(self.A.weight, std=std)
            nn.init.zeros_(self.B.weight)
            self.dropout = nn.Dropout(config.lora_dropout)

        def forward(self, x):
            if forward is not None:
                return forward(self, x)
            return F.linear(x, self.weight, self.bias) + self.scaling * self.B(self.A(self.dropout(x)))

    return Layer


def _wrap_keeping_the_old_parameter(model, r, lora_alpha):
    for name, child in model.named_children():
        if type(child) is nn.Linear:
            new = lora.Linear(child.in_features, child.out_features, r=r, lora_alpha=lora_alpha)
            new.weight, new.bias = child.weight, child.bias  # the old, trainable Parameters
            setattr(model, name, new)
        else:
            _wrap_keeping_the_old_parameter(child, r, lora_alpha)
    return model


class _NeverMerges(checkers.NaiveMergeLinear):
    def train(self, mode=True):
        nn.Module.train(self, mode)
        return self


@torch.no_grad()
def _export_through_eval(layer):
    layer.eval()  # merges the caller's layer (and switches its mode)
    weight = layer.weight.T if layer.fan_in_fan_out else layer.weight
    new = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    new.weight.copy_(weight)
    if layer.bias is not None:
        new.bias.copy_(layer.bias)
    return new


def _inject_with_add_lora_by_name(model, r, alpha):
    add = getattr(lora, "add" + "_lora")  # hidden from a scan of the source: the call itself is seen
    return add(model, ["c_attn"], r=r, lora_alpha=alpha, enable_lora={"c_attn": [True, False, True]})


def _export_with_merge_and_export(model):
    return lora.merge_and_export(model)


def _dora_with_the_layer(W0, A, B, magnitude, scaling):
    layer = lora.Linear(
        W0.shape[1], W0.shape[0], r=A.shape[0], lora_alpha=scaling * A.shape[0], bias=False, use_dora=True
    )
    with torch.no_grad():
        layer.weight.copy_(W0)
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
        layer.lora_magnitude.copy_(magnitude)
    return layer.eval().weight


def _pissa_with_init_pissa(W0, r, scaling):
    layer = lora.Linear(W0.shape[1], W0.shape[0], r=r, lora_alpha=scaling * r, bias=False)
    with torch.no_grad():
        layer.weight.copy_(W0)
    lora.init_pissa(layer)
    return layer.lora_A, layer.lora_B, layer.weight


def _plus_with_the_library(model, lr, ratio):
    return lora.lora_plus_param_groups(model, lr=lr, ratio=ratio)


def _key_from_a_written_adapter(module_name, layer, factor):
    import tempfile

    from lora_basics.peft_bridge import load_safetensors

    write = getattr(lora, "to_" + "peft")  # hidden from a scan of the source: the call itself is seen
    wrapper = nn.ModuleDict({"x": layer})
    with tempfile.TemporaryDirectory() as folder:
        write(wrapper, folder)
        keys = sorted(load_safetensors(f"{folder}/adapter_model.safetensors"))
    return keys[FACTORS.index(factor)].replace("base_model.model.x.", f"base_model.model.{module_name}.")


FACTORS = ("lora_A", "lora_B")


def _quantize_with_the_library(weight, blocksize):
    q = lora.nf4.quantize_nf4(weight, blocksize)
    return lora.nf4.unpack(q.packed, weight.numel()), q.absmax


#: (checker, answer that ignores the task, a fragment the message must contain)
SHORTCUTS = [
    ("check_lora_forward", _forward_dense, "dense update (5 x 6)"),
    ("check_lora_forward", _forward_dense_einsum, "dense update"),
    ("check_lora_linear_class", _lora_linear(std=0.05), "std 0.0498, expected mean 0 and std 0.02"),
    (
        "check_lora_linear_class",
        _lora_linear(lambda s, x: F.linear(x, s.weight, s.bias) + s.scaling * s.B(s.A(x))),
        "never applies dropout",
    ),
    (
        "check_lora_linear_class",
        _lora_linear(lambda s, x: F.linear(x, s.weight, s.bias) + s.scaling * s.B(s.dropout(s.A(x)))),
        "dropout is after A",
    ),
    (
        "check_lora_linear_class",
        _lora_linear(lambda s, x: s.dropout(F.linear(x, s.weight, s.bias) + s.scaling * s.B(s.A(x)))),
        "dropout is on the output",
    ),
    ("check_wrap_linears", _wrap_keeping_the_old_parameter, "pretrained weight 0.weight is trainable"),
    ("check_merged_forward", lambda x, layer: x @ layer.delta_weight().T, "calls `delta_weight`"),
    ("check_merged_forward", lambda x, layer: layer(x) - F.linear(x, layer.weight, layer.bias), "the layer itself"),
    ("check_embedding_forward", lambda ids, layer: layer(ids), "the layer itself"),
    ("check_embedding_forward", lambda ids, layer: (layer.weight + layer.delta_weight())[ids], "dense update (4 x 10)"),
    ("check_conv_forward", lambda x, layer: layer(x), "the layer itself"),
    ("check_no_double_merge", _NeverMerges, "layer.merged is False, expected True"),
    ("check_export_linear", _export_through_eval, "changed `layer` (merged, training"),
    ("check_inject_qv", _inject_with_add_lora_by_name, "calls `add_lora`"),
    ("check_export_plain", _export_with_merge_and_export, "uses `merge_and_export`"),
    ("check_dora_weight", _dora_with_the_layer, "uses `Linear`"),
    ("check_pissa_split", _pissa_with_init_pissa, "uses `init_pissa`"),
    ("check_lora_plus_groups", _plus_with_the_library, "uses `lora_plus_param_groups`"),
    ("check_peft_key", _key_from_a_written_adapter, "calls `to_peft`"),
    ("check_merged_as_lora", lambda layer: (layer.lora_A, layer.full_lora_B()), "calls `full_lora_B`"),
    ("check_merged_as_lora", lambda layer: (layer.lora_A, layer.delta_weight()), "calls `delta_weight`"),
    ("check_nf4_levels", _levels_unsorted, "not sorted"),
    (
        "check_nf4_levels",
        lambda p_max: getattr(lora.nf4, "normal_float" + "_levels")(p_max),
        "calls `normal_float_levels`",
    ),
    ("check_quantize_blockwise", _quantize_dividing_by_zero, "its last block all zeros: 32 codes are wrong"),
    (
        "check_quantize_blockwise",
        lambda weight, blocksize: getattr(lora.nf4, "quantize" + "_blocks")(weight, lora.nf4.NF4_LEVELS, blocksize),
        "calls `quantize_blocks`",
    ),
    ("check_quantize_blockwise", _quantize_with_the_library, "uses `quantize_nf4`"),
    (
        "check_dequantize_packed",
        lambda packed, absmax, shape, blocksize: getattr(lora.nf4, "dequantize" + "_nf4")(
            lora.nf4.NF4Tensor(packed, absmax, torch.Size(shape), torch.float32, blocksize)
        ),
        "calls `dequantize_nf4`",
    ),
]


@pytest.mark.parametrize(
    ("checker", "answer", "fragment"), SHORTCUTS, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(SHORTCUTS)]
)
def test_checker_fails_an_answer_that_ignores_the_task(checker, answer, fragment):
    found = failure(checker, answer)
    assert found.status == "failed", str(found)
    assert fragment in str(found), str(found)


def test_lora_config_accepts_any_config_that_peft_reads_as_the_same_layers():
    # The fused layers' rank and alpha at the top, the plain targets' in the patterns: the reverse of the
    # reference solution, and the same layers once PEFT has read it.
    def lora_config(target_modules, r, lora_alpha, lora_dropout=0.0, enable_lora=None, use_rslora=False):
        enable_lora = enable_lora or {}
        k = max((sum(flags) for flags in enable_lora.values()), default=1)
        plain = [target for target in target_modules if target not in enable_lora]
        return {
            "r": r * k,
            "lora_alpha": lora_alpha * (math.sqrt(k) if use_rslora else k),
            "target_modules": target_modules,
            "lora_dropout": lora_dropout,
            "use_rslora": use_rslora,
            "rank_pattern": dict.fromkeys(plain, r),
            "alpha_pattern": dict.fromkeys(plain, lora_alpha),
        }

    checkers.check_lora_config(lora_config)


def test_lora_config_names_the_layer_whose_scale_is_wrong():
    def lora_config(target_modules, r, lora_alpha, lora_dropout=0.0, enable_lora=None, use_rslora=False):
        k = {target: sum(flags) for target, flags in (enable_lora or {}).items()}
        return {
            "r": r,
            "lora_alpha": lora_alpha,
            "target_modules": target_modules,
            "lora_dropout": lora_dropout,
            "use_rslora": use_rslora,
            "rank_pattern": {target: r * n for target, n in k.items()},
            "alpha_pattern": {target: lora_alpha * n for target, n in k.items()},  # alpha * k even with rsLoRA
        }

    message = str(failure("check_lora_config", lora_config))
    assert "use_rslora=True" in message, message
    assert "h.0.attn.c_attn reads as rank 4, scale 4, expected rank 4, scale 2.828" in message, message


def test_embedding_forward_accepts_a_lookup_that_skips_the_padding_row():
    # Column padding_idx of lora_A never trains, so it is zero: leaving the padding row out changes nothing.
    def embedding_forward(ids, layer):
        keep = (ids != layer.padding_idx).unsqueeze(-1)  # (..., 1)
        return layer.weight[ids] + layer.scaling * (layer.lora_A.T[ids] * keep) @ layer.lora_B.T

    checkers.check_embedding_forward(embedding_forward)


def test_a_wrong_value_is_shown_where_it_is_wrong():
    def embedding_forward(ids, layer):
        out = layer.weight[ids] + layer.scaling * layer.lora_A.T[ids] @ layer.lora_B.T
        out[..., -1, -1] += 1  # one wrong entry, at the last position
        return out

    assert "at index (2, 3)" in str(failure("check_embedding_forward", embedding_forward))


def test_a_wrong_return_type_is_a_type_error_without_a_formula_hint():
    found = failure("check_lora_forward", lambda x, W, b, A, B, s: (x @ W.T + b).tolist())
    assert "wrong type: expected a torch.Tensor of shape (3, 5), got a list of 3 items" in str(found)
    assert "Hint" not in str(found)
    found = failure("check_param_counts", lambda d, k, r: f"{d * k}, {r * (d + k)}")
    assert "wrong type: expected a pair (full, lora) of ints, got a str" in str(found)


@pytest.mark.parametrize("checker", CHECKERS)
def test_checker_says_not_implemented_for_a_stub(checker, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError("exercise 0.0: stub")

    found = failure(checker, stub)
    assert found.status == "not attempted"
    assert "not implemented yet" in str(found)
    assert isinstance(found, AssertionError)


def test_checker_reports_a_crash_with_the_failing_line():
    def lora_forward(x, W, b, A, B, scaling):
        return x @ B.T  # wrong shapes

    found = failure("check_lora_forward", lora_forward)
    assert found.status == "error"
    assert "RuntimeError" in str(found) and "`return x @ B.T  # wrong shapes`" in str(found)


def test_a_check_leaves_the_learners_random_stream_alone(solved):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    checkers.check_lora_linear_class(solved["lora_linear_class"])
    assert torch.equal(torch.rand(3), expected)


# -- the probe records, the judge compares ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_a_probe_records_plain_data_that_the_judge_passes(name, solved):
    exercise = EXERCISES[name]
    buffer = io.BytesIO()
    torch.save(exercise.run_probe(solved[name], seed=7), buffer)
    record = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)  # no pickled objects
    assert isinstance(exercise.verdict(record, seed=7), str)


def test_results_recorded_for_one_seed_do_not_answer_another(solved):
    record = EXERCISES["lora_forward"].run_probe(solved["lora_forward"], seed=7)
    with pytest.raises(ExerciseFailed):
        EXERCISES["lora_forward"].verdict(record, seed=8)


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_judge_passes_nothing_but_a_probe_of_a_right_answer(name, solved):
    exercise = EXERCISES[name]
    record = exercise.run_probe(solved[name], seed=3)
    other = "scaling" if name == "param_counts" else "param_counts"  # another exercise's results
    tampered = [{}, {"cases": []}, {"value": None}, EXERCISES[other].run_probe(solved[other], 3)]
    if "cases" in record:
        tampered.append({**record, "cases": record["cases"][:-1]})
    for bad in tampered:
        with pytest.raises(Exception):  # noqa: B017 - any exception: the point is that it never passes
            exercise.verdict(bad, seed=3)


def test_a_probe_holds_no_right_answer_for_the_learners_code_to_find():
    seen = []

    def param_counts(d, k, r):
        import inspect

        frame = inspect.currentframe().f_back
        while frame is not None:
            seen.extend(frame.f_locals)
            frame = frame.f_back
        return d * k, r * (d + k)

    checkers.check_param_counts(param_counts)
    assert "expected" not in seen and seen


def test_plain_keeps_data_and_names_everything_else():
    value = plain({"t": nn.Parameter(torch.ones(2)), "n": torch.Size([2, 3]), "x": [1, 2.5, "s", None], "m": nn.ReLU()})
    assert type(value["t"]) is torch.Tensor and not value["t"].requires_grad
    assert value["n"] == (2, 3) and value["x"] == [1, 2.5, "s", None]
    assert value["m"] == {"__object__": "ReLU"}


def test_watch_sees_the_dense_update_however_it_is_written_and_restores_what_it_patched():
    A, B, x = torch.randn(2, 6), torch.randn(5, 2), torch.randn(3, 6)
    for dense in (
        lambda: B @ A,
        lambda: torch.mm(B, A),
        lambda: (A.T @ B.T).T,
        lambda: torch.einsum("or,ri->oi", B, A),
    ):
        with Watch(A=[A], B=[B], x=[x]) as watch:
            dense()
        assert watch.dense, dense
    with Watch(A=[A], B=[B], x=[x]) as watch:
        (x @ A.T) @ B.T
    assert watch.dense == []
    own, inherited = lora.Embedding.forward, lora.MergedLinear.forward
    with Watch(methods=[(lora.Embedding, "forward"), (lora.MergedLinear, "delta_weight")]) as watch:
        lora.Embedding(4, 2, r=1)(torch.tensor([1]))
        lora.MergedLinear(4, 6, r=1, enable_lora=[True, False]).delta_weight()
    assert watch.calls == ["forward", "delta_weight"]
    assert lora.Embedding.forward is own and lora.MergedLinear.forward is inherited
    assert "delta_weight" not in vars(lora.MergedLinear)


def test_forbidden_uses_reads_code_not_comments_or_strings():
    source = "# do not call add_lora\ns = 'merge_and_export'\nfrom lora_basics import add_lora as a\nlora.merge_and_export(m)"
    assert forbidden_uses(source, ("add_lora", "merge_and_export", "delta_weight")) == ["add_lora", "merge_and_export"]
    assert forbidden_uses("def f(:", ("add_lora",)) == []


def _nf4_codes_flipped_near_midpoints(within: float, flipped: list):
    """A blockwise NF4 quantizer that picks the OTHER of the two nearest levels for values within ``within`` of
    the midpoint between them (and counts them in ``flipped``)."""
    levels = lora.nf4.NF4_LEVELS
    midpoints = (levels[:-1] + levels[1:]) / 2

    def quantize_blockwise(weight, blocksize):
        blocks = weight.reshape(-1, blocksize)
        absmax = blocks.abs().amax(dim=1)
        scaled = (blocks / absmax.clamp(min=1e-38)[:, None]).reshape(-1)
        codes = (scaled[:, None] - levels).abs().argmin(dim=1)
        distance, nearest = (scaled[:, None] - midpoints).abs().min(dim=1)
        near = distance < within
        codes[near] = torch.where(codes[near] == nearest[near], nearest[near] + 1, nearest[near])
        flipped.append(int(near.sum()))
        return codes, absmax

    return quantize_blockwise


def test_quantize_blockwise_accepts_either_level_only_for_a_value_on_a_midpoint():
    # Dividing by the absmax or multiplying by its reciprocal can move a value a rounding error across the
    # midpoint between two levels. The inputs of seed 38 hold such a value (8.8e-7 from a midpoint).
    exercise, seed = EXERCISES["quantize_blockwise"], 38
    flipped = []
    record = exercise.run_probe(_nf4_codes_flipped_near_midpoints(1e-6, flipped), seed)
    assert sum(flipped) > 0
    assert exercise.verdict(record, seed).startswith("the codes")
    flipped = []
    record = exercise.run_probe(_nf4_codes_flipped_near_midpoints(1e-3, flipped), seed)
    with pytest.raises(ExerciseFailed, match="codes are wrong"):
        exercise.verdict(record, seed)
