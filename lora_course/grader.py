"""Grading a class: run each learner's exercise notebook in a fresh kernel and report every exercise.

    python -m lora_course.grader PATHS... [--csv out.csv] [--timeout S] [--jobs N]   (make grade NOTEBOOKS=...)

``grade`` runs each notebook in a fresh kernel (in the notebook's folder) with a time limit for the whole
notebook, never stopping at errors, and classifies each exercise from the outputs:

- ``passed``: the check cell printed its ``✓`` line;
- ``failed``: the checker reported a wrong answer;
- ``error``: the learner's code raised (in the exercise cell or inside the check), or timed out;
- ``not attempted``: the stub's ``NotImplementedError`` is still there.

Notebook-level problems get a row of their own (exercise ``(notebook)``): ``timeout``, ``invalid``
(not a readable notebook), ``error outside exercises`` (a setup cell raised), ``kernel died``. The
grader never stops on a bad notebook; it prints one table and writes the same rows as CSV.
"""

from __future__ import annotations

import argparse
import csv
import glob
import re
import subprocess
import sys
import time
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from .exercises import Exercise, find_exercises

PASSED, FAILED, ERROR, NOT_ATTEMPTED = "passed", "failed", "error", "not attempted"
NOTEBOOK_ROW = "(notebook)"
DETAIL_WIDTH = 100  # characters of the detail column in the printed table (the CSV keeps it whole)


@dataclass
class Row:
    notebook: str
    exercise: str
    result: str
    detail: str = ""


def _first_line(text: str, limit: int = 400) -> str:
    line = re.sub(r"\x1b\[[0-9;]*m", "", str(text)).strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _errors(cell) -> list:
    return [o for o in cell.get("outputs", []) if o.output_type == "error"]


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def classify(nb, ex: Exercise) -> tuple[str, str]:
    """``(result, detail)`` of exercise ``ex`` in the executed notebook ``nb``."""
    for error in _errors(nb.cells[ex.cell]):
        if error.ename == "NotImplementedError":
            return NOT_ATTEMPTED, ""
        return ERROR, _first_line(f"{error.ename}: {error.evalue}")
    if ex.check_cell is None:
        return ERROR, "check cell missing"
    check = nb.cells[ex.check_cell]
    for error in _errors(check):
        message = re.sub(r"^✗ \w+: (wrong answer: |your code raised: )?", "", _first_line(error.evalue))
        if error.ename == "ExerciseFailed":
            if "not implemented yet" in error.evalue:
                return NOT_ATTEMPTED, ""
            if "your code raised" in error.evalue:
                return ERROR, message
            return FAILED, message
        if error.ename == "NotImplementedError":
            return NOT_ATTEMPTED, ""
        return ERROR, _first_line(f"{error.ename}: {error.evalue}")
    if "✓" in _stdout(check):
        return PASSED, ""
    if check.get("execution_count") is None:
        return ERROR, "check cell did not run"
    return FAILED, "the check printed no ✓ (was the check cell changed?)"


