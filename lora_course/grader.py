"""Grading a class: every exercise of every learner's notebook gets a verdict that the learner's code cannot fake.

    python -m lora_course.grader PATHS... [--csv grades.csv] [--timeout S] [--jobs N] [--handout DIR] [--seed N]
    (make grade NOTEBOOKS=...)

How one notebook is graded:

1. **Read** it without running anything (:mod:`lora_course.submission`): a symbolic link, a file over 20 MB, an
   instructor notebook (it holds solution markers) or a file that is not a notebook is ``invalid``.
2. **Match** it against the hand-out (the student copies, ``notebooks/exercises/NN_*.ipynb``): only its exercise
   cells are taken; the setup and check cells are the hand-out's (a changed one is reported, never run).
3. **Run** the hand-out's setup cells and the learner's exercise cells in a fresh Python process
   (:mod:`lora_course.sandbox`), in a temporary folder of its own with read-only copies of the library and the
   checkers, with one time limit for the whole notebook and a cap on the output kept. Where each check cell
   was, the exercise's *probe* calls the learner's function on inputs built from this run's seed and records
   what came back (:mod:`lora_course.runner`).
4. **Judge** here, in the grader's own process, with the instructor's ``lora_course.checkers`` and
   ``lora_basics``: the recorded results are compared with the right answers. Nothing the learner's code
   printed, patched or wrote in its process takes part in the verdict, except the results it returned.

Each exercise gets one row: ``passed``, ``failed`` (a wrong answer, of the wrong type, or a shortcut the task
forbids), ``error`` (the learner's code raised, or did not run in time), ``not attempted`` (the stub is still
there), or ``missing`` / ``duplicated`` / ``renamed`` (see :mod:`lora_course.submission`; the last two say
what the graded cell got). Problems of a whole notebook get a row with exercise ``(notebook)``: ``invalid``,
``cells restored``, ``timeout``, ``kernel died``, ``error outside exercises``, ``output truncated``. The CSV is
written row by row as each notebook is graded (an interrupted run keeps what it graded) and is safe to open in
a spreadsheet (a cell that starts like a formula is prefixed with ``'``).
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import os
import re
import secrets
import sys
import threading
import time
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import torch

from . import checkers
from .exercises import EXERCISES_DIR
from .runner import FINISHED
from .sandbox import OUTPUT_CAP, Run, Snapshot, check_user
from .sandbox import run as run_in_sandbox
from .submission import Invalid, Match, Plan, find_lesson, load_handout, plan, read_notebook

PASSED, FAILED, ERROR, NOT_ATTEMPTED = "passed", "failed", "error", "not attempted"
MISSING, DUPLICATED, RENAMED = "missing", "duplicated", "renamed"
NOTEBOOK_ROW = "(notebook)"
DETAIL_WIDTH = 100  # characters of the detail column in the printed table (the CSV keeps it whole)


@dataclass
class Row:
    notebook: str
    exercise: str
    result: str
    detail: str = ""


def _text(value: object, limit: int = 400) -> str:
    """One line of printable text: colour codes gone, control characters shown as ``?``, at most ``limit`` long."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(value))
    text = "".join("?" if unicodedata.category(c) == "Cc" else c for c in text.strip().split("\n", 1)[0])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} kB"


