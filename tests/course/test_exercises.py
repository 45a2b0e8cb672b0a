"""The classroom exercises: checkers, generated student copies, and the grader.

- every checker passes the reference solution (the code of the instructor notebooks, run here
  in-process) and fails at least one plausible wrong answer with a specific message;
- the committed student copies are exactly what ``python -m lora_course.exercises generate`` writes,
  and hold no line of solution code;
- the student copies run top to bottom, and the only failures are the stubs' (checked in a
  subprocess that executes every cell in a fresh namespace: fast, no kernel per notebook);
- ``grade`` on a folder with a correct, a wrong, an untouched, a hanging, a broken and a corrupt
  notebook gives the right table (real kernels, small synthetic notebook, short time limit).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lora_basics as lora
from lora_course import checkers, exercises, grader
from lora_course.checkers import ExerciseFailed

ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = sorted(exercises.SOLUTIONS_DIR.glob("[0-9]*.ipynb"))
STUDENTS = sorted(exercises.EXERCISES_DIR.glob("[0-9]*.ipynb"))
CHECKERS = sorted(name for name in dir(checkers) if name.startswith("check_"))


def ids(paths):
    return [p.name for p in paths]


LESSONS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


def test_every_exercise_notebook_belongs_to_a_lesson_that_links_it():
    with_exercises = [p for p in LESSONS if (exercises.SOLUTIONS_DIR / p.name).exists()]
    assert with_exercises, "no lesson has an instructor notebook"
    # Every instructor notebook is named after its lesson, and every student copy after an instructor notebook.
    assert [p.name for p in SOLUTIONS] == [p.name for p in with_exercises]
    assert [p.name for p in STUDENTS] == [p.name for p in SOLUTIONS]
    for lesson in with_exercises:
        markdown = "\n".join(c.source for c in nbformat.read(lesson, as_version=4).cells if c.cell_type == "markdown")
        assert f"(exercises/{lesson.name})" in markdown, f"{lesson.name} does not link its exercise notebook"
    for path in SOLUTIONS:
        count = len(exercises.find_exercises(nbformat.read(path, as_version=4)))
        assert 2 <= count <= 4, f"{path.name} has {count} exercises"


# -- reference solutions pass ----------------------------------------------------------------------


def run_cells(path: Path) -> dict:
    """Execute every code cell of ``path`` in one fresh namespace (in this process); return it."""
    namespace: dict = {"__name__": "__main__"}
    nb = nbformat.read(path, as_version=4)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        for cell in nb.cells:
            if cell.cell_type == "code":
                exec(compile(cell.source, f"{path.name}", "exec"), namespace)  # noqa: S102
    namespace["__stdout__"] = out.getvalue()
    return namespace


@pytest.mark.parametrize("path", SOLUTIONS, ids=ids(SOLUTIONS))
def test_reference_solutions_pass_their_checks(path):
    out = run_cells(path)["__stdout__"]
    nb = nbformat.read(path, as_version=4)
    assert out.count("✓") == len(exercises.find_exercises(nb))
    assert "✗" not in out


def test_every_checker_is_used_by_a_solution_notebook():
    code = "\n".join(
        cell.source for p in SOLUTIONS for cell in nbformat.read(p, as_version=4).cells if cell.cell_type == "code"
    )
    assert [name for name in CHECKERS if f"checkers.{name}(" not in code] == []


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
    return (layer(x) - F.linear(x, layer.weight, layer.bias)) / layer.scaling


def _embedding_merge_in_place(layer):
    with torch.no_grad():
        layer.weight += layer.delta_weight()
    return layer.weight


def _conv_forward_no_dilation(x, layer):
    kernel = layer.weight + layer.delta_weight()
    return F.conv2d(x, kernel, layer.bias, layer.stride, layer.padding, 1, layer.groups)


@torch.no_grad()
def _export_adds_twice(layer):
    weight = layer.weight.T if layer.fan_in_fan_out else layer.weight
    plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    plain.weight.copy_(weight + layer.scaling * layer.lora_B @ layer.lora_A)
    if layer.bias is not None:
        plain.bias.copy_(layer.bias)
    return plain


def _counts_c_proj_once(config, r, targets):
    from lora_course.gpt import GPT

    d, vocab = config.n_embd, config.vocab_size
    shapes = {"c_attn": (d, 3 * d), "c_fc": (d, 4 * d), "c_proj": (d, d), "wte": (vocab, d), "lm_head": (d, vocab)}
    layers = {"wte": 1, "lm_head": 1}
    trainable = sum(r * sum(shapes[t]) * layers.get(t, config.n_layer) for t in targets)
    return trainable, sum(p.numel() for p in GPT(config).parameters()) + trainable


def _inject_qv_not_frozen(model, r, alpha):
    for block in model.h:
        block.attn.c_attn = lora.MergedLinear.from_module(
            block.attn.c_attn, fan_in_fan_out=True, r=r, lora_alpha=alpha, enable_lora=[True, False, True]
        )
    return model


def _export_plain_adds_twice(model):
    from lora_course.gpt import Conv1D

    exported = copy.deepcopy(model)
    with torch.no_grad():
        for name, layer in list(exported.named_modules()):
            if isinstance(layer, lora.LoRALayer):
                if isinstance(layer, lora.Embedding):
                    plain = nn.Embedding(layer.num_embeddings, layer.embedding_dim)
                elif layer.fan_in_fan_out:
                    plain = Conv1D(layer.out_features, layer.in_features)
                else:
                    plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
                plain.weight.copy_(layer.weight + layer.delta_weight())
                if getattr(layer, "bias", None) is not None:
                    plain.bias.copy_(layer.bias)
                parent, _, child = name.rpartition(".")
                setattr(exported.get_submodule(parent), child, plain)
    return exported


def _stack_without_transposing_b(factors):
    rank = max(A.shape[0] for A, _, _ in factors)
    A_T = torch.stack([F.pad(A.T, (0, rank - A.shape[0])) for A, _, _ in factors])  # (n, in, R)
    B = torch.stack([F.pad(B, (0, rank - B.shape[1])) for _, B, _ in factors])  # (n, out, R): B, not B^T
    return A_T, B, torch.tensor([s for _, _, s in factors])


#: checker -> (wrong answer, expected status, a fragment the message must contain)
WRONG = {
    "check_param_counts": (lambda d, k, r: (d * k, r * d * k), "failed", "B is d x r"),
    "check_best_rank_r": (
        lambda M, r: (lambda U, S, Vh: U[:, :r] @ Vh[:r])(*torch.linalg.svd(M, full_matrices=False)),
        "failed",
        "diag(S[:r])",
    ),
    "check_rank_for_energy": (
        lambda S, e: int((torch.cumsum(S, 0) / S.sum() < e).sum()) + 1,
        "failed",
        "SQUARED",
    ),
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
    "check_conv_forward": (_conv_forward_no_dilation, "failed", "layer.dilation"),
    "check_no_double_merge": (checkers.NaiveMergeLinear, "failed", "self.merged"),
    "check_export_linear": (_export_adds_twice, "failed", "ALREADY merged"),
    "check_lora_counts": (_counts_c_proj_once, "failed", "AND mlp.c_proj"),
    "check_inject_qv": (_inject_qv_not_frozen, "failed", "mark_only_lora_as_trainable"),
    "check_export_plain": (_export_plain_adds_twice, "failed", "ALREADY merged"),
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
}


def test_every_checker_has_a_wrong_answer():
    assert sorted(WRONG) == CHECKERS


@pytest.mark.parametrize("checker", sorted(WRONG))
def test_checker_fails_a_plausible_wrong_answer(checker, capsys):
    wrong, status, fragment = WRONG[checker]
    with pytest.raises(ExerciseFailed) as info:
        getattr(checkers, checker)(wrong)
    message = str(info.value)
    assert info.value.status == status, message
    assert fragment in message, message
    assert message.startswith("✗ ") and "Hint: " in message, message
    assert message in capsys.readouterr().out  # printed as well as raised


@pytest.mark.parametrize("checker", CHECKERS)
def test_checker_says_not_implemented_for_a_stub(checker, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError("exercise 0.0: stub")

    with pytest.raises(ExerciseFailed) as info:
        getattr(checkers, checker)(stub)
    assert info.value.status == "not attempted"
    assert "not implemented yet" in str(info.value)
    assert isinstance(info.value, AssertionError)


def test_checker_reports_a_crash_with_the_failing_line(capsys):
    def lora_forward(x, W, b, A, B, scaling):
        return x @ B.T  # wrong shapes

    with pytest.raises(ExerciseFailed) as info:
        checkers.check_lora_forward(lora_forward)
    assert info.value.status == "error"
    assert "RuntimeError" in str(info.value) and "`return x @ B.T  # wrong shapes`" in str(info.value)


# -- generated student copies ----------------------------------------------------------------------


def test_committed_student_copies_are_the_generator_output(tmp_path):
    report = exercises.generate(out_dir=tmp_path)
    assert len(report) == len(SOLUTIONS)
    for path in SOLUTIONS:
        generated = (tmp_path / path.name).read_bytes()
        assert (exercises.EXERCISES_DIR / path.name).read_bytes() == generated, (
            f"{path.name}: run `make exercises` (python -m lora_course.exercises generate)"
        )
    assert exercises.generate(check=True) == []


def _solution_lines(source: str) -> set[str]:
    lines, inside = set(), False
    for line in source.split("\n"):
        if line.strip() == exercises.BEGIN:
            inside = True
        elif line.strip() == exercises.END:
            inside = False
        elif inside and line.strip():
            lines.add(line.strip())
    return lines


@pytest.mark.parametrize("path", SOLUTIONS, ids=ids(SOLUTIONS))
def test_no_solution_code_leaks_into_the_student_copy(path):
    solution = nbformat.read(path, as_version=4)
    student = nbformat.read(exercises.EXERCISES_DIR / path.name, as_version=4)
    code = [cell.source for cell in solution.cells if cell.cell_type == "code"]
    hidden = set().union(*(_solution_lines(source) for source in code))
    visible = {line.strip() for source in code for line in exercises.strip_solutions(source, "").split("\n")}
    student_lines = {line.strip() for cell in student.cells for line in cell.source.split("\n")}
    assert hidden, "no solution lines found"
    assert sorted((hidden - visible) & student_lines) == []
    assert exercises.BEGIN not in json.dumps(student.cells)
    stubbed = [
        i for i, cell in enumerate(student.cells) if cell.cell_type == "code" and "NotImplementedError(" in cell.source
    ]
    assert stubbed == [ex.cell for ex in exercises.find_exercises(solution)]
    assert all(cell.get("outputs", []) == [] for cell in student.cells)


def test_strip_solutions_keeps_indentation_and_refuses_bad_markers():
    source = "def f(x):\n    # BEGIN SOLUTION\n    return x + 1\n    # END SOLUTION\n\nprint(f)"
    assert exercises.strip_solutions(source, "raise NotImplementedError") == (
        "def f(x):\n    raise NotImplementedError\n\nprint(f)"
    )
    for bad in ("# BEGIN SOLUTION\nx = 1", "x = 1\n# END SOLUTION", "# BEGIN SOLUTION\n# BEGIN SOLUTION"):
        with pytest.raises(ValueError, match="SOLUTION"):
            exercises.strip_solutions(bad, "stub")


RUN_STUDENT_COPIES = textwrap.dedent(
    """
    import contextlib, io, json, sys
    import nbformat
    from lora_course.checkers import ExerciseFailed
    results = {}
    for path in sys.argv[1:]:
        nb = nbformat.read(path, as_version=4)
        namespace, errors = {"__name__": "__main__"}, []
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    exec(compile(cell.source, path, "exec"), namespace)
            except Exception as error:
                errors.append([index, type(error).__name__, getattr(error, "status", "")])
        results[path] = errors
    print(json.dumps(results))
    """
)


def test_student_copies_run_top_to_bottom_with_only_the_stubs_failing():
    # All student copies in one fresh subprocess (each in its own namespace): seconds, not a kernel each.
    # The grader's real-kernel path is tested below, on a small notebook.
    done = subprocess.run(
        [sys.executable, "-c", RUN_STUDENT_COPIES, *map(str, STUDENTS)],
        capture_output=True,
        text=True,
        cwd=ROOT / "notebooks" / "exercises",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for path in STUDENTS:
        nb = nbformat.read(path, as_version=4)
        errors = {index: (name, status) for index, name, status in results[str(path)]}
        for ex in exercises.find_exercises(nb):
            assert errors.pop(ex.check_cell, None) == ("ExerciseFailed", "not attempted"), f"{path.name} {ex.label}"
            if ex.cell in errors:  # a demo line in the exercise cell may call the stub
                assert errors.pop(ex.cell)[0] == "NotImplementedError", f"{path.name} {ex.label}"
        assert errors == {}, f"{path.name}: unexpected failures (cell index -> error): {errors}"


# -- the grader ------------------------------------------------------------------------------------

SETUP = "from lora_course import checkers"
EXERCISE_1 = """# Exercise 1.1: param_counts
def param_counts(d, k, r):
    # BEGIN SOLUTION
    return d * k, r * (d + k)
    # END SOLUTION"""
