"""What learners get: the generated student copies and the hand-out zip.

- the committed student copies are exactly what ``python -m lora_course.exercises generate`` writes, and hold
  no line of solution code;
- the hand-out (``make handout``) holds the lessons, the student copies and what they need to run, and no
  solution in any form: no ``solutions/`` folder, no solution markers, no solution block anywhere;
- the student copies, run from the unpacked hand-out, go top to bottom and fail only where the stubs are
  (every cell executed in a fresh namespace, in a subprocess that sees only the hand-out's packages).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import nbformat
import pytest

from lora_course import exercises, handout
from lora_course.sandbox import site_packages

SOLUTIONS = sorted(exercises.SOLUTIONS_DIR.glob("[0-9]*.ipynb"))
STUDENTS = sorted(exercises.EXERCISES_DIR.glob("[0-9]*.ipynb"))


def test_every_lesson_has_an_exercise_notebook():
    # Every lesson notebook has an instructor notebook of the same name, and the lesson links its student copy.
    lessons = sorted(exercises.SOLUTIONS_DIR.parent.parent.glob("[0-9]*.ipynb"))
    assert [p.name for p in SOLUTIONS] == [p.name for p in lessons]
    for lesson in lessons:
        assert f"exercises/{lesson.name}" in lesson.read_text(), f"{lesson.name} does not link its exercises"
    assert [p.name for p in STUDENTS] == [p.name for p in SOLUTIONS]
    for path in SOLUTIONS:
        count = len(exercises.find_exercises(nbformat.read(path, as_version=4)))
        assert 2 <= count <= 4, f"{path.name} has {count} exercises"


def test_committed_student_copies_are_the_generator_output(tmp_path):
    report = exercises.generate(out_dir=tmp_path)
    assert len(report) == len(SOLUTIONS)
    for path in SOLUTIONS:
        generated = (tmp_path / path.name).read_bytes()
        assert (exercises.EXERCISES_DIR / path.name).read_bytes() == generated, (
            f"{path.name}: run `make exercises` (python -m lora_course.exercises generate)"
        )
    assert exercises.generate(check=True) == []


def _solution_blocks(source: str) -> list[list[str]]:
    """The stripped lines of each BEGIN/END SOLUTION block of ``source``."""
    blocks, inside = [], None
    for line in source.split("\n"):
        if line.strip() == exercises.BEGIN:
            inside = []
        elif line.strip() == exercises.END:
            blocks.append(inside)
            inside = None
        elif inside is not None and line.strip():
            inside.append(line.strip())
    return blocks


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_no_solution_code_leaks_into_the_student_copy(path):
    solution = nbformat.read(path, as_version=4)
    student = nbformat.read(exercises.EXERCISES_DIR / path.name, as_version=4)
    code = [cell.source for cell in solution.cells if cell.cell_type == "code"]
    hidden = {line for source in code for block in _solution_blocks(source) for line in block}
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


# -- the hand-out zip ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("handout")
    target = folder / "handout.zip"
    assert handout.main([str(target)]) == 0
    with zipfile.ZipFile(target) as archive:
        archive.extractall(folder)
    return folder / handout.FOLDER


def test_the_handout_holds_lessons_exercises_and_what_they_need(unpacked):
    names = {str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file()}
    for path in STUDENTS:
        assert (unpacked / "notebooks" / "exercises" / path.name).read_bytes() == path.read_bytes()
    root = exercises.ROOT
    assert {f"notebooks/{p.name}" for p in root.glob("notebooks/[0-9]*.ipynb")} <= names
    assert {"lora_course/checkers/common.py", "lora_basics/__init__.py", "data/tiny_gpt.pt", "pyproject.toml"} <= names
    assert "make lab" in (unpacked / "README.md").read_text()
    assert not [n for n in names if n.startswith(("tests/", "tools/", ".git")) or "solutions" in n]
    assert "notebooks/exercises/README.md" not in names  # the instructor guide


def test_the_handout_gives_no_solution_away_in_any_file(unpacked):
    blocks = [
        "\n".join(block)
        for path in SOLUTIONS
        for cell in nbformat.read(path, as_version=4).cells
        if cell.cell_type == "code"
        for block in _solution_blocks(cell.source)
        if len(block) >= 2
    ]
    assert blocks
    for path in unpacked.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".ipynb", ".md", ".txt", ".toml", ".yml", ""):
            text = path.read_text(encoding="utf-8", errors="replace")
            if path.suffix == ".ipynb":
                text = "\n".join(c.source for c in nbformat.reads(text, as_version=4).cells)
                assert exercises.BEGIN not in text, path  # (the generator's docstring names the marker)
            stripped = "\n".join(line.strip() for line in text.split("\n") if line.strip())
            assert [b for b in blocks if b in stripped] == [], path


def test_a_stale_student_copy_stops_the_handout(tmp_path, monkeypatch):
    monkeypatch.setattr(handout, "generate", lambda check: ["stale: 02_lora_linear_from_scratch.ipynb"])
    with pytest.raises(ValueError, match="make exercises"):
        handout.build(tmp_path / "h.zip")


RUN_STUDENT_COPIES = textwrap.dedent(
    """
    import contextlib, io, json, sys
    sys.path[:0] = json.loads(sys.argv[1])
    import nbformat
    import lora_course
    from lora_course.checkers import ExerciseFailed
    results = {"package": lora_course.__file__}
    for path in sys.argv[2:]:
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


def test_student_copies_run_from_the_handout_with_only_the_stubs_failing(unpacked):
    # All student copies in one fresh interpreter that sees the hand-out's packages and site-packages only
    # (-I -S: no editable install of this checkout), each in its own namespace: seconds, not a kernel each.
    students = sorted((unpacked / "notebooks" / "exercises").glob("[0-9]*.ipynb"))
    sys_path = json.dumps([str(unpacked), *site_packages()])
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", RUN_STUDENT_COPIES, sys_path, *map(str, students)],
        capture_output=True,
        text=True,
        cwd=unpacked / "notebooks" / "exercises",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(results["package"]).is_relative_to(unpacked)
    for path in students:
        nb = nbformat.read(path, as_version=4)
        errors = {index: (name, status) for index, name, status in results[str(path)]}
        for ex in exercises.find_exercises(nb):
            assert errors.pop(ex.check_cell, None) == ("ExerciseFailed", "not attempted"), f"{path.name} {ex.label}"
            if ex.cell in errors:  # a demo line in the exercise cell may call the stub
                assert errors.pop(ex.cell)[0] == "NotImplementedError", f"{path.name} {ex.label}"
        assert errors == {}, f"{path.name}: unexpected failures (cell index -> error): {errors}"
