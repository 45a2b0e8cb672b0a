"""Developer tools for the notebooks: execute them in place, check their hygiene, and keep them portable.

    python -m tools.nbtools run notebooks/01_why_low_rank.ipynb ...   (make notebooks)
    python -m tools.nbtools check notebooks/*.ipynb
    python -m tools.nbtools bootstrap notebooks/[0-9]*.ipynb notebooks/exercises/solutions/*.ipynb
    python -m tools.nbtools html --out html notebooks/[0-9]*.ipynb     (make html)
    python -m tools.nbtools gitfilter                                  (make gitfilter, make lab)

A committed notebook must be executed top to bottom in a fresh kernel (execution counts 1..N),
hold no error output unless the cell is tagged ``raises-exception``, show no machine path, memory
address or timing in a compared output, store only the final state of a progress bar, and keep no
metadata beyond the kernelspec, language_info, cell tags and (exercise notebooks) nbgrader's cell marks. ``run`` produces exactly that;
``check`` (and the repository tests) enforce it.

``bootstrap`` makes the first code cell of each notebook the *install cell*: where the course is not
installed (Colab, a notebook downloaded on its own) it pip-installs it from the repository URL of
pyproject.toml; in a checkout it does nothing. Re-run it after changing that URL or the cell's text.

``gitfilter`` configures the git filter of .gitattributes: git stores a notebook without the
``language_info.version`` that JupyterLab writes (``strip``), and the checkout holds it with the version
of the learner's Python (``smudge``), so opening a lesson in JupyterLab does not modify it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

from lora_course.notebook import CELL_METADATA, KERNEL, NOTEBOOK_METADATA, clean

ROOT = Path(__file__).resolve().parent.parent
IGNORE_OUTPUT_TAG = "nbval-ignore-output"
#: What must never show in an output that nbval compares.
FORBIDDEN = {
    "a machine path": re.compile(r"(/(root|home|tmp|work|Users)/)|([A-Z]:\\\\)"),
    "a memory address": re.compile(r"\bat 0x[0-9a-fA-F]{6,}"),
    "a timing": re.compile(r"\b\d+(\.\d+)?\s?(ms|µs|us|it/s|s/it|sec|seconds)\b"),
}
SANITIZE_FILE = ROOT / "notebooks" / "sanitize.cfg"
PYPROJECT = ROOT / "pyproject.toml"
#: Text before a carriage return that more text on the same line overwrites (nbval's rule, see visible_text).
OVERWRITTEN = re.compile(r"^.*\r(?=[^\n])", flags=re.MULTILINE)
#: A carriage return that overwrites something: a progress bar's intermediate state is stored before it.
OVERWRITING = re.compile(r"[^\r\n]\r(?=[^\n])")


def sanitize_patterns(path: Path = SANITIZE_FILE) -> list[tuple[str, str]]:
    """The (regex, replacement) pairs of the repo's sanitize file, read as nbval reads them."""
    return re.findall(r"^regex: (.*)$\n^replace: (.*)$", path.read_text(), flags=re.MULTILINE)


# -- run: execute in place, store what a terminal would show -----------------------------------------


def visible_text(text: str) -> str:
    """``text`` as a terminal leaves it: of each line, only what its last carriage return did not overwrite.

    tqdm redraws a bar by writing ``"\\r" + bar`` on every update, so a bar's updates read
    ``"\\rtrain: 8%|...\\rtrain: 16%|...\\rtrain: 100%|...\\n"``; what stays visible is the final state.
    This is nbval's rule (``\\r`` followed by a newline is a Windows line end and stays).
    """
    return OVERWRITTEN.sub("", text)


def merge_streams(outputs: list) -> list:
    """``outputs`` with each run of adjacent stream outputs of one name (stdout, stderr) joined into one output
    (new objects; the text is unchanged). A viewer shows such a run as one block of text."""
    import nbformat

    merged: list = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if output.output_type != "stream":
            merged.append(output)
        elif previous is not None and previous.output_type == "stream" and previous.name == output.name:
            previous.text += output.text
        else:
            merged.append(nbformat.v4.new_output("stream", name=output.name, text=output.text))
    return merged