EXERCISE_2 = """# Exercise 1.2: scaling
def scaling(alpha, r, rslora=False):
    # BEGIN SOLUTION
    return alpha / r**0.5 if rslora else alpha / r
    # END SOLUTION"""


def synthetic_notebook(exercise_1=EXERCISE_1, exercise_2=EXERCISE_2, extra=None):
    cells = [
        nbformat.v4.new_markdown_cell("# Exercises 01 (synthetic)"),
        nbformat.v4.new_code_cell(SETUP),
        nbformat.v4.new_code_cell(exercise_1),
        nbformat.v4.new_code_cell("checkers.check_param_counts(param_counts)"),
    ]
    if extra:
        cells.append(nbformat.v4.new_code_cell(extra))
    cells += [nbformat.v4.new_code_cell(exercise_2), nbformat.v4.new_code_cell("checkers.check_scaling(scaling)")]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


EXPECTED_GRADES = [
    ("correct.ipynb", "1.1 param_counts", "passed"),
    ("correct.ipynb", "1.2 scaling", "passed"),
    ("corrupt.ipynb", "(notebook)", "invalid"),
    ("empty.ipynb", "1.1 param_counts", "not attempted"),
    ("empty.ipynb", "1.2 scaling", "not attempted"),
    ("hanging.ipynb", "(notebook)", "timeout"),
    ("hanging.ipynb", "1.1 param_counts", "passed"),
    ("hanging.ipynb", "1.2 scaling", "error"),
    ("outside.ipynb", "(notebook)", "error outside exercises"),
    ("outside.ipynb", "1.1 param_counts", "passed"),
    ("outside.ipynb", "1.2 scaling", "passed"),
    ("wrong.ipynb", "1.1 param_counts", "failed"),
    ("wrong.ipynb", "1.2 scaling", "error"),
]


