"""Every committed notebook was executed top to bottom, holds no stray errors, paths, addresses,
timings or metadata (the rules of CONVENTIONS.md section 1), and follows the lesson layout."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from tools import nbtools

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
LESSONS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


def ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_hygiene(path):
    if "exercises" in path.parts and "solutions" not in path.parts:
        pytest.skip("student copies are committed without outputs (tests/course/test_handout.py checks them)")
    assert nbtools.problems(path) == []


@pytest.mark.parametrize("path", LESSONS, ids=ids(LESSONS))
def test_lesson_layout(path):
    nb = nbformat.read(path, as_version=4)
    markdown = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    for heading in ("## Summary", "## Exercises"):
        assert heading in markdown, f"{path.name} has no {heading!r} section"
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert "setup(" in code, "seed everything with lora_course.notebook.setup() in the first code cell"
    assert "assert_close" in code, "a lesson checks its hand-built piece against lora_basics"


def test_problems_catches_what_it_should(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["widgets"] = {}
    cells = [nbformat.v4.new_code_cell("1"), nbformat.v4.new_code_cell("2"), nbformat.v4.new_code_cell("3")]
    cells[0].execution_count, cells[1].execution_count, cells[2].execution_count = 2, 1, 3
    cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="saved to /root/x\n")]
    cells[1].outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue="bad", traceback=[])]
    cells[2].outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "<Line2D at 0x7f00deadbeef>"})]
    cells[2].metadata["collapsed"] = True
    nb.cells = cells
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, path)
    found = "\n".join(nbtools.problems(path))
    for expected in ("widgets", "execution counts", "machine path", "ValueError", "collapsed"):
        assert expected in found
    assert "memory address" not in found  # sanitized, as nbval does: 0x... -> 0xADDRESS


def test_progress_bars_are_allowed_but_rates_elsewhere_are_not(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell("train()")
    cell.execution_count = 1
    cell.outputs = [
        nbformat.v4.new_output(
            "stream", name="stderr", text="\rtrain: 100%|##########| 300/300 [00:01<00:00, 250.1it/s]"
        ),
        nbformat.v4.new_output("stream", name="stdout", text="step took 12.5 ms\n"),
    ]
    nb.cells = [cell]
    path = tmp_path / "bars.ipynb"
    nbformat.write(nb, path)
    assert [p for p in nbtools.problems(path) if "timing" in p] == ["cell 0 output shows a timing: '12.5 ms'"]