def compact_streams(outputs: list) -> list:
    """``outputs`` as stored: adjacent stream outputs merged (:func:`merge_streams`), each keeping only its
    :func:`visible_text`.

    The kernel sends every redraw of a progress bar as an output of its own; JupyterLab shows the
    learner the live bar, but a stored notebook with all of them shows a wall of bars in static views
    (GitHub, nbconvert). nbval compares both forms alike: it merges the streams of a cell and drops
    overwritten text itself before comparing.
    """
    compacted = merge_streams(outputs)
    for output in compacted:
        if output.output_type == "stream":
            output.text = visible_text(output.text)
    return compacted


def run(path: Path, timeout: int = 600) -> float:
    """Execute ``path`` in a fresh kernel, top to bottom, in ``notebooks/``; save it cleaned. Returns seconds."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=KERNEL,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    seconds = time.perf_counter() - start
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = compact_streams(cell.outputs)
    clean(nb)
    nbformat.write(nb, path)
    return seconds


# -- check: the hygiene of a committed notebook ------------------------------------------------------


def problems(path: Path) -> list[str]:
    """Everything wrong with the committed notebook at ``path`` (empty list: clean).

    A notebook as JupyterLab saves it after a learner merely opened it (``language_info.version``
    added) has no problem: that key is allowed, and the git filter ``strip`` keeps it out of commits.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    found = []
    patterns = sanitize_patterns()
    extra = set(nb.metadata) - set(NOTEBOOK_METADATA)
    if extra:
        found.append(f"notebook metadata has {sorted(extra)} beyond {list(NOTEBOOK_METADATA)}")
    if nb.metadata.get("kernelspec", {}).get("name") != KERNEL:
        found.append(f"kernel name is not {KERNEL!r}")
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code" and cell.source.strip()]
    counts = [cell.execution_count for cell in code_cells]
    if counts != list(range(1, len(counts) + 1)):
        found.append(f"execution counts are {counts}, not 1..{len(counts)}: run `make notebooks`")
    for index, cell in enumerate(nb.cells):
        extra = set(cell.metadata) - set(CELL_METADATA)
        if extra:
            found.append(f"cell {index} metadata has {sorted(extra)} beyond {list(CELL_METADATA)}")
        tags = cell.metadata.get("tags", [])
        outputs = cell.get("outputs", [])
        streams = [output for output in merge_streams(outputs) if output.output_type == "stream"]
        overwritten = sum(len(OVERWRITING.findall(output.text)) for output in streams)
        if overwritten:
            found.append(
                f"cell {index} stores {overwritten} overwritten states of a progress bar (text a carriage return "
                "overwrote): store only the final state with `make notebooks`"
            )
        for output in outputs:
            if output.output_type == "error" and "raises-exception" not in tags:
                found.append(f"cell {index} has an error output ({output.ename}) but no raises-exception tag")
            if IGNORE_OUTPUT_TAG in tags:
                continue
            text = _output_text(output)
            for regex, replacement in patterns:
                text = re.sub(regex, replacement, text)
            for what, pattern in FORBIDDEN.items():
                if pattern.search(text):
                    found.append(f"cell {index} output shows {what}: {pattern.search(text).group(0)!r}")
    return found


def _output_text(output) -> str:
    if output.output_type == "stream":
        return visible_text(output.text)  # as nbval compares it
    if output.output_type == "error":
        return f"{output.ename}: {output.evalue}"
    return str(output.get("data", {}).get("text/plain", ""))


# -- bootstrap: the install cell of every notebook ----------------------------------------------------

#: The install cell's id: ``bootstrap`` finds (and updates) the cell by it.
BOOTSTRAP_ID = "install-course"
BOOTSTRAP_TEMPLATE = """\
# Outside a checkout (Colab, a notebook downloaded on its own) the course is not installed: install
# it from its repository (lora_basics, lora_course with its data, what the notebooks import).
# In a checkout set up by `make lab` (or the conda environment) this cell does nothing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("lora_basics") is None:
    course = "lora-basics[course] @ git+{url}"
    print(f"Installing {{course}} (about a minute)", flush=True)
    pip = [sys.executable, "-m", "pip", "install", course]
    done = subprocess.run(pip, capture_output=True, text=True)
    print(done.stdout[-2000:], done.stderr[-2000:])  # the end of pip's report
    done.check_returncode()
    importlib.invalidate_caches()"""


