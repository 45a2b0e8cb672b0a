"""A learner's notebook held against the hand-out it came from: what to grade, what to run, what changed.

The hand-out (the student copies that ``make exercises`` writes) says which exercises a lesson has, which
function each check cell checks, and what the other cells hold. From a submission the grader takes **only the
exercise cells** (found by their first line, ``# Exercise N.M: name``); everything else is restored from the
hand-out, as nbgrader does: a changed setup or check cell is reported, never run, and cells the learner added
are not run either. Every exercise of the lesson gets a verdict: ``missing`` (no cell starts with its line),
``duplicated`` (several do; the last one is graded, as "Run All" would leave it), ``renamed`` (a cell has its
number with another name, or its name with another number; graded anyway), or the checker's.
"""

from __future__ import annotations

import collections
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .exercises import BEGIN, HEADER, Exercise, find_exercises

#: A first line that looks like an exercise header, however it was edited.
LOOSE_HEADER = re.compile(r"^\s*#\s*exercise\s*(\d+\.\d+)\s*:?\s*(.*?)\s*$", re.IGNORECASE)
CHECK_CALL = re.compile(r"checkers\.check_(\w+)\(\s*([A-Za-z_]\w*)\s*\)")
MAX_NOTEBOOK_BYTES = 20 << 20  # a learner's notebook is a few hundred kB; larger ones hold huge outputs


class Invalid(Exception):
    """A file that cannot be graded at all (not a notebook, a link, an instructor notebook, no lesson)."""


@dataclass
class Lesson:
    """One hand-out notebook: its exercises, the function each check cell checks, and its other cells."""

    number: str  # "02"
    path: Path
    cells: list
    exercises: list[Exercise]
    checks: dict[str, tuple[str, str]]  # exercise label -> (checker name, function the check cell passes)

    @classmethod
    def load(cls, path: Path) -> Lesson:
        import nbformat

        nb = nbformat.read(path, as_version=4)
        exercises = find_exercises(nb)
        checks = {}
        for ex in exercises:
            found = CHECK_CALL.search(nb.cells[ex.check_cell].source) if ex.check_cell is not None else None
            if not found:
                raise ValueError(
                    f"{path.name}: exercise {ex.label} has no check cell `checkers.check_<name>(<answer>)`"
                )
            checks[ex.label] = (found.group(1), found.group(2))
        return cls(path.name[:2], path, list(nb.cells), exercises, checks)

    def fixed_cells(self) -> dict[int, str]:
        """Code cells that are not exercise cells, by index, with what they are (``setup cell 2``, ``check cell of 2.1``)."""
        checks = {ex.check_cell: ex for ex in self.exercises}
        answers = {ex.cell for ex in self.exercises}
        roles = {}
        for index, cell in enumerate(self.cells):
            if cell.cell_type == "code" and index not in answers:
                roles[index] = f"check cell of {checks[index].id}" if index in checks else f"setup cell {index + 1}"
        return roles


def load_handout(folder: Path) -> dict[str, Lesson]:
    """Every hand-out notebook ``NN_*.ipynb`` of ``folder``, by lesson number."""
    lessons = [Lesson.load(path) for path in sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))]
    if not lessons:
        raise ValueError(f"no hand-out notebooks (NN_name.ipynb) in {folder}")
    return {lesson.number: lesson for lesson in lessons}


def read_notebook(path: Path) -> tuple[object, bytes]:
    """The notebook at ``path`` and its bytes; :class:`Invalid` for a link, a huge file, or not a notebook."""
    import nbformat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        if Path(path).is_symlink():
            raise Invalid("a symbolic link, not a notebook file: collect the learner's own file") from None
        raise Invalid(f"cannot open: {error.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise Invalid("not a regular file")
        if info.st_size > MAX_NOTEBOOK_BYTES:
            raise Invalid(
                f"{info.st_size / 2**20:.0f} MB, more than {MAX_NOTEBOOK_BYTES >> 20} MB: ask for the notebook with "
                "its outputs cleared"
            )
        data = handle.read(MAX_NOTEBOOK_BYTES + 1)
    try:
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
        nbformat.validate(nb)
    except Exception as error:  # noqa: BLE001 - whatever is wrong with the file, report it
        raise Invalid(f"not a notebook: {type(error).__name__}: {error}") from None
    if any(cell.cell_type == "code" and BEGIN in cell.source for cell in nb.cells):
        raise Invalid(f"holds {BEGIN!r} markers: an instructor notebook, not a learner's")
    return nb, data


@dataclass
class Header:
    cell: int
    id: str
    name: str
    line: str
    exact: bool  # written exactly as the hand-out writes headers


def _headers(nb) -> list[Header]:
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        line = cell.source.split("\n", 1)[0]
        exact, loose = HEADER.match(line), LOOSE_HEADER.match(line)
        if exact:
            found.append(Header(index, exact.group(1), exact.group(2), line, True))
        elif loose:
            found.append(Header(index, loose.group(1), loose.group(2), line, False))
    return found


def find_lesson(nb, path: Path, handout: dict[str, Lesson]) -> Lesson:
    """The hand-out lesson of ``nb``: from its exercise numbers, else from a ``NN_`` in the file name."""
    numbers = collections.Counter(f"{int(h.id.split('.')[0]):02d}" for h in _headers(nb))
    name_match = re.search(r"(?<!\d)(\d{2})_", Path(path).name)
    candidates = [n for n, _ in numbers.most_common()] + ([name_match.group(1)] if name_match else [])
    for number in candidates:
        if number in handout:
            return handout[number]
    raise Invalid(
        "no lesson of the hand-out: no '# Exercise N.M: name' line of a known lesson, and no NN_ in the file name"
    )


@dataclass
class Match:
    """How one hand-out exercise was found in the submission."""

    exercise: Exercise
    status: str  # "ok", "missing", "duplicated", "renamed"
    cell: int | None = None  # the submission's cell that is graded
    detail: str = ""


@dataclass
class Plan:
    """What to run for one submission, and what the report must say about its cells."""

    lesson: Lesson
    matches: list[Match]
    steps: list[dict] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)