class Grader:
    """Grades notebooks against one hand-out, with one seed for the whole run (``seed=None``: a random one).

    Made once per grading run: it reads the checkers' data, the hand-out and the snapshot of the code that
    every learner's process gets, before any learner code runs.
    """

    def __init__(
        self,
        handout: Path = EXERCISES_DIR,
        timeout: float = 300,
        seed: int | None = None,
        threads: int = 1,
        output_cap: int = OUTPUT_CAP,
        user: str | None = None,
    ):
        if user is not None and os.geteuid() != 0:
            raise ValueError(f"user={user!r}: running learners' code as another user needs the grader to run as root")
        if user is not None:
            try:
                check_user(user)  # now, not in every run
            except (KeyError, OSError) as error:
                raise ValueError(f"user={user!r}: {error}") from None
        checkers.prepare()
        self.snapshot = Snapshot.take()
        self.handout = load_handout(handout)
        self.timeout, self.threads, self.output_cap, self.user = timeout, threads, output_cap, user
        self.seed = secrets.randbelow(2**31) if seed is None else seed
        self._judging = threading.Lock()  # judges seed torch's global RNG: one at a time

    def grade_file(self, path: Path, name: str | None = None) -> list[Row]:
        """Grade ``path``; a broken notebook (or a bug here) gives rows, never an exception."""
        name = _text(name or path)
        try:
            return self.grade_notebook(Path(path), name)
        except Exception as error:  # noqa: BLE001 - the grader itself must not stop the run either
            return [Row(name, NOTEBOOK_ROW, ERROR, _text(f"grader: {type(error).__name__}: {error}"))]

    def grade_notebook(self, path: Path, name: str) -> list[Row]:
        try:
            nb, data = read_notebook(path)
            lesson = find_lesson(nb, path, self.handout)
        except Invalid as problem:
            return [Row(name, NOTEBOOK_ROW, "invalid", _text(problem))]
        laid_out = plan(nb, lesson)
        rows = []
        if laid_out.changes:
            detail = "; ".join(laid_out.changes) + " (graded with the hand-out's cells)"
            rows.append(Row(name, NOTEBOOK_ROW, "cells restored", _text(detail)))
        run = run_in_sandbox(
            self.snapshot,
            re.sub(r"[^\w.-]", "_", path.name),
            data,
            laid_out.steps,
            self.seed,
            self.timeout,
            self.threads,
            self.output_cap,
            self.user,
        )
        rows += self._notebook_rows(name, laid_out, run)
        for match in laid_out.matches:
            rows.append(Row(name, match.exercise.label, *(_text(v) for v in self._result(match, laid_out, run))))
        return rows

    # -- the rows ----------------------------------------------------------------------------------

    def _notebook_rows(self, name: str, laid_out: Plan, run: Run) -> list[Row]:
        rows = []
        state = _Progress(run, laid_out.steps)
        if run.timed_out:
            rows.append(Row(name, NOTEBOOK_ROW, "timeout", f"{state.running()} still running after {self.timeout:g} s"))
        elif not state.finished:
            tail = _text(run.output.decode("utf-8", "replace").strip().rsplit("\n", 1)[-1], 200)
            detail = f"exit code {run.returncode} during {state.running()}" + (f": {tail}" if tail else "")
            rows.append(Row(name, NOTEBOOK_ROW, "kernel died", _text(detail)))
        if run.output_bytes > len(run.output):
            detail = f"printed {_size(run.output_bytes)}; the first {_size(len(run.output))} kept"
            rows.append(Row(name, NOTEBOOK_ROW, "output truncated", detail))
        for number, step in enumerate(laid_out.steps):
            error = state.error(number)
            if step["kind"] == "cell" and step["exercise"] is None and error:
                detail = f"setup cell {step['setup']}: {error['type']}: {error['message']}"
                rows.append(Row(name, NOTEBOOK_ROW, "error outside exercises", _text(detail)))
        return rows

    def _result(self, match: Match, laid_out: Plan, run: Run) -> tuple[str, str]:
        if match.status == MISSING:
            return MISSING, match.detail
        result, detail = self._verdict(match, laid_out, run)
        if match.status in (DUPLICATED, RENAMED):
            return match.status, f"{match.detail}; graded anyway: {result}" + (f": {detail}" if detail else "")
        return result, detail

    def _verdict(self, match: Match, laid_out: Plan, run: Run) -> tuple[str, str]:
        label = match.exercise.label
        state = _Progress(run, laid_out.steps)
        cell = next(i for i, s in enumerate(laid_out.steps) if s["kind"] == "cell" and s["exercise"] == label)
        probe = next(i for i, s in enumerate(laid_out.steps) if s["kind"] == "probe" and s["label"] == label)
        if not state.done(probe):
            if state.started(cell) and not state.done(cell) or state.started(probe):
                return ERROR, f"stopped while running ({state.describe(probe if state.started(probe) else cell)})"
            return ERROR, f"not run: the notebook stopped at {state.running()}"
        error = state.error(cell)
        if error and error["type"] not in ("NotImplementedError", "ExerciseFailed"):
            line = f" at `{error['line']}`" if error.get("line") else ""
            return ERROR, f"{error['type']}: {error['message']}{line} (in the exercise cell)"
        checker_name, answer = laid_out.lesson.checks[label]
        data = run.results.get(checker_name)
        if data is None:
            return ERROR, "the check recorded no results"
        try:
            record = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - whatever the learner's process wrote, it is not a pass
            return ERROR, f"the check's results could not be read ({type(error).__name__})"
        if isinstance(record, dict) and "undefined" in record:
            return ERROR, f"the exercise cell does not define `{answer}` (the check calls it by that name)"
        if isinstance(record, dict) and "probe_failed" in record:
            return ERROR, f"the check could not run your code: {record['probe_failed']}"
        exercise = checkers.EXERCISES[checker_name]
        with self._judging:
            try:
                exercise.verdict(record, self.seed, source=laid_out.steps[cell]["source"])
            except checkers.ExerciseFailed as failure:
                if failure.status == NOT_ATTEMPTED:
                    return NOT_ATTEMPTED, ""
                message = _text(failure, 2000)
                return failure.status, re.sub(r"^✗ \w+: (wrong answer: |your code raised: )?", "", message)
            except Exception as error:  # noqa: BLE001 - results the judge cannot read are not a pass
                return ERROR, f"the check's results could not be judged ({type(error).__name__}: {error})"
        return PASSED, ""