def repository_url(pyproject: Path = PYPROJECT) -> str:
    """The repository URL, written once in pyproject.toml's ``[project.urls]`` (``Repository``)."""
    import tomllib

    return tomllib.loads(pyproject.read_text())["project"]["urls"]["Repository"]


def bootstrap_source(pyproject: Path = PYPROJECT) -> str:
    """The current text of the install cell (for the repository URL of ``pyproject``)."""
    return BOOTSTRAP_TEMPLATE.format(url=repository_url(pyproject))


def bootstrap(path: Path, source: str | None = None) -> bool:
    """Make the first code cell of the notebook at ``path`` the install cell. Returns whether the file changed.

    Idempotent: an existing install cell (found by its id) gets the current text; otherwise one is
    inserted before the first code cell. Outputs of other cells are kept; the new cell has none
    (re-execute with ``make notebooks`` for execution counts 1..N).
    """
    import nbformat

    source = bootstrap_source() if source is None else source
    nb = nbformat.read(path, as_version=4)
    code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    existing = [i for i in code if nb.cells[i].get("id") == BOOTSTRAP_ID]
    if existing and existing[0] == code[0]:
        cell = nb.cells[code[0]]
        if cell.source == source:
            return False
        cell.source = source
    else:
        for i in reversed(existing):  # an install cell that is no longer first: move it up
            del nb.cells[i]
        cell = nbformat.v4.new_code_cell(source)
        cell.id = BOOTSTRAP_ID
        first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
        nb.cells.insert(first_code, cell)
    nbformat.write(nb, path)
    return True


# -- html: a static render that shows the maths offline -----------------------------------------------

#: MathJax 2 configuration files: nbconvert's usual one, then ours (below).
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe,stix-web"
#: jupyter-server-mathjax ships only the STIX-Web fonts, not MathJax's default TeX web fonts: without this,
#: MathJax falls back to whatever serif font the system has (blackboard R shows as a plain R).
STIX_WEB_CONFIG = """\
MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null}});
MathJax.Ajax.loadComplete("[MathJax]/config/stix-web.js");
"""


def html(paths: list[Path], out_dir: Path) -> list[Path]:
    """Render each notebook to ``out_dir/<name>.html``, with maths typeset without a network.

    nbconvert loads MathJax from a CDN by default, so offline a reader sees raw ``$...$``. Here
    MathJax 2.7 comes from the installed package jupyter-server-mathjax (the one Jupyter servers
    use), copied next to the pages as ``out_dir/mathjax/``: the folder can be moved or zipped whole.
    """
    import jupyter_server_mathjax
    from nbconvert import HTMLExporter

    mathjax = out_dir / "mathjax"
    shutil.copytree(Path(jupyter_server_mathjax.__file__).parent / "static", mathjax, dirs_exist_ok=True)
    (mathjax / "config" / "stix-web.js").write_text(STIX_WEB_CONFIG)
    exporter = HTMLExporter(mathjax_url=f"mathjax/MathJax.js?config={MATHJAX_CONFIG}")
    written = []
    for path in paths:
        body, _ = exporter.from_filename(str(path))
        target = out_dir / f"{path.stem}.html"
        target.write_text(body, encoding="utf-8")
        written.append(target)
    return written


# -- the git filter: what git stores, what the checkout holds --------------------------------------

FILTER = "nbstrip"  # the name .gitattributes gives it


def strip(text: str) -> str:
    """The notebook file ``text`` as committed: without the ``language_info.version`` JupyterLab writes.

    JupyterLab writes the kernel's Python version into a notebook's metadata when it opens it, and
    saves: a learner who merely read a lesson would see it modified, with a version that differs from
    machine to machine. The rest is written as JupyterLab (nbformat) writes it: JSON, keys sorted,
    indent 1, a final newline. Anything else (not a notebook, no version) passes unchanged.
    """
    nb = _notebook(text)
    if nb is None or "version" not in nb["metadata"]["language_info"]:
        return text
    del nb["metadata"]["language_info"]["version"]
    return _dumps(nb)


