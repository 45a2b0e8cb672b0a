"""What runs inside a learner's sandboxed process when the grader grades their notebook.

    python -I -S -c <bootstrap> <sys.path as JSON> JOB_DIR        (started by :mod:`lora_course.sandbox`)

``JOB_DIR/job.json`` lists the steps: the hand-out's setup cells and the learner's exercise cells, in the
notebook's order, each exercise followed by a *probe* step where its check cell was. The runner executes the
cells in one IPython shell (magics work, as in a notebook) and, at each probe step, runs the exercise's probe
(:mod:`lora_course.checkers`) on the learner's function; what the probe records goes to
``JOB_DIR/results/<exercise>.pt`` (``torch.save`` of plain data). Progress goes to ``JOB_DIR/results/events.jsonl``,
one line per event, so that the grader can tell which step was running if the process is stopped.

Nothing here decides a grade: the grader's judge reads the results in its own process. Learner code runs in
this process and may change anything in it, including this module and the files it writes; the worst it can
do is record wrong results, which the judge then fails.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

#: Sentinel steps of events.jsonl.
FINISHED = "finished"


class Events:
    """Appends one JSON line per event to ``events.jsonl`` and flushes it (the process may be killed any time)."""

    def __init__(self, path: Path):
        self.handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run

    def write(self, **event) -> None:
        self.handle.write(json.dumps(event) + "\n")
        self.handle.flush()


def error_record(error: BaseException | None) -> dict | None:
    """``{"type", "message", "line"}`` of an exception raised by a cell (``line``: the cell's failing line)."""
    if error is None:
        return None
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.startswith("<")]
    line = frames[-1].line if frames and frames[-1].line else ""
    return {"type": type(error).__name__, "message": str(error)[:2000], "line": (line or "")[:2000]}


def make_shell():
    """A fresh IPython shell (no history file, no display hooks beyond print): the learner's "kernel"."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False
    return InteractiveShell.instance(config=config)


def main(job_dir: str) -> int:
    job_dir = Path(job_dir)
    job = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
    results = job_dir / "results"
    events = Events(results / "events.jsonl")
    os.chdir(job["cwd"])

    import torch

    from lora_course.checkers import EXERCISES

    shell = make_shell()
    events.write(step=-1, event="ready")
    for number, step in enumerate(job["steps"]):
        events.write(step=number, event="start")
        if step["kind"] == "cell":
            result = shell.run_cell(step["source"], store_history=False)
            error = result.error_before_exec or result.error_in_exec
            events.write(step=number, event="done", error=error_record(error))
            continue
        exercise = EXERCISES[step["exercise"]]
        answer = shell.user_ns.get(step["answer"], _UNDEFINED)
        try:
            record = {"undefined": step["answer"]} if answer is _UNDEFINED else exercise.run_probe(answer, job["seed"])
        except BaseException as error:  # noqa: BLE001 - a probe broken by learner code is reported, not fatal
            record = {"probe_failed": f"{type(error).__name__}: {error}"[:2000]}
        target = results / f"{step['exercise']}.pt"
        try:
            torch.save(record, target.with_suffix(".tmp"))
            os.replace(target.with_suffix(".tmp"), target)
            events.write(step=number, event="done", error=None)
        except BaseException as error:  # noqa: BLE001
            events.write(step=number, event="done", error=error_record(error))
    events.write(step=len(job["steps"]), event=FINISHED)
    sys.stdout.flush()
    return 0


_UNDEFINED = object()