def _normalized(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().split("\n"))


def plan(nb, lesson: Lesson) -> Plan:
    """Match ``nb``'s exercise cells to ``lesson``'s exercises and lay out the steps of the run."""
    headers = _headers(nb)
    theirs_exactly = {(ex.id, ex.name) for ex in lesson.exercises}
    used: set[int] = set()
    matches = []
    for ex in lesson.exercises:
        expected = f"# Exercise {ex.id}: {ex.name}"
        exact = [h for h in headers if h.exact and (h.id, h.name) == (ex.id, ex.name)]
        if len(exact) == 1:
            matches.append(Match(ex, "ok", exact[0].cell))
        elif exact:
            cells = ", ".join(str(h.cell + 1) for h in exact)
            matches.append(
                Match(ex, "duplicated", exact[-1].cell, f"{len(exact)} cells ({cells}) start with {expected!r}")
            )
        else:
            near = [
                h
                for h in headers
                if h.cell not in used
                and not (h.exact and (h.id, h.name) in theirs_exactly)  # another exercise's own cell
                and (h.id == ex.id or h.name == ex.name)
            ]
            if near:
                detail = f"cell {near[0].cell + 1} starts with {near[0].line.strip()!r} instead of {expected!r}"
                matches.append(Match(ex, "renamed", near[0].cell, detail))
            else:
                matches.append(Match(ex, "missing", None, f"no cell starts with {expected!r}"))
        used.update(h.cell for h in exact)
        used.add(matches[-1].cell)
    changes = [
        f"cell {h.cell + 1} ({h.line.strip()!r}) is not an exercise of this lesson: not run"
        for h in headers
        if h.cell not in used
    ]
    header_cells = {h.cell for h in headers}
    theirs = collections.Counter(
        _normalized(cell.source)
        for index, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and index not in header_cells
    )
    fixed = lesson.fixed_cells()
    ours = collections.Counter(_normalized(lesson.cells[index].source) for index in fixed)
    gone = [role for index, role in fixed.items() if not theirs[_normalized(lesson.cells[index].source)]]
    changes += [f"{role} changed or removed" for role in gone]
    # A changed cell is one of theirs that is not ours: count only the cells beyond those as added.
    added = sum(count for source, count in (theirs - ours).items() if source) - len(gone)
    if added > 0:
        changes.append(f"{added} added cell{'s' * (added > 1)} not run")
    result = Plan(lesson, matches, changes=changes)
    result.steps = _steps(nb, lesson, matches)
    return result


def _steps(nb, lesson: Lesson, matches: list[Match]) -> list[dict]:
    """The hand-out's cells in order, with the learner's exercise cells in place and a probe where each check cell was."""
    by_cell = {m.exercise.cell: m for m in matches}
    by_check = {m.exercise.check_cell: m for m in matches}
    steps = []
    for index, cell in enumerate(lesson.cells):
        if cell.cell_type != "code":
            continue
        if index in by_cell:
            match = by_cell[index]
            if match.cell is not None:
                source = nb.cells[match.cell].source
                steps.append({"kind": "cell", "exercise": match.exercise.label, "source": source})
        elif index in by_check:
            match = by_check[index]
            if match.cell is not None:
                checker, answer = lesson.checks[match.exercise.label]
                steps.append({"kind": "probe", "exercise": checker, "answer": answer, "label": match.exercise.label})
        else:
            steps.append({"kind": "cell", "exercise": None, "source": cell.source, "setup": index + 1})
    return steps
