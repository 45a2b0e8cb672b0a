"""Classroom exercises: the student copies, generated from the instructor notebooks.

    python -m lora_course.exercises generate            write notebooks/exercises/NN_*.ipynb   (make exercises)
    python -m lora_course.exercises generate --check    exit 1 if a student copy is stale or nbgrader marks are missing

Grading a class is :mod:`lora_course.grader`.

**One source of truth.** The instructor notebooks ``notebooks/exercises/solutions/NN_<name>.ipynb`` hold
the solutions. An *exercise cell* starts with the line ``# Exercise N.M: <name>`` and holds one or
more blocks between ``# BEGIN SOLUTION`` and ``# END SOLUTION``; the next code cell that calls a
``check_...`` function of :mod:`lora_course.checkers` is its *check cell*. ``generate`` copies each
instructor notebook to ``notebooks/exercises/NN_<name>.ipynb`` with every block replaced by
``raise NotImplementedError("exercise N.M: <name>")`` (same indentation) and all outputs cleared.

**nbgrader can use them too.** ``generate`` first marks the instructor notebooks' code cells the way nbgrader
reads them (:func:`nbgrader_marks`): exercise cells are autograded answers (nbgrader replaces the same
``BEGIN SOLUTION`` / ``END SOLUTION`` regions), check cells autograder tests worth one point, every other code
cell read-only. An instructor on JupyterHub can then run ``nbgrader generate_assignment`` and ``nbgrader
autograde`` on them. (nbgrader's autograde trusts the check cells' outcome in the learner's kernel, as the check
cells do; ``make grade`` does not: notebooks/exercises/README.md.)

**Student copies run top to bottom, failing only where expected.** Every exercise is a function or
class, so an exercise cell with its stub runs fine (it only defines the function) and the check cell
then fails with ``ExerciseFailed: ... not implemented yet``. The course tests grade every committed
student copy and require that every exercise comes out "not attempted" and that no cell outside an
exercise fails: no cell tags and no nbval lax mode are needed (student copies carry no outputs, so
nbval does not run them; the instructor notebooks are nbval-checked like the lessons).
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXERCISES_DIR = ROOT / "notebooks" / "exercises"
SOLUTIONS_DIR = EXERCISES_DIR / "solutions"

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
HEADER = re.compile(r"^# Exercise (\d+\.\d+): (\w+)[ \t]*$")
CHECK_CALL = re.compile(r"\bcheck_\w+\s*\(")
STUB = 'raise NotImplementedError("exercise {id}: {name}")'


# -- the exercises of a notebook -------------------------------------------------------------------


@dataclass
class Exercise:
    id: str  # "2.1"
    name: str  # "lora_forward"
    cell: int  # index of the exercise cell in nb.cells
    check_cell: int | None  # index of its check cell (None: missing)

    @property
    def label(self) -> str:
        return f"{self.id} {self.name}"

    @property
    def cells(self) -> list[int]:
        return [self.cell] + ([self.check_cell] if self.check_cell is not None else [])


def find_exercises(nb) -> list[Exercise]:
    """The exercises of ``nb``: cells whose first line is ``# Exercise N.M: name``, each with its check cell."""
    found: list[Exercise] = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        match = HEADER.match(cell.source.split("\n", 1)[0])
        if match:
            found.append(Exercise(match.group(1), match.group(2), index, None))
        elif found and found[-1].check_cell is None and CHECK_CALL.search(cell.source):
            found[-1].check_cell = index
    return found


# -- generate --------------------------------------------------------------------------------------