def grade_notebook(path: Path, timeout: float = 300, name: str | None = None) -> list[Row]:
    """Execute ``path`` in a fresh kernel (at most ``timeout`` seconds in all) and grade its exercises."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    name = name or str(path)
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as error:  # noqa: BLE001 - whatever is wrong with the file, report it
        return [Row(name, NOTEBOOK_ROW, "invalid", _first_line(f"not a notebook: {type(error).__name__}: {error}"))]
    exercises = find_exercises(nb)
    rows: list[Row] = []
    started: list[int] = []
    deadline = time.monotonic() + timeout
    client = NotebookClient(
        nb,
        timeout=int(timeout),
        timeout_func=lambda cell: max(1, round(deadline - time.monotonic())),
        allow_errors=True,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.resolve().parent)}},
        on_cell_execute=lambda cell, cell_index: started.append(cell_index),
    )
    stopped_at = None  # index of the cell that was running when execution stopped early
    try:
        # The kernel's own stderr (e.g. its transport warnings) would clutter the table; cells' outputs are kept.
        client.execute(stderr=subprocess.DEVNULL)
    except CellTimeoutError:
        stopped_at = started[-1] if started else 0
        rows.append(Row(name, NOTEBOOK_ROW, "timeout", f"cell {stopped_at + 1} still running after {timeout:g} s"))
    except DeadKernelError:
        stopped_at = started[-1] if started else 0
        rows.append(Row(name, NOTEBOOK_ROW, "kernel died", f"in cell {stopped_at + 1}"))
    except Exception as error:  # noqa: BLE001 - a notebook must never crash the grading run
        stopped_at = started[-1] if started else 0
        rows.append(Row(name, NOTEBOOK_ROW, "error", _first_line(f"{type(error).__name__}: {error}")))
    in_exercise = {index for ex in exercises for index in ex.cells}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and index not in in_exercise:
            for error in _errors(cell):
                detail = _first_line(f"cell {index + 1}: {error.ename}: {error.evalue}")
                rows.append(Row(name, NOTEBOOK_ROW, "error outside exercises", detail))
    if not exercises:
        rows.append(Row(name, NOTEBOOK_ROW, "no exercises", "no cell starts with '# Exercise N.M: name'"))
    for ex in exercises:
        if stopped_at is not None and stopped_at in ex.cells:
            rows.append(Row(name, ex.label, ERROR, f"stopped while running (cell {stopped_at + 1})"))
        elif stopped_at is not None and min(ex.cells) > stopped_at:
            rows.append(Row(name, ex.label, ERROR, f"not run: the notebook stopped at cell {stopped_at + 1}"))
        else:
            rows.append(Row(name, ex.label, *classify(nb, ex)))
    return rows


def expand(paths: list[str]) -> list[Path]:
    """Files, folders (every ``*.ipynb`` below) and glob patterns, in order, without duplicates."""
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        elif path.exists():
            found.append(path)
        else:
            found += [Path(p) for p in sorted(glob.glob(item, recursive=True))] or [path]
    return list(dict.fromkeys(found))


def format_table(rows: list[Row]) -> str:
    """The rows as an aligned text table, then one summary line per notebook."""
    header = [f.name for f in fields(Row)]
    table = [header] + [list(astuple(row)) for row in rows]
    for line in table[1:]:
        line[-1] = line[-1] if len(line[-1]) <= DETAIL_WIDTH else line[-1][: DETAIL_WIDTH - 3] + "..."
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        for line in table
    ]
    lines = [line.rstrip() for line in lines]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
    lines.append("")
    for notebook in dict.fromkeys(row.notebook for row in rows):
        mine = [row for row in rows if row.notebook == notebook and row.exercise != NOTEBOOK_ROW]
        passed = sum(row.result == PASSED for row in mine)
        problems = [row.result for row in rows if row.notebook == notebook and row.exercise == NOTEBOOK_ROW]
        note = f" ({', '.join(problems)})" if problems else ""
        lines.append(f"{notebook}: {passed}/{len(mine)} passed{note}")
    return "\n".join(lines)


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f.name for f in fields(Row)])
        writer.writerows(astuple(row) for row in rows)


def _display_name(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else as given."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _grade_one(path: Path, timeout: float) -> list[Row]:
    name = _display_name(path)
    if not path.is_file():
        return [Row(name, NOTEBOOK_ROW, "invalid", "no such file")]
    try:
        return grade_notebook(path, timeout=timeout, name=name)
    except Exception as error:  # noqa: BLE001 - the grader itself must not stop the run either
        return [Row(name, NOTEBOOK_ROW, "error", _first_line(f"grader: {type(error).__name__}: {error}"))]


def grade(paths: list[Path], timeout: float = 300, jobs: int = 1, progress: bool = True) -> list[Row]:
    """Grade every notebook in ``paths`` (``jobs`` at a time); a broken notebook gives rows, never an exception."""
    if jobs <= 1 or len(paths) <= 1:
        rows: list[Row] = []
        for i, path in enumerate(paths, 1):
            if progress:
                print(f"[{i}/{len(paths)}] grading {path} ...", file=sys.stderr, flush=True)
            rows += _grade_one(path, timeout)
        return rows
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # "spawn": each worker starts clean (no state inherited from a parent that may hold torch threads).
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_grade_one, path, timeout) for path in paths]
        results = []
        for i, future in enumerate(futures, 1):
            results.append(future.result())
            if progress:
                print(f"[{i}/{len(paths)}] graded {paths[i - 1]}", file=sys.stderr, flush=True)
    return [row for rows in results for row in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="notebooks, folders or glob patterns")
    parser.add_argument(
        "--csv", type=Path, default=Path("grades.csv"), help="where to write the CSV (default grades.csv)"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds one notebook may run in all (default 300)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks graded at the same time (default 1)")
    args = parser.parse_args(argv)
    paths = expand(args.paths)
    if not paths:
        print(f"no notebooks found in {args.paths}", file=sys.stderr)
        return 2
    rows = grade(paths, timeout=args.timeout, jobs=args.jobs)
    print(format_table(rows))
    write_csv(rows, args.csv)
    print(f"\nwrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
