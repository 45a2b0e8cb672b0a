"""The instructor notebooks work with nbgrader too: they carry its cell marks, and ``nbgrader generate_assignment``
and ``nbgrader autograde`` run on a lesson in a temporary course folder (skipped where nbgrader is not installed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from lora_course import exercises
from tests.helpers import solved_copy

SOLUTIONS = sorted(exercises.SOLUTIONS_DIR.glob("[0-9]*.ipynb"))
LESSON = "02_lora_linear_from_scratch.ipynb"


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_instructor_notebooks_carry_nbgrader_marks(path):
    nb = nbformat.read(path, as_version=4)
    marks = exercises.nbgrader_marks(nb)
    assert {i: nb.cells[i].metadata.get("nbgrader") for i in marks} == marks, "run `make exercises`"
    graded = [m["grade_id"] for m in marks.values() if m["grade"]]
    assert graded == [f"check_{ex.name}" for ex in exercises.find_exercises(nb)]
    assert exercises.mark_for_nbgrader(check=True) == []


def nbgrader(course: Path, *args: str) -> None:
    # nbgrader runs its database migrations with the `alembic` command: the interpreter's bin/ goes on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args, "--force"], cwd=course, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_nbgrader_generates_the_assignment_and_autogrades_a_lesson(tmp_path):
    pytest.importorskip("nbgrader")
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    (course / "source" / "lesson02").mkdir(parents=True)
    shutil.copy(exercises.SOLUTIONS_DIR / LESSON, course / "source" / "lesson02" / LESSON)
    (course / "nbgrader_config.py").write_text('c = get_config()\nc.CourseDirectory.course_id = "lora-basics"\n')
    nbgrader(course, "generate_assignment", "lesson02")
    released = nbformat.read(course / "release" / "lesson02" / LESSON, as_version=4)
    answers = [released.cells[ex.cell].source for ex in exercises.find_exercises(released)]
    assert len(answers) == 3 and all("raise NotImplementedError()" in a and "return" not in a for a in answers)

    solved = solved_copy(nbformat.read(exercises.SOLUTIONS_DIR / LESSON, as_version=4))
    for student, nb in (("alice", solved), ("bob", released)):
        (course / "submitted" / student / "lesson02").mkdir(parents=True)
        nbformat.write(nb, course / "submitted" / student / "lesson02" / LESSON)
    nbgrader(course, "autograde", "lesson02")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        scores = {s: gradebook.find_submission("lesson02", s).score for s in ("alice", "bob")}
        assert gradebook.find_submission("lesson02", "alice").max_score == 3
    assert scores == {"alice": 3, "bob": 0}