def smudge(text: str, version: str) -> str:
    """The committed notebook ``text`` as the checkout holds it: with the ``language_info.version`` that
    JupyterLab would write for a kernel on Python ``version``, so that opening the notebook changes nothing.

    (Only :func:`strip` would not do: git takes a file whose size changed for modified without reading it,
    so ``git status`` would still list a lesson JupyterLab saved.) Anything else passes unchanged.
    """
    nb = _notebook(text)
    if nb is None or nb["metadata"]["language_info"].get("version") == version:
        return text
    nb["metadata"]["language_info"]["version"] = version
    return _dumps(nb)


def _notebook(text: str) -> dict | None:
    """The notebook JSON of ``text`` if it is one with a ``language_info`` (else None)."""
    try:
        nb = json.loads(text)
        return nb if isinstance(nb["metadata"]["language_info"], dict) else None
    except (ValueError, KeyError, TypeError):
        return None


def _dumps(nb: dict) -> str:
    """``nb`` serialised as nbformat (and so JupyterLab) writes a notebook file."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def configure_git_filter(cwd: Path | None = None) -> list[str]:
    """Tell git how to run the filter of .gitattributes in the checkout at ``cwd``, for kernels on this Python.

    git then stores notebooks through :func:`strip` and checks them out through :func:`smudge`. The
    notebooks already checked out get their version now, where they hold no change of their own (their
    index entries are refreshed with ``git add``, which stages nothing). Returns the notebooks rewritten;
    outside a git checkout (a downloaded archive) does nothing.
    """
    import shlex
    import subprocess

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)

    if git("rev-parse", "--is-inside-work-tree").returncode != 0:
        return []
    version = sys.version.split()[0]
    command = f"{shlex.quote(sys.executable)} -m tools.nbtools"
    git("config", f"filter.{FILTER}.clean", f"{command} strip")
    git("config", f"filter.{FILTER}.smudge", f"{command} smudge --python {version}")
    top = Path(git("rev-parse", "--show-toplevel").stdout.strip())
    listed = git("ls-files", "-z", "--", f":(attr:filter={FILTER})*.ipynb").stdout.split("\0")
    unchanged, rewritten = [], []
    for name in filter(None, listed):
        if git("diff", "--quiet", "--", name).returncode != 0:
            continue  # the learner's own changes: left as they are
        unchanged.append(name)
        path = top / name
        text = path.read_text(encoding="utf-8")
        if smudge(text, version) != text:
            path.write_text(smudge(text, version), encoding="utf-8")
            rewritten.append(name)
    if unchanged:  # also refreshes notebooks JupyterLab saved before: git took them for modified (size changed)
        git("add", "--", *unchanged)
    return rewritten


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "check", "bootstrap", "html", "strip", "smudge", "gitfilter"])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=Path("html"), help="html: the output folder (default: html)")
    parser.add_argument("--python", help="smudge: the Python version to write (the kernel's)")
    args = parser.parse_intermixed_args(argv)
    if args.command in ("strip", "smudge"):  # stdin -> stdout, as git runs a filter; notebooks are UTF-8
        data = sys.stdin.buffer.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None  # not a notebook: unchanged
        if text is not None:
            data = (strip(text) if args.command == "strip" else smudge(text, args.python)).encode("utf-8")
        sys.stdout.buffer.write(data)
        return 0
    if args.command == "gitfilter":
        rewritten = configure_git_filter()
        print(f"git filter {FILTER} configured; {len(rewritten)} notebooks given this Python's version")
        return 0
    if not args.notebooks:
        parser.error(f"{args.command} needs at least one notebook")
    if args.command == "bootstrap":
        for path in args.notebooks:
            print(f"{path}: {'install cell written' if bootstrap(path) else 'up to date'}")
        return 0
    if args.command == "html":
        for target in html(args.notebooks, args.out):
            print(target)
        return 0
    failed = 0
    for i, path in enumerate(args.notebooks, 1):
        if args.command == "run":
            seconds = run(path)
            print(f"[{i}/{len(args.notebooks)}] {path}: {seconds:.1f} s", flush=True)
        for problem in problems(path):
            print(f"{path}: {problem}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
