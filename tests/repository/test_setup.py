"""A newcomer's set-up, run for real in temporary copies of the repository (never in this checkout).

- The Makefile marks ``.venv`` ready only after every install step succeeded: an install that failed is
  retried by the next command, a moved checkout gets a new ``.venv``, ``TORCH=cpu`` takes torch from a CPU
  wheel index before the lock file (here a local index holding a stand-in torch, so no large download).
- ``pip install .`` (not editable) ships the pretrained model: lesson 09's loading code runs from any
  directory against the installed package.
- A lesson opened in JupyterLab (which writes the kernel's ``language_info.version`` into it) is not a
  change for git once ``make gitfilter`` (run by ``make lab``) has configured the filter of ``.gitattributes``.

The Makefile tests build small environments (a tiny lock file instead of the real one) and take a minute.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from tools import nbtools

ROOT = Path(__file__).resolve().parents[2]
#: What a copy of the repository needs to build its environment and install the package.
SOURCES = ["Makefile", "pyproject.toml", "README.md", "lora_basics", "lora_course", "data"]
MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="needs GNU make")


def copy_sources(dest: Path, names: list[str] = SOURCES) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in names:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore)
        else:
            shutil.copy2(source, dest / name)
    return dest


def make(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``make ARGS`` in ``cwd`` with this Python, output captured (stdout and stderr together)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAKE")}
    return subprocess.run(
        [MAKE, *args, f"PYTHON={sys.executable}"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )


def lock_pin(name: str) -> str:
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line
    raise LookupError(name)


def stand_in_torch_index(root: Path, version: str) -> Path:
    """A local package index (PEP 503 layout) holding a tiny wheel named torch ``version``+cpu."""
    wheel_name = f"torch-{version}+cpu-py3-none-any.whl"
    folder = root / "simple" / "torch"
    folder.mkdir(parents=True)
    dist_info = f"torch-{version}+cpu.dist-info"
    files = {
        "torch/__init__.py": f'__version__ = "{version}+cpu"\n',
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}+cpu\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(folder / wheel_name, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(text.encode())}")
        wheel.writestr(f"{dist_info}/RECORD", "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n")
    (folder / "index.html").write_text(f'<a href="{wheel_name}">{wheel_name}</a>\n')  # pip reads a folder's index.html
    return root / "simple"


# -- the Makefile's environment --------------------------------------------------------------------


@pytest.fixture(scope="module")
def installs(tmp_path_factory):
    """One copy of the repository taken through: a failing install, its retry, a move, and a re-run.

    The lock file is tiny: the stand-in torch (from a local "CPU index", TORCH=cpu) and the setuptools
    the editable install needs. The failing one also names a wheel file that does not exist.
    """
    if MAKE is None:
        pytest.skip("needs GNU make")
    base = tmp_path_factory.mktemp("setup")
    index = stand_in_torch_index(base / "index", "9.9.9")
    repo = copy_sources(base / "checkout")
    (repo / "good.txt").write_text(f"torch==9.9.9\n{lock_pin('setuptools')}\n")
    (repo / "bad.txt").write_text("torch==9.9.9\n./no-such-package-1.0-py3-none-any.whl\n")
    cpu = ["TORCH=cpu", f"TORCH_CPU_INDEX={index.as_uri()}"]
    runs = {"failed": make(repo, ".venv/ready", "LOCK=bad.txt", *cpu)}
    runs["retried"] = make(repo, ".venv/ready", "LOCK=good.txt", *cpu)
    runs["again"] = make(repo, ".venv/ready", "LOCK=good.txt", *cpu)
    moved = repo.rename(base / "moved")
    runs["moved"] = make(moved, ".venv/ready", "LOCK=good.txt", *cpu)
    return moved, runs


def test_a_failed_install_leaves_no_ready_environment_and_is_retried(installs):
    repo, runs = installs
    assert runs["failed"].returncode != 0, runs["failed"].stdout
    assert "no-such-package" in runs["failed"].stdout
    assert runs["retried"].returncode == 0, runs["retried"].stdout
    assert "pip install --progress-bar on -r good.txt" in runs["retried"].stdout  # the install ran again
    assert re.search(r"^(Collecting|Requirement already satisfied:) setuptools", runs["retried"].stdout, re.M)
    assert "is up to date" in runs["again"].stdout  # and once it succeeded, it is done


def test_the_environment_holds_the_cpu_torch_and_the_package(installs):
    repo, _ = installs
    python = repo / ".venv" / "bin" / "python"
    # (the stand-in torch cannot run lora_basics: only where its code is installed from is checked)
    code = "import importlib.util, torch; print(torch.__version__, importlib.util.find_spec('lora_basics').origin)"
    out = subprocess.run([python, "-c", code], cwd=repo, capture_output=True, text=True, check=True).stdout
    version, location = out.split()
    assert version == "9.9.9+cpu"  # TORCH=cpu's build, kept by the lock file's torch==9.9.9
    assert Path(location).is_relative_to(repo)


def test_a_moved_checkout_gets_a_new_environment(installs):
    repo, runs = installs
    assert runs["moved"].returncode == 0, runs["moved"].stdout
    assert "made in another folder" in runs["moved"].stdout
    first_line = (repo / ".venv" / "bin" / "pip").read_text().splitlines()[0]
    assert str(repo / ".venv" / "bin") in first_line


@needs_make
def test_torch_cpu_installs_torch_from_the_cpu_index_before_the_lock(tmp_path):
    repo = copy_sources(tmp_path / "checkout", ["Makefile", "pyproject.toml", "requirements-lock.txt"])
    plan = make(repo, "-n", ".venv/ready", "TORCH=cpu").stdout.splitlines()
    torch_step = next(i for i, line in enumerate(plan) if "--index-url https://download.pytorch.org/whl/cpu" in line)
    assert plan[torch_step].endswith(
        f"install --no-deps --index-url https://download.pytorch.org/whl/cpu {lock_pin('torch')}"
    )
    assert torch_step < next(i for i, line in enumerate(plan) if "-r requirements-lock.txt" in line)
    default = make(repo, "-n", ".venv/ready").stdout
    assert "download.pytorch.org" not in default
    wrong = make(repo, "-n", "help", "TORCH=gpu")
    assert wrong.returncode != 0 and "the only choice is TORCH=cpu" in wrong.stdout


@needs_make
def test_make_lab_opens_the_repository_root_with_the_notebooks_shown(tmp_path):
    repo = copy_sources(tmp_path / "checkout", ["Makefile", "pyproject.toml", "requirements-lock.txt"])
    (repo / ".venv" / "bin").mkdir(parents=True)  # a .venv made here and ready: nothing to install
    (repo / ".venv" / "bin" / "pip").write_text(f"#!{repo}/.venv/bin/python\n")
    (repo / ".venv" / "ready").touch()
    plan = make(repo, "-n", "lab").stdout
    [command] = [line for line in plan.splitlines() if "jupyter lab" in line]
    assert "--LabApp.default_url=/lab/tree/notebooks" in command
    assert "--notebook-dir" not in command and "root_dir" not in command  # served from the repository root
    assert "tools.nbtools gitfilter" in plan and "pip install" not in plan


@needs_make
def test_a_too_old_python_is_refused_with_the_version_needed(tmp_path):
    old = sorted(Path.home().glob(".pyenv/versions/3.10*/bin/python3.10")) or [shutil.which("python3.10")]
    if not old[0] or subprocess.run([old[0], "-V"], capture_output=True).returncode != 0:
        pytest.skip("no Python 3.10 here")
    repo = copy_sources(tmp_path / "checkout", ["Makefile", "pyproject.toml", "requirements-lock.txt"])
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAKE")}
    run = subprocess.run(
        [MAKE, ".venv/ready", f"PYTHON={old[0]}"], cwd=repo, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode != 0
    assert "needs Python 3.11.5 or newer" in run.stdout and "Python 3.10" in run.stdout
    assert not (repo / ".venv").exists()


# -- pip install . ---------------------------------------------------------------------------------


def test_a_non_editable_install_runs_lesson_09s_loading_code_from_another_directory(tmp_path):
    source = copy_sources(tmp_path / "source", ["pyproject.toml", "README.md", "lora_basics", "lora_course", "data"])
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            site,
            source,
        ],
        check=True,
        timeout=300,
    )
    # The lesson's cells up to the one that loads the model: the install cell, the imports, the loading.
    nb = nbformat.read(ROOT / "notebooks" / "09_finetune_tiny_gpt.ipynb", as_version=4)
    cells = []
    for cell in (cell for cell in nb.cells if cell.cell_type == "code"):
        cells.append(cell.source)
        if "load_pretrained()" in cell.source:
            break
    script = "\n\n".join(cells) + "\n\nimport lora_course\nprint('course at', lora_course.__file__)\n"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the editable install of this checkout
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert f"course at {site}" in run.stdout  # the installed copy ran, not this checkout
    assert "parameters: 508,320" in run.stdout
    assert (site / "lora_course" / "data" / "tiny_gpt.pt").is_file()


# -- git and JupyterLab ----------------------------------------------------------------------------


def as_jupyterlab_saves(path: Path, version: str) -> None:
    """Rewrite the notebook at ``path`` as JupyterLab saves it after merely opening it with a kernel on
    Python ``version`` (observed with JupyterLab 4.6: ``language_info.version`` is set, nothing else changes;
    a notebook that already holds the kernel's version is not saved at all)."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata["language_info"]["version"] = version
    nbformat.write(nb, path)


@needs_make
def test_a_lesson_opened_in_jupyterlab_is_not_a_change_for_git(tmp_path):
    repo = copy_sources(tmp_path / "checkout", ["Makefile", ".gitattributes", "tools", "lora_course"])
    (repo / "notebooks" / "exercises").mkdir(parents=True)
    lessons = ["02_lora_linear_from_scratch.ipynb", "04_loralib_style_linear.ipynb"]
    for name in lessons:
        shutil.copy2(ROOT / "notebooks" / name, repo / "notebooks" / name)
    shutil.copy2(ROOT / "notebooks" / "exercises" / lessons[1], repo / "notebooks" / "exercises" / lessons[1])
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "start"]):
        subprocess.run([*git, *command], cwd=repo, check=True)

    def status() -> str:
        return subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout

    this_python = sys.version.split()[0]
    opened_before, opened_after = (repo / "notebooks" / name for name in lessons)
    as_jupyterlab_saves(opened_before, this_python)
    assert opened_before.name in status()  # without the filter, opening a lesson modifies it
    assert make(repo, "gitfilter").returncode == 0
    assert status() == ""  # the lesson opened before is clean now, and the other holds this Python's version
    assert f'"version": "{this_python}"' in opened_after.read_text()
    as_jupyterlab_saves(opened_after, this_python)  # what JupyterLab would write (it finds nothing to save)
    assert status() == ""
    nb = nbformat.read(opened_after, as_version=4)
    nb.cells[0].source += "\nA real edit."
    nbformat.write(nb, opened_after)
    assert status() == f" M notebooks/{opened_after.name}\n"  # the filter hides nothing else
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    staged = subprocess.run(["git", "show", f":notebooks/{opened_after.name}"], cwd=repo, capture_output=True)
    assert (
        b"A real edit." in staged.stdout and f'"version": "{this_python}"'.encode() not in staged.stdout
    )  # commits hold no version


NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in NOTEBOOKS])
def test_the_filter_writes_what_jupyterlab_writes_and_stores_what_was_committed(path, tmp_path):
    committed = nbtools.strip(path.read_text())  # this checkout may hold its Python's version already
    assert '"version": "3.' not in committed
    saved = tmp_path / path.name
    saved.write_text(committed)
    as_jupyterlab_saves(saved, "3.11.10")
    assert nbtools.smudge(committed, "3.11.10") == saved.read_text()
    assert nbtools.strip(saved.read_text()) == committed


def test_the_filter_passes_anything_else_unchanged():
    for text in ("not json", '{"metadata": {}}', '{"cells": []}\n', "[1, 2]"):
        assert nbtools.strip(text) == text
        assert nbtools.smudge(text, "3.11.7") == text
