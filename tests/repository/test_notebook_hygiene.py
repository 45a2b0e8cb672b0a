"""Every committed notebook was executed top to bottom, holds no stray errors, paths, addresses,
timings, intermediate progress-bar states or metadata (CONTRIBUTING.md section 3), follows the lesson
layout, and starts with the install cell (Colab, downloaded notebooks); the static HTML render needs no
network for its maths."""

from __future__ import annotations

import re
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


# -- progress bars: live for the learner, stored as their final state --------------------------------


def bar_outputs(total: int = 4) -> list:
    """A tqdm bar as the kernel sends it (one stream output per redraw), a print between two bars."""
    redraws = [f"\rtrain: {100 * i // total}%|{'#' * i}{' ' * (total - i)}| {i}/{total}" for i in range(total + 1)]
    return [
        *(nbformat.v4.new_output("stream", name="stderr", text=text) for text in redraws),
        nbformat.v4.new_output("stream", name="stderr", text="\n"),
        nbformat.v4.new_output("stream", name="stdout", text="loss 0.1234\n"),
        nbformat.v4.new_output("stream", name="stderr", text="\reval: 0%|    | 0/4\reval: 100%|####| 4/4\n"),
    ]


def test_a_progress_bar_is_stored_as_its_final_state():
    compacted = nbtools.compact_streams(bar_outputs())
    assert [(o.name, o.text) for o in compacted] == [
        ("stderr", "train: 100%|####| 4/4\n"),
        ("stdout", "loss 0.1234\n"),
        ("stderr", "eval: 100%|####| 4/4\n"),
    ]


def test_nbval_sees_the_compacted_outputs_as_the_live_ones():
    from nbval.plugin import coalesce_streams

    live, stored = coalesce_streams(bar_outputs()), coalesce_streams(nbtools.compact_streams(bar_outputs()))
    assert [(o.name, o.text) for o in live] == [(o.name, o.text) for o in stored]


def test_problems_flags_the_intermediate_states_of_a_progress_bar(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell("train()")
    cell.execution_count = 1
    cell.outputs = bar_outputs()
    nb.cells = [cell]
    path = tmp_path / "bars.ipynb"
    nbformat.write(nb, path)
    assert nbtools.problems(path) == [
        "cell 0 stores 5 overwritten states of a progress bar (text a carriage return overwrote): "
        "store only the final state with `make notebooks`"
    ]
    cell.outputs = nbtools.compact_streams(cell.outputs)
    nbformat.write(nb, path)
    assert nbtools.problems(path) == []


def test_a_notebook_jupyterlab_saved_has_no_problem(tmp_path):
    # JupyterLab writes the kernel's Python version into language_info; the git filter keeps it out of commits.
    nb = nbformat.read(LESSONS[0], as_version=4)
    nb.metadata["language_info"]["version"] = "3.12.4"
    path = tmp_path / LESSONS[0].name
    nbformat.write(nb, path)
    assert nbtools.problems(path) == nbtools.problems(LESSONS[0])


# -- the install cell: Colab and downloaded notebooks -----------------------------------------------

SOLUTIONS = sorted((ROOT / "notebooks" / "exercises" / "solutions").glob("[0-9]*.ipynb"))


@pytest.mark.parametrize("path", LESSONS + SOLUTIONS, ids=ids(LESSONS + SOLUTIONS))
def test_the_first_code_cell_is_the_current_install_cell(path):
    nb = nbformat.read(path, as_version=4)
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert first.get("id") == nbtools.BOOTSTRAP_ID, "run `python -m tools.nbtools bootstrap` on it"
    assert first.source == nbtools.bootstrap_source(), "run `python -m tools.nbtools bootstrap` on it"
    assert first.outputs == [], "in a checkout the install cell does nothing"


def run_install_cell(monkeypatch, installed: bool) -> list:
    """Execute the install cell with lora_basics importable or not; return the commands it ran."""
    import importlib.util
    import subprocess

    ran = []

    def fake_run(command, **kwargs):
        ran.append(command)
        return subprocess.CompletedProcess(command, 0, stdout="Successfully installed lora-basics", stderr="")

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: real_find_spec(name) if installed or name != "lora_basics" else None
    )
    exec(compile(nbtools.bootstrap_source(), "install cell", "exec"), {})  # noqa: S102
    return ran


def test_the_install_cell_does_nothing_where_the_course_is_installed(monkeypatch, capsys):
    assert run_install_cell(monkeypatch, installed=True) == []
    assert capsys.readouterr().out == ""


def test_the_install_cell_installs_the_course_from_the_repository_url_elsewhere(monkeypatch):
    import sys
    import tomllib

    url = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    assert url.startswith("https://") and "example" not in url
    assert run_install_cell(monkeypatch, installed=False) == [
        [sys.executable, "-m", "pip", "install", f"lora-basics[course] @ git+{url}"]
    ]


def test_the_course_extra_holds_every_package_the_notebooks_import():
    # What the install cell installs on Colab must cover every import of every notebook.
    import ast
    import importlib.metadata
    import sys
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    provided = {"torch", "lora_basics", "lora_course", *sys.stdlib_module_names}
    distributions = importlib.metadata.packages_distributions()
    needed = set()
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            for node in ast.walk(ast.parse(cell.source)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                needed |= {name.split(".")[0] for name in names} - provided
    needed_distributions = {distributions[module][0].lower() for module in needed}
    assert needed_distributions and needed_distributions <= {
        name.lower() for name in project["optional-dependencies"]["course"]
    }


def test_bootstrap_inserts_the_cell_once_and_updates_it_in_place(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("setup()")]
    path = tmp_path / "lesson.ipynb"
    nbformat.write(nb, path)
    assert nbtools.bootstrap(path, "# install v1") is True
    first = path.read_text()
    assert nbtools.bootstrap(path, "# install v1") is False and path.read_text() == first
    assert nbtools.bootstrap(path, "# install v2") is True
    cells = nbformat.read(path, as_version=4).cells
    assert [c.source for c in cells] == ["# Title", "# install v2", "setup()"]
    assert cells[1].id == nbtools.BOOTSTRAP_ID


def test_bootstrap_writes_the_url_of_pyproject(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\n[project.urls]\nRepository = "https://example.org/course"\n')
    assert "git+https://example.org/course" in nbtools.bootstrap_source(pyproject)


# -- static views ----------------------------------------------------------------------------


def test_the_html_render_typesets_maths_without_a_network(tmp_path):
    [page] = nbtools.html([LESSONS[1]], tmp_path)
    text = page.read_text()
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', text)
    mathjax = [src for src in scripts if "MathJax.js" in src]
    assert mathjax == [f"mathjax/MathJax.js?config={nbtools.MATHJAX_CONFIG}"]
    assert (tmp_path / "mathjax" / "MathJax.js").is_file()
    for name in nbtools.MATHJAX_CONFIG.split(","):
        assert (tmp_path / "mathjax" / "config" / f"{name}.js").is_file()
    assert (tmp_path / "mathjax" / "fonts" / "HTML-CSS" / "STIX-Web" / "woff").is_dir()