def test_grade_a_folder_of_correct_wrong_empty_hanging_broken_and_corrupt_notebooks(tmp_path, capsys, monkeypatch):
    solution = synthetic_notebook()
    nbformat.write(solution, tmp_path / "correct.ipynb")
    nbformat.write(exercises.student_copy(solution), tmp_path / "empty.ipynb")
    wrong = synthetic_notebook(
        EXERCISE_1.replace("r * (d + k)", "r * d * k"), EXERCISE_2.replace("alpha / r\n", "alpha / (r - r)\n")
    )
    nbformat.write(wrong, tmp_path / "wrong.ipynb")
    hanging = EXERCISE_2.replace("return alpha", "import time\n\n    time.sleep(600)\n    return alpha")
    nbformat.write(synthetic_notebook(exercise_2=hanging), tmp_path / "hanging.ipynb")
    nbformat.write(synthetic_notebook(extra="print(undefined_name)"), tmp_path / "outside.ipynb")
    (tmp_path / "corrupt.ipynb").write_text('{"cells": [ this is not json')

    csv_path = tmp_path / "grades.csv"
    monkeypatch.chdir(tmp_path)
    # 15 s for a whole notebook: plenty for these (a kernel start and a few ms of work), short for the test.
    assert grader.main([".", "--csv", "grades.csv", "--timeout", "15", "--jobs", "3"]) == 0
    out = capsys.readouterr().out
    print(out)  # shown with pytest -s: the table of the closing note
    rows = [line.split(",", 3) for line in csv_path.read_text().splitlines()[1:]]
    got = [(Path(nb).name, ex, result) for nb, ex, result, _ in rows]
    assert sorted(got) == sorted(EXPECTED_GRADES)
    details = {(Path(nb).name, ex): detail for nb, ex, _, detail in rows}
    assert "expected (589824, 12288)" in details["wrong.ipynb", "1.1 param_counts"]
    assert "ZeroDivisionError" in details["wrong.ipynb", "1.2 scaling"]
    assert "NameError" in details["outside.ipynb", "(notebook)"]
    assert "not a notebook" in details["corrupt.ipynb", "(notebook)"]
    assert "correct.ipynb: 2/2 passed" in out and "empty.ipynb: 0/2 passed" in out
    assert "hanging.ipynb: 1/2 passed (timeout)" in out