class _Progress:
    """How far a run got, from the runner's events: which steps started, finished, raised."""

    def __init__(self, run: Run, steps: list[dict]):
        self.steps = steps
        self.events: dict[int, dict] = {}
        self.finished = False
        for event in run.events:
            if event.get("event") == FINISHED:
                self.finished = True
            self.events.setdefault(event["step"], {})[event.get("event")] = event

    def started(self, step: int) -> bool:
        return "start" in self.events.get(step, {})

    def done(self, step: int) -> bool:
        return "done" in self.events.get(step, {})

    def error(self, step: int) -> dict | None:
        error = self.events.get(step, {}).get("done", {}).get("error")
        return error if isinstance(error, dict) and {"type", "message"} <= set(error) else None

    def describe(self, step: int) -> str:
        if step < 0 or step >= len(self.steps):
            return "the start-up (before the first cell)"
        s = self.steps[step]
        if s["kind"] == "probe":
            return f"the check of exercise {s['label']}"
        return f"the cell of exercise {s['exercise']}" if s["exercise"] else f"setup cell {s['setup']}"

    def running(self) -> str:
        """The step that had started and not finished, or the start-up."""
        open_steps = [step for step in self.events if self.started(step) and not self.done(step)]
        return self.describe(max(open_steps) if open_steps else -1)


# -- a class: many notebooks, one report -----------------------------------------------------------


def expand(paths: list[str]) -> list[Path]:
    """Files, folders (every ``*.ipynb`` below) and glob patterns, in order, without duplicates."""
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        elif path.exists() or path.is_symlink():
            found.append(path)
        else:
            found += [Path(p) for p in sorted(glob.glob(item, recursive=True))] or [path]
    return list(dict.fromkeys(found))


def _display_name(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else as given."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def grade(
    paths: list[Path],
    grader: Grader,
    jobs: int = 1,
    progress: bool = True,
    on_rows: Callable[[list[Row]], None] | None = None,
) -> list[Row]:
    """Grade every notebook in ``paths``, ``jobs`` at a time; ``on_rows`` gets each notebook's rows when they are ready.

    Learner code runs in the sandboxed processes; this process only waits for them and judges (one judge at a
    time), so threads are enough. The rows come back in the order of ``paths``.
    """
    results: dict[int, list[Row]] = {}

    def timed(path: Path) -> tuple[list[Row], float]:
        start = time.monotonic()
        return grader.grade_file(path, _display_name(path)), time.monotonic() - start

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        started = time.monotonic()
        futures = {pool.submit(timed, path): i for i, path in enumerate(paths)}
        for done, future in enumerate(as_completed(futures), 1):
            index = futures[future]
            results[index], seconds = future.result()
            if on_rows:
                on_rows(results[index])
            if progress:
                elapsed = time.monotonic() - started
                line = f"[{done}/{len(paths)}] graded {paths[index]} in {seconds:.1f} s ({elapsed:.0f} s in all)"
                print(line, file=sys.stderr, flush=True)
    return [row for index in sorted(results) for row in results[index]]


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


#: A cell starting with one of these is a formula (or a DDE call) to a spreadsheet.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """``text`` as a spreadsheet shows it, never runs it: a leading ``'`` when it would start a formula."""
    return "'" + text if text.startswith(FORMULA_START) else text


class CsvReport:
    """``grades.csv``, written row by row and flushed after each notebook."""

    def __init__(self, path: Path):
        self.handle = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - open for the whole run
        self.writer = csv.writer(self.handle)
        self.writer.writerow([f.name for f in fields(Row)])
        self.handle.flush()

    def write(self, rows: list[Row]) -> None:
        self.writer.writerows([spreadsheet_safe(value) for value in astuple(row)] for row in rows)
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="notebooks, folders or glob patterns")
    parser.add_argument(
        "--csv", type=Path, default=Path("grades.csv"), help="where to write the CSV (default grades.csv)"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds one notebook may run in all (default 300)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks graded at the same time (default 1)")
    parser.add_argument(
        "--handout",
        type=Path,
        default=EXERCISES_DIR,
        help="folder of the student copies handed out (default: this course's)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the checks' inputs (default: a random one)")
    parser.add_argument(
        "--user",
        default=None,
        help="run learners' code as this unprivileged user, e.g. nobody (the grader runs as root)",
    )
    args = parser.parse_args(argv)
    paths = expand(args.paths)
    if not paths:
        print(f"no notebooks found in {args.paths}", file=sys.stderr)
        return 2
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    try:
        grader = Grader(args.handout, timeout=args.timeout, seed=args.seed, threads=threads, user=args.user)
    except ValueError as error:
        print(f"grader: {error}", file=sys.stderr)
        return 2
    print(f"grading {len(paths)} notebooks with seed {grader.seed} (--seed {grader.seed} repeats it)", file=sys.stderr)
    report = CsvReport(args.csv)
    try:
        rows = grade(paths, grader, jobs=args.jobs, on_rows=report.write)
    finally:
        report.close()
    print(format_table(rows))
    print(f"\nwrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
