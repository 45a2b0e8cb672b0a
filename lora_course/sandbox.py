"""Running one submission in isolation: its own temporary copy of everything, a time limit, an output cap.

:class:`Snapshot` reads the course's code (``lora_basics``, ``lora_course``) and data once, when grading starts,
before any learner code runs. :func:`run` then, for each submission:

- makes a fresh temporary folder holding a copy of that snapshot (files read-only), an empty working folder with
  a copy of the notebook, and the job for :mod:`lora_course.runner`;
- starts ``python -I -S`` there: no ``site`` (so no editable install pointing at the instructor's checkout),
  ``sys.path`` = the copy + the interpreter's site-packages, a minimal environment (no variables of the
  instructor's shell), its own session (so that the whole process group can be killed);
- kills the group when the time limit for the whole notebook is reached, however many cells it has;
- reads stdout and stderr as they come and keeps at most ``output_cap`` bytes of them (the rest is counted);
- removes the folder afterwards.

Nothing a submission writes outlives its run, and the next submission starts from the snapshot, not from the
files on disk. What this does not stop: the learner's code runs with the grader's user rights, so it could look
for files outside its folder; notebooks/exercises/README.md says how to run the grader in a container or as
an unprivileged user for a class you do not trust.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import lora_basics
import lora_course
from lora_course.gpt import CHECKPOINT

BOOTSTRAP = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "from lora_course.runner import main; sys.exit(main(sys.argv[2]))"
)
OUTPUT_CAP = 1 << 20  # bytes of a run's stdout + stderr kept (the rest is counted, not stored)
MAX_RESULT_BYTES = 16 << 20  # a probe's results file larger than this is not read
MAX_EVENTS_BYTES = 1 << 20


@dataclass
class Snapshot:
    """The files a learner's process may import or read, as bytes: ``{relative path: content}``."""

    files: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def take(cls) -> Snapshot:
        files = {}
        for package in (lora_basics, lora_course):
            root = Path(package.__file__).resolve().parent
            for path in sorted(root.rglob("*.py")):
                files[str(path.relative_to(root.parent))] = path.read_bytes()
        files["data/" + CHECKPOINT.name] = CHECKPOINT.read_bytes()
        return cls(files)

    def write(self, root: Path) -> None:
        """Write the files below ``root``, read-only (directories too: nothing can be added)."""
        for relative, content in self.files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(0o444)
        for directory in sorted({p for r in self.files for p in (root / r).parents if root in p.parents}, reverse=True):
            directory.chmod(0o555)
        root.chmod(0o555)


@dataclass
class Run:
    """What came back from a run: the runner's events, the probes' results (raw bytes), the output, how it ended."""

    events: list[dict]
    results: dict[str, bytes]
    output: bytes
    output_bytes: int  # printed in all (``output`` keeps the first OUTPUT_CAP of them)
    timed_out: bool
    returncode: int | None
    seconds: float


class _Drain(threading.Thread):
    """Reads a pipe until it closes or ``stop`` is set, keeping the first ``cap`` bytes and counting the rest."""

    def __init__(self, fd: int, cap: int):
        super().__init__(daemon=True)
        self.fd, self.cap = fd, cap
        self.kept = bytearray()
        self.total = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return
            self.total += len(chunk)
            room = self.cap - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]


def _environment(home: Path, threads: int) -> dict[str, str]:
    """A minimal environment: nothing of the instructor's (paths, tokens, the virtualenv) reaches the learner's code."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "TMPDIR": str(home),
        "IPYTHONDIR": str(home / ".ipython"),
        "MPLCONFIGDIR": str(home / ".matplotlib"),
        "MPLBACKEND": "Agg",
        "LC_ALL": "C.UTF-8",
        "TQDM_DISABLE": "1",
        "LORA_BASICS_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
    }


def site_packages() -> list[str]:
    """Where this interpreter's third-party packages live (torch, IPython): the only outside paths a run sees."""
    paths = [*site.getsitepackages(), site.getusersitepackages()]
    paths += [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    return [p for p in dict.fromkeys(paths) if Path(p).is_dir()]


def check_user(user: str) -> None:
    """Fail now, with the reason, if this interpreter cannot run learners' code as ``user``."""
    account = pwd.getpwnam(user)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "pass"],
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=[],
        cwd="/",
        capture_output=True,
    )
    if done.returncode != 0:
        raise ValueError(f"{user} cannot run {sys.executable}: {done.stderr.decode(errors='replace').strip()}")


def run(
    snapshot: Snapshot,
    notebook_name: str,
    notebook_bytes: bytes,
    steps: list[dict],
    seed: int,
    timeout: float,
    threads: int = 1,
    output_cap: int = OUTPUT_CAP,
    user: str | None = None,
) -> Run:
    """Run ``steps`` (see :mod:`lora_course.runner`) for one submission in a fresh temporary folder.

    ``user``: run the learner's process as this (unprivileged) user; the grader must run as root. That user
    can write only the run's ``work``, ``home`` and ``results`` folders, not the copy of the course, not the
    grader's files, and cannot reach the grader's process.
    """
    root = Path(tempfile.mkdtemp(prefix="lora-grade-"))
    try:
        site_dir, work, home, results = root / "site", root / "work", root / "home", root / "results"
        for folder in (work, home, results):
            folder.mkdir()
        snapshot.write(site_dir)
        identity = {}
        if user is not None:
            account = pwd.getpwnam(user)
            identity = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            root.chmod(0o711)  # that user may pass through, not list or write
            for folder in (work, home, results):
                os.chown(folder, account.pw_uid, account.pw_gid)
        (work / notebook_name).write_bytes(notebook_bytes)
        job = {"steps": steps, "seed": seed, "cwd": str(work)}
        (root / "job.json").write_text(json.dumps(job), encoding="utf-8")
        command = [
            sys.executable,
            "-I",
            "-S",
            "-c",
            BOOTSTRAP,
            json.dumps([str(site_dir), *site_packages()]),
            str(root),
        ]
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            cwd=work,
            env=_environment(home, threads),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as a whole, children included
            **identity,
        )
        drain = _Drain(process.stdout.fileno(), output_cap)
        drain.start()
        timed_out = False
        try:
            process.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(process)
        process.wait()
        seconds = time.monotonic() - started
        drain.join(timeout=1.0)
        drain.stop.set()
        drain.join()
        process.stdout.close()
        return Run(
            events=_read_events(results / "events.jsonl"),
            results=_read_results(results),
            output=bytes(drain.kept),
            output_bytes=drain.total,
            timed_out=timed_out,
            returncode=None if timed_out else process.returncode,
            seconds=seconds,
        )
    finally:
        _remove(root)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_events(path: Path) -> list[dict]:
    if not path.is_file() or path.is_symlink():
        return []
    with open(path, "rb") as handle:
        lines = handle.read(MAX_EVENTS_BYTES).decode("utf-8", "replace").splitlines()
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("step"), int):
            events.append(event)
    return events


def _read_results(folder: Path) -> dict[str, bytes]:
    found = {}
    for path in folder.glob("*.pt"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size <= MAX_RESULT_BYTES:
            found[path.stem] = path.read_bytes()
    return found


def _remove(root: Path) -> None:
    """Delete the run's folder, read-only parts included (symbolic links are removed, never followed)."""
    os.chmod(root, 0o700)
    for directory, subdirectories, _ in os.walk(root):
        for name in subdirectories:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700)  # before os.walk lists it
    shutil.rmtree(root, ignore_errors=True)