def strip_solutions(source: str, stub: str, where: str = "cell") -> str:
    """Replace every ``# BEGIN SOLUTION`` ... ``# END SOLUTION`` block of ``source`` by ``stub``, indented alike."""
    out: list[str] = []
    inside = False
    for number, line in enumerate(source.split("\n"), 1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError(f"{where}, line {number}: {BEGIN!r} inside a solution block (missing {END!r})")
            inside = True
            out.append(line[: len(line) - len(line.lstrip())] + stub)
        elif marker == END:
            if not inside:
                raise ValueError(f"{where}, line {number}: {END!r} without {BEGIN!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN!r} never closed by {END!r}")
    return "\n".join(out)


def student_copy(nb, lesson: str | None = None):
    """The student version of instructor notebook ``nb``: solutions stubbed, outputs cleared.

    ``lesson`` (e.g. ``"02"``): if given, exercise ids must read ``2.1, 2.2, ...`` in order.
    Raises ``ValueError`` on a malformed notebook (stray markers, missing check cells, wrong numbering).
    """
    from .notebook import clean

    student = copy.deepcopy(nb)
    exercises = {ex.cell: ex for ex in find_exercises(nb)}
    if not exercises:
        raise ValueError("no exercise cell (a code cell whose first line is '# Exercise N.M: name')")
    for position, ex in enumerate(exercises.values(), 1):
        if ex.check_cell is None:
            raise ValueError(f"exercise {ex.label} has no check cell (a code cell calling checks.check_...)")
        if lesson is not None and ex.id != f"{int(lesson)}.{position}":
            raise ValueError(f"exercise {ex.label} should be numbered {int(lesson)}.{position}")
        if BEGIN not in nb.cells[ex.cell].source:
            raise ValueError(f"exercise {ex.label} has no {BEGIN!r} block")
    for index, cell in enumerate(student.cells):
        if cell.cell_type != "code":
            continue
        if index in exercises:
            ex = exercises[index]
            cell.source = strip_solutions(cell.source, STUB.format(id=ex.id, name=ex.name), f"exercise {ex.label}")
        elif BEGIN in cell.source or END in cell.source:
            raise ValueError(f"cell {index + 1} has solution markers but is not an exercise cell")
        cell.outputs = []
        cell.execution_count = None
    clean(student)
    return student


NBGRADER_SCHEMA = 3


def nbgrader_marks(nb) -> dict[int, dict]:
    """nbgrader's metadata for each code cell of instructor notebook ``nb``, by cell index.

    Exercise cells are autograded answers (``solution``), check cells autograder tests worth one point
    (``grade``, read-only), every other code cell read-only; ``grade_id`` names each cell uniquely.
    """
    exercises = find_exercises(nb)
    answers = {ex.cell: ex for ex in exercises}
    checks = {ex.check_cell: ex for ex in exercises}
    marks = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        mark = {"schema_version": NBGRADER_SCHEMA, "task": False, "grade": False, "locked": True, "solution": False}
        if index in answers:
            mark.update(grade_id=answers[index].name, locked=False, solution=True)
        elif index in checks:
            mark.update(grade_id=f"check_{checks[index].name}", grade=True, points=1)
        else:
            mark.update(grade_id=f"cell_{index + 1}")
        marks[index] = mark
    return marks


def mark_for_nbgrader(solutions_dir: Path = SOLUTIONS_DIR, check: bool = False) -> list[str]:
    """Give every instructor notebook its :func:`nbgrader_marks` (or, with ``check``, list those that lack them)."""
    import nbformat

    report = []
    for path in sorted(solutions_dir.glob("[0-9]*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        marks = nbgrader_marks(nb)
        if any(nb.cells[i].metadata.get("nbgrader") != mark for i, mark in marks.items()):
            report.append(f"{'not marked for nbgrader' if check else 'marked for nbgrader'}: solutions/{path.name}")
            if not check:
                for index, mark in marks.items():
                    nb.cells[index].metadata["nbgrader"] = mark
                nbformat.write(nb, path)
    return report


def generate(solutions_dir: Path = SOLUTIONS_DIR, out_dir: Path = EXERCISES_DIR, check: bool = False) -> list[str]:
    """Write (or with ``check``, only compare) the student copy of every instructor notebook.

    Returns one line per student copy that was written (or, with ``check``, is stale or missing),
    and per student copy that has no instructor notebook (never deleted: say so).
    """
    import nbformat

    report = []
    for path in sorted(solutions_dir.glob("[0-9]*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        try:
            text = nbformat.writes(student_copy(nb, lesson=path.name[:2]))
        except ValueError as error:
            raise ValueError(f"{path.name}: {error}") from None
        text = text if text.endswith("\n") else text + "\n"
        target = out_dir / path.name
        if not target.exists() or target.read_text() != text:
            report.append(f"{'stale' if check else 'wrote'}: {target.name}")
            if not check:
                target.write_text(text)
    for orphan in sorted(out_dir.glob("[0-9]*.ipynb")):
        if not (solutions_dir / orphan.name).exists():
            report.append(f"no instructor notebook for {orphan.name} (delete it or add solutions/{orphan.name})")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write the student copies from notebooks/exercises/solutions/")
    gen.add_argument("--check", action="store_true", help="only compare; exit 1 if a student copy is stale")
    args = parser.parse_args(argv)
    report = mark_for_nbgrader(check=args.check) + generate(check=args.check)
    print("\n".join(report) if report else "student copies are up to date")
    if args.check and report:
        print("student copies differ from notebooks/exercises/solutions/: run `make exercises`")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
