"""The grader: honest rows for every exercise, verdicts that a learner's code cannot fake, no cross-talk.

- matching a submission against the hand-out (no kernel): missing, duplicated and renamed exercises, changed
  and added cells, the lesson, files that are not gradable;
- the report: spreadsheet-safe CSV cells, written notebook by notebook;
- the sandbox (real processes, tiny jobs): one time limit for all the cells, output kept up to a cap, the
  course imported from the run's own copy, nothing written by one run seen by the next;
- a class of lesson-01 submissions graded at once (real processes, the real hand-out and checkers): correct,
  untouched, wrong, hanging and corrupt notebooks, and every trick that made a wrong answer pass before the
  verdict moved out of the notebook (each a notebook whose tricked exercises must not be graded "passed").
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import textwrap
from pathlib import Path

import nbformat
import pytest

from lora_course import exercises, grader, sandbox, submission
from lora_course.grader import Row
from tests.helpers import solved_copy

ROOT = exercises.ROOT
LESSON = "01_why_low_rank.ipynb"


def student() -> nbformat.NotebookNode:
    return nbformat.read(exercises.EXERCISES_DIR / LESSON, as_version=4)


def solved() -> nbformat.NotebookNode:
    return solved_copy(nbformat.read(exercises.SOLUTIONS_DIR / LESSON, as_version=4))


def cell_of(nb, label: str) -> int:
    return next(ex for ex in exercises.find_exercises(nb) if ex.label == label).cell


def check_of(nb, label: str) -> int:
    return next(ex for ex in exercises.find_exercises(nb) if ex.label == label).check_cell


def with_cell(nb, label: str, source: str, check: str | None = None) -> nbformat.NotebookNode:
    """``nb`` with the exercise cell of ``label`` (and its check cell, if ``check`` is given) replaced."""
    if check is not None:
        nb.cells[check_of(nb, label)].source = check
    nb.cells[cell_of(nb, label)].source = source
    return nb


@pytest.fixture(scope="module")
def handout() -> dict:
    return submission.load_handout(exercises.EXERCISES_DIR)


def planned(nb, handout):
    return submission.plan(nb, submission.find_lesson(nb, Path("x.ipynb"), handout))


# -- matching against the hand-out (no kernel) -----------------------------------------------------


def test_every_exercise_of_the_lesson_is_matched_and_run_in_order(handout):
    laid_out = planned(solved(), handout)
    assert [(m.exercise.label, m.status) for m in laid_out.matches] == [
        ("1.1 param_counts", "ok"),
        ("1.2 best_rank_r", "ok"),
        ("1.3 rank_for_energy", "ok"),
    ]
    kinds = [(s["kind"], s["exercise"]) for s in laid_out.steps]
    assert kinds == [
        ("cell", None),  # the install cell (does nothing in a checkout)
        ("cell", None),  # the imports and setup()
        ("cell", "1.1 param_counts"),
        ("probe", "param_counts"),
        ("cell", "1.2 best_rank_r"),
        ("probe", "best_rank_r"),
        ("cell", "1.3 rank_for_energy"),
        ("probe", "rank_for_energy"),
    ]
    assert laid_out.changes == []


def test_missing_duplicated_and_renamed_exercises_are_reported_as_such(handout):
    nb = solved()
    first = nb.cells[cell_of(nb, "1.1 param_counts")]
    nb.cells.insert(cell_of(nb, "1.1 param_counts") + 2, nbformat.v4.new_code_cell(first.source))
    nb.cells[cell_of(nb, "1.3 rank_for_energy")].source = nb.cells[cell_of(nb, "1.3 rank_for_energy")].source.replace(
        "# Exercise 1.3: rank_for_energy", "# exercise 1.3: energy_rank"
    )
    del nb.cells[cell_of(nb, "1.2 best_rank_r")]
    found = {m.exercise.label: (m.status, m.detail) for m in planned(nb, handout).matches}
    assert found["1.1 param_counts"][0] == "duplicated" and "2 cells (5, 7)" in found["1.1 param_counts"][1]
    assert found["1.2 best_rank_r"] == ("missing", "no cell starts with '# Exercise 1.2: best_rank_r'")
    assert (
        found["1.3 rank_for_energy"][0] == "renamed"
        and "'# exercise 1.3: energy_rank'" in found["1.3 rank_for_energy"][1]
    )


def test_changed_and_added_cells_are_reported_and_replaced_by_the_handouts(handout):
    exercise_source = solved().cells[cell_of(solved(), "1.1 param_counts")].source
    nb = with_cell(solved(), "1.1 param_counts", exercise_source, check='print("✓ param_counts: ok")')
    nb.cells[1].source += "\nprint('my setup')"
    nb.cells.append(nbformat.v4.new_code_cell("print('✓ all done')"))
    nb.cells.append(nbformat.v4.new_code_cell("# Exercise 1.4: bonus\ndef bonus(): pass"))
    laid_out = planned(nb, handout)
    assert laid_out.changes == [
        "cell 15 ('# Exercise 1.4: bonus') is not an exercise of this lesson: not run",
        "setup cell 2 changed or removed",
        "check cell of 1.1 changed or removed",
        "1 added cell not run",
    ]
    lesson = handout["01"]
    run_sources = [s["source"] for s in laid_out.steps if s["kind"] == "cell" and s["exercise"] is None]
    # The hand-out's setup cells (the install cell, then the imports), not the learner's changed one.
    assert run_sources == [lesson.cells[1].source, lesson.cells[2].source]


def test_the_lesson_comes_from_the_exercise_lines_or_else_the_file_name(handout):
    nb = student()
    assert submission.find_lesson(nb, Path("anything.ipynb"), handout).number == "01"
    blank = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    assert submission.find_lesson(blank, Path("alice_07_conv.ipynb"), handout).number == "07"
    with pytest.raises(submission.Invalid, match="no lesson"):
        submission.find_lesson(blank, Path("alice.ipynb"), handout)


def test_links_instructor_notebooks_huge_and_broken_files_are_invalid(tmp_path, monkeypatch):
    link = tmp_path / "link.ipynb"
    link.symlink_to(exercises.SOLUTIONS_DIR / LESSON)
    with pytest.raises(submission.Invalid, match="symbolic link"):
        submission.read_notebook(link)
    copy = tmp_path / "copy.ipynb"
    copy.write_bytes((exercises.SOLUTIONS_DIR / LESSON).read_bytes())
    with pytest.raises(submission.Invalid, match="instructor notebook"):
        submission.read_notebook(copy)
    broken = tmp_path / "broken.ipynb"
    broken.write_text('{"cells": [ this is not json')
    with pytest.raises(submission.Invalid, match="not a notebook"):
        submission.read_notebook(broken)
    monkeypatch.setattr(submission, "MAX_NOTEBOOK_BYTES", 100)
    with pytest.raises(submission.Invalid, match="outputs cleared"):
        submission.read_notebook(exercises.EXERCISES_DIR / LESSON)


# -- the report ------------------------------------------------------------------------------------


def test_csv_cells_never_start_a_spreadsheet_formula(tmp_path):
    report = grader.CsvReport(tmp_path / "g.csv")
    report.write([Row("=SUM(1+2).ipynb", "(notebook)", "invalid", "-1 is @odd"), Row("a.ipynb", "1.1 x", "passed", "")])
    report.close()
    lines = (tmp_path / "g.csv").read_text().splitlines()
    assert lines[1] == "'=SUM(1+2).ipynb,(notebook),invalid,'-1 is @odd"
    assert lines[2] == "a.ipynb,1.1 x,passed,"


class _CrashesOnSecond:
    def grade_file(self, path, name=None):
        if path.name == "second.ipynb":
            raise KeyboardInterrupt  # the instructor pressed Ctrl-C
        return [Row(name, "1.1 param_counts", "passed")]


def test_the_csv_keeps_every_notebook_graded_before_an_interruption(tmp_path):
    report = grader.CsvReport(tmp_path / "g.csv")
    with pytest.raises(KeyboardInterrupt):
        grader.grade(
            [Path("first.ipynb"), Path("second.ipynb")], _CrashesOnSecond(), progress=False, on_rows=report.write
        )
    assert (tmp_path / "g.csv").read_text().splitlines()[1] == "first.ipynb,1.1 param_counts,passed,"


# -- the sandbox -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snapshot() -> sandbox.Snapshot:
    return sandbox.Snapshot.take()


def cells(*sources: str) -> list[dict]:
    return [{"kind": "cell", "exercise": None, "source": s, "setup": i + 1} for i, s in enumerate(sources)]


def test_one_time_limit_holds_for_many_short_cells(snapshot):
    # 60 cells of 0.5 s under a 12 s limit: stopped part-way, although no cell comes near the limit.
    run = sandbox.run(snapshot, "n.ipynb", b"{}", cells(*["import time; time.sleep(0.5)"] * 60), 0, timeout=12)
    assert run.timed_out
    assert 0 < sum(e["event"] == "done" for e in run.events) < 60


def test_output_is_kept_up_to_a_cap_and_counted_beyond(snapshot):
    run = sandbox.run(snapshot, "n.ipynb", b"{}", cells("print('x' * 5_000_000)"), 0, 60, output_cap=65536)
    assert len(run.output) == 65536 and run.output_bytes > 5_000_000
    assert not run.timed_out and run.events[-1]["event"] == "finished"


def test_a_run_uses_its_own_copy_of_the_course_and_nothing_of_the_instructors(snapshot):
    show = "import json, os, sys, lora_course; print(json.dumps([lora_course.__file__, sys.path, sorted(os.environ)]))"
    run = sandbox.run(snapshot, "n.ipynb", b"{}", cells(show), 0, 60)
    package, path, environment = json.loads(run.output.decode().strip().splitlines()[-1])
    assert not Path(package).is_relative_to(ROOT) and not Path(package).exists()  # a copy, removed afterwards
    assert [p for p in path if Path(p).is_relative_to(ROOT) and "site-packages" not in p] == []
    assert "VIRTUAL_ENV" not in environment and "PWD" not in environment


def test_what_one_run_writes_into_the_course_does_not_reach_the_next(snapshot):
    common = ROOT / "lora_course" / "checkers" / "common.py"
    before = hashlib.sha256(common.read_bytes()).hexdigest()
    rewrite = textwrap.dedent(
        """
        import os, pathlib, lora_course.checkers.common as common
        path = pathlib.Path(common.__file__)
        os.chmod(path.parent, 0o755); os.chmod(path, 0o644)
        path.write_text(path.read_text() + "\\nREWRITTEN = True\\n")
        """
    )
    sandbox.run(snapshot, "n.ipynb", b"{}", cells(rewrite), 0, 60)
    run = sandbox.run(
        snapshot,
        "n.ipynb",
        b"{}",
        cells("import lora_course.checkers.common as c; print(hasattr(c, 'REWRITTEN'))"),
        0,
        60,
    )
    assert run.output.decode().strip().splitlines()[-1] == "False"
    assert hashlib.sha256(common.read_bytes()).hexdigest() == before


def _runs_as(user: str) -> bool:
    try:
        sandbox.check_user(user)
    except (KeyError, OSError, ValueError):
        return False
    return True


#: Root ignores file modes: as root, the learner's code runs as this user, or the test cannot be made.
AS_USER = None if os.geteuid() != 0 else "nobody" if _runs_as("nobody") else False


@pytest.mark.skipif(AS_USER is False, reason="root, and this interpreter cannot be run as nobody")
def test_the_learners_code_can_write_neither_its_copy_of_the_course_nor_the_checkout(snapshot):
    write = textwrap.dedent(
        f"""
        import lora_course.checkers.common as common
        for path in (common.__file__, {str(ROOT / "lora_course" / "checkers" / "common.py")!r}):
            try:
                open(path, "a").close()
                print("wrote", path)
            except PermissionError:
                print("refused")
        """
    )
    run = sandbox.run(snapshot, "n.ipynb", b"{}", cells(write), 0, 60, user=AS_USER)
    copy, checkout = run.output.decode().strip().splitlines()[-2:]
    assert copy == "refused"
    if AS_USER:  # as the grader's own user, the learner's code could write the checkout: the guide says so
        assert checkout == "refused"


# -- a class ---------------------------------------------------------------------------------------


def test_a_correct_submission_of_every_lesson_is_graded_all_passed(tmp_path):
    paths = []
    for path in sorted(exercises.SOLUTIONS_DIR.glob("[0-9]*.ipynb")):
        paths.append(tmp_path / f"learner_{path.name}")
        nbformat.write(solved_copy(nbformat.read(path, as_version=4)), paths[-1])
    rows = grader.grade(paths, grader.Grader(timeout=120, seed=11), jobs=2, progress=False)
    assert [row for row in rows if row.result != "passed"] == []
    handout = submission.load_handout(exercises.EXERCISES_DIR)
    assert len(rows) == sum(len(lesson.exercises) for lesson in handout.values()) == 41


WRONG_1_1 = "# Exercise 1.1: param_counts\ndef param_counts(d, k, r):\n    return d * k, r * d * k\n"
WRONG_1_2 = "# Exercise 1.2: best_rank_r\ndef best_rank_r(M, r):\n    return M / 0 if r < 0 else 1 / (r - r)\n"
WRONG_1_3 = textwrap.dedent(
    """\
    # Exercise 1.3: rank_for_energy
    def rank_for_energy(S, energy):
        return int((torch.cumsum(S, 0) / S.sum() < energy).sum()) + 1
    """
)
FRAME_1_2 = textwrap.dedent(
    """\
    # Exercise 1.2: best_rank_r
    def best_rank_r(M, r):
        import inspect

        frame = inspect.currentframe()
        while frame is not None:  # the checker's frame holds the answer, if it computed it first
            if "expected" in frame.f_locals:
                return frame.f_locals["expected"]
            frame = frame.f_back
    """
)
CUSTOM_EXC_1_1 = textwrap.dedent(
    """\
    # Exercise 1.1: param_counts
    get_ipython().set_custom_exc((Exception,), lambda shell, etype, value, tb, tb_offset=None: print("✓ param_counts"))


    def param_counts(d, k, r):
        return d * k, r * d * k
    """
)
SOLUTION_FROM_DISK = textwrap.dedent(
    """\
    # Exercise 1.1: param_counts
    import json
    from lora_course import exercises as _exercises

    _cells = json.loads((_exercises.SOLUTIONS_DIR / "01_why_low_rank.ipynb").read_text())["cells"]
    exec("".join(_cells[3]["source"]))  # defines param_counts: the instructor's solution
    """
)
REWRITE_CHECKERS = textwrap.dedent(
    """\
    # Exercise 1.1: param_counts
    import os, pathlib
    import lora_course.checkers.common as _common

    _path = pathlib.Path(_common.__file__)  # make the checkers' failure helper do nothing, on disk
    os.chmod(_path.parent, 0o755)
    os.chmod(_path, 0o644)
    _path.write_text(_path.read_text().replace("    __tracebackhide__ = True  # IPython: show the check cell, not these helpers\\n    if status", "    return\\n    if status", 1))


    def param_counts(d, k, r):
        raise NotImplementedError("exercise 1.1: param_counts")
    """
)
PRINTED_CHECK = (
    'print("✓ param_counts: a rank-8 update of a 4096 x 4096 matrix ...")  # checkers.check_param_counts(param_counts)'
)
COMMENTED_CHECK = "# checkers.check_best_rank_r(best_rank_r)"
TRY_CHECK = (
    "try:\n    checkers.check_rank_for_energy(rank_for_energy)\nexcept Exception:\n    print('✓ rank_for_energy: ok')"
)
FAKE_CHECK = 'print("✓ rank_for_energy: you can read off ...")  # checkers.check_rank_for_energy('

#: (notebook, exercise, the trick played on it): each exercise holds a wrong answer or a stub.
TRICKS = [
    ("trick_patches.ipynb", "1.1 param_counts", "the checker monkeypatched in the exercise cell"),
    ("trick_patches.ipynb", "1.2 best_rank_r", "torch.allclose replaced"),
    ("trick_patches.ipynb", "1.3 rank_for_energy", "the checkers' failure helper replaced"),
    ("trick_check_cells.ipynb", "1.1 param_counts", 'the check cell replaced by print("✓ ...")'),
    ("trick_check_cells.ipynb", "1.2 best_rank_r", "the check call commented out"),
    ("trick_check_cells.ipynb", "1.3 rank_for_energy", "the check wrapped in try/except"),
    ("trick_kernel.ipynb", "1.1 param_counts", "IPython's set_custom_exc swallowing the failure"),
    ("trick_kernel.ipynb", "1.2 best_rank_r", "the expected value read from the checker's frame"),
    ("trick_kernel.ipynb", "1.3 rank_for_energy", "a fake cell printing ✓ before the check cell"),
    ("trick_symlink.ipynb", "(notebook)", "a symbolic link to the instructor notebook"),
    ("trick_solution_from_disk.ipynb", "1.1 param_counts", "exec of the solution read from solutions/ at run time"),
    ("trick_rewrite_checkers.ipynb", "1.1 param_counts", "the checkers rewritten on disk"),
    ("trick_wrong_after_rewrite.ipynb", "1.1 param_counts", "a wrong answer graded with the rewritten checkers about"),
]


def _class(folder: Path) -> dict[str, dict[str, str]]:
    """Write a class of lesson-01 submissions into ``folder``; return the result expected for each exercise."""
    ok = {"1.1 param_counts": "passed", "1.2 best_rank_r": "passed", "1.3 rank_for_energy": "passed"}
    expected: dict[str, dict[str, str]] = {}

    def write(name: str, nb, results: dict[str, str]) -> None:
        nbformat.write(nb, folder / name)
        expected[name] = results

    write("correct.ipynb", solved(), ok)
    write("empty.ipynb", student(), dict.fromkeys(ok, "not attempted"))
    wrong = with_cell(with_cell(solved(), "1.1 param_counts", WRONG_1_1), "1.2 best_rank_r", WRONG_1_2)
    write("wrong.ipynb", wrong, {**ok, "1.1 param_counts": "failed", "1.2 best_rank_r": "error"})
    hanging = (
        solved()
        .cells[cell_of(solved(), "1.2 best_rank_r")]
        .source.replace("    U, S", "    while True:\n        pass\n    U, S")
    )
    hung = {**ok, "1.2 best_rank_r": "error", "1.3 rank_for_energy": "error", "(notebook)": "timeout"}
    write("hanging.ipynb", with_cell(solved(), "1.2 best_rank_r", hanging), hung)
    (folder / "corrupt.ipynb").write_text('{"cells": [ this is not json')
    expected["corrupt.ipynb"] = {"(notebook)": "invalid"}
    write("=SUM(1+2).ipynb", solved(), ok)
    # The tricks of TRICKS.
    failed = {"1.1 param_counts": "failed", "1.2 best_rank_r": "failed", "1.3 rank_for_energy": "failed"}
    patches = solved()
    with_cell(
        patches, "1.1 param_counts", WRONG_1_1 + "\n\ncheckers.check_param_counts = lambda f: print('✓ param_counts')\n"
    )
    with_cell(
        patches,
        "1.2 best_rank_r",
        WRONG_1_2.replace("M / 0 if r < 0 else 1 / (r - r)", "M") + "\n\ntorch.allclose = lambda *a, **k: True\n",
    )
    with_cell(patches, "1.3 rank_for_energy", WRONG_1_3 + "\n\ncheckers.common.fail = lambda *a, **k: None\n")
    write("trick_patches.ipynb", patches, failed)
    check_cells = solved()
    with_cell(check_cells, "1.1 param_counts", WRONG_1_1, check=PRINTED_CHECK)
    with_cell(
        check_cells, "1.2 best_rank_r", WRONG_1_2.replace("M / 0 if r < 0 else 1 / (r - r)", "M"), check=COMMENTED_CHECK
    )
    with_cell(check_cells, "1.3 rank_for_energy", WRONG_1_3, check=TRY_CHECK)
    write("trick_check_cells.ipynb", check_cells, {**failed, "(notebook)": "cells restored"})
    kernel = solved()
    with_cell(kernel, "1.1 param_counts", CUSTOM_EXC_1_1)
    with_cell(kernel, "1.2 best_rank_r", FRAME_1_2)
    with_cell(kernel, "1.3 rank_for_energy", WRONG_1_3)
    kernel.cells.insert(cell_of(kernel, "1.3 rank_for_energy") + 1, nbformat.v4.new_code_cell(FAKE_CHECK))
    write("trick_kernel.ipynb", kernel, {**failed, "(notebook)": "cells restored"})
    (folder / "trick_symlink.ipynb").symlink_to(exercises.SOLUTIONS_DIR / LESSON)
    expected["trick_symlink.ipynb"] = {"(notebook)": "invalid"}
    from_disk = with_cell(student(), "1.1 param_counts", SOLUTION_FROM_DISK)
    write(
        "trick_solution_from_disk.ipynb", from_disk, {**dict.fromkeys(ok, "not attempted"), "1.1 param_counts": "error"}
    )
    write(
        "trick_rewrite_checkers.ipynb",
        with_cell(student(), "1.1 param_counts", REWRITE_CHECKERS),
        dict.fromkeys(ok, "not attempted"),
    )
    write(
        "trick_wrong_after_rewrite.ipynb",
        with_cell(solved(), "1.1 param_counts", WRONG_1_1),
        {**ok, "1.1 param_counts": "failed"},
    )
    # An honest report: 1.1 twice (the second wrong), 1.2 deleted, 1.3 under another name; 12 extra cells of 0.8 s
    # and 20 MB printed.
    honest = solved()
    honest.cells.insert(cell_of(honest, "1.1 param_counts") + 2, nbformat.v4.new_code_cell(WRONG_1_1))
    del honest.cells[cell_of(honest, "1.2 best_rank_r")]
    energy = honest.cells[cell_of(honest, "1.3 rank_for_energy")]
    energy.source = energy.source.replace("1.3: rank_for_energy", "1.3: energy") + "\nprint('x' * 20_000_000)"
    honest.cells += [nbformat.v4.new_code_cell("import time\ntime.sleep(0.8)") for _ in range(12)]
    write(
        "honest.ipynb",
        honest,
        {"1.1 param_counts": "duplicated", "1.2 best_rank_r": "missing", "1.3 rank_for_energy": "renamed"}
        | {"(notebook)": "output truncated"},
    )
    return expected


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class")
    expected = _class(folder)
    common = ROOT / "lora_course" / "checkers" / "common.py"
    before = hashlib.sha256(common.read_bytes()).hexdigest()
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        # 20 s for a whole notebook: plenty for these (a process start and a few ms of work each).
        assert grader.main([".", "--csv", "grades.csv", "--timeout", "20", "--jobs", "2", "--seed", "5"]) == 0
    finally:
        os.chdir(cwd)
    assert hashlib.sha256(common.read_bytes()).hexdigest() == before, "a submission changed the instructor's checkers"
    got: dict[str, dict[str, list[str]]] = {}
    with open(folder / "grades.csv", newline="") as handle:
        for notebook, exercise, result, detail in list(csv.reader(handle))[1:]:
            got.setdefault(notebook, {}).setdefault(exercise, []).append((result, detail))
    return expected, got, (folder / "grades.csv").read_text()


def results(got: dict, name: str) -> dict[str, str]:
    """The result of each exercise of ``name`` (for ``(notebook)``: the last such row)."""
    return {exercise: rows[-1][0] for exercise, rows in got[name].items()}


def detail(got: dict, name: str, exercise: str) -> str:
    return " | ".join(d for _, d in got[name][exercise])


@pytest.mark.parametrize(
    "name", ["correct.ipynb", "empty.ipynb", "wrong.ipynb", "hanging.ipynb", "corrupt.ipynb", "honest.ipynb"]
)
def test_each_notebook_of_the_class_gets_the_rows_it_deserves(name, graded):
    expected, got, _ = graded
    assert results(got, name) == expected[name]


@pytest.mark.parametrize(("name", "exercise", "trick"), TRICKS, ids=[t for _, _, t in TRICKS])
def test_no_trick_turns_a_wrong_answer_into_a_pass(name, exercise, trick, graded):
    expected, got, _ = graded
    assert results(got, name) == expected[name]
    assert expected[name][exercise] != "passed" and results(got, name)[exercise] != "passed"


def test_the_details_say_what_happened(graded):
    _, got, text = graded
    assert "expected (589824, 12288)" in detail(got, "wrong.ipynb", "1.1 param_counts")
    assert "ZeroDivisionError" in detail(got, "wrong.ipynb", "1.2 best_rank_r")
    assert detail(got, "hanging.ipynb", "(notebook)") == "the cell of exercise 1.2 best_rank_r still running after 20 s"
    assert detail(got, "hanging.ipynb", "1.3 rank_for_energy").startswith("not run")
    assert "symbolic link" in detail(got, "trick_symlink.ipynb", "(notebook)")
    assert "wrong type: expected a torch.Tensor" in detail(got, "trick_kernel.ipynb", "1.2 best_rank_r")
    assert "FileNotFoundError" in detail(got, "trick_solution_from_disk.ipynb", "1.1 param_counts")
    assert "check cell of 1.1 changed or removed; check cell of 1.2 changed or removed; check cell of 1.3 changed" in (
        detail(got, "trick_check_cells.ipynb", "(notebook)")
    )
    honest = "honest.ipynb"
    assert "graded anyway: failed" in detail(got, honest, "1.1 param_counts")
    assert detail(got, honest, "1.2 best_rank_r") == "no cell starts with '# Exercise 1.2: best_rank_r'"
    assert "graded anyway: passed" in detail(got, honest, "1.3 rank_for_energy")
    assert "12 added cells not run" in detail(got, honest, "(notebook)")
    assert "printed 19.1 MB; the first 1.0 MB kept" in detail(got, honest, "(notebook)")
    assert "\n'=SUM(1+2).ipynb," in text and "'=SUM(1+2).ipynb" in got
