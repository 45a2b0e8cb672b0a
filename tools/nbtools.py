"""Developer tools for the notebooks: execute them in place, and check their hygiene.

    python -m tools.nbtools run notebooks/01_why_low_rank.ipynb ...   (make notebooks)
    python -m tools.nbtools check notebooks/*.ipynb

A committed notebook must be executed top to bottom in a fresh kernel (execution counts 1..N),
hold no error output unless the cell is tagged ``raises-exception``, show no machine path, memory
address or timing in a compared output, and keep no metadata beyond the kernelspec, language_info,
cell tags and (exercise notebooks) nbgrader's cell marks. ``run`` produces exactly that; ``check`` (and the repository tests) enforce it.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from lora_course.notebook import CELL_METADATA, KERNEL, NOTEBOOK_METADATA, clean

IGNORE_OUTPUT_TAG = "nbval-ignore-output"
#: What must never show in an output that nbval compares.
FORBIDDEN = {
    "a machine path": re.compile(r"(/(root|home|tmp|work|Users)/)|([A-Z]:\\\\)"),
    "a memory address": re.compile(r"\bat 0x[0-9a-fA-F]{6,}"),
    "a timing": re.compile(r"\b\d+(\.\d+)?\s?(ms|µs|us|it/s|s/it|sec|seconds)\b"),
}
SANITIZE_FILE = Path(__file__).resolve().parent.parent / "notebooks" / "sanitize.cfg"


def sanitize_patterns(path: Path = SANITIZE_FILE) -> list[tuple[str, str]]:
    """The (regex, replacement) pairs of the repo's sanitize file, read as nbval reads them."""
    return re.findall(r"^regex: (.*)$\n^replace: (.*)$", path.read_text(), flags=re.MULTILINE)


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
    clean(nb)
    nbformat.write(nb, path)
    return seconds


def problems(path: Path) -> list[str]:
    """Everything wrong with the committed notebook at ``path`` (empty list: clean)."""
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
        for output in cell.get("outputs", []):
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
        # As nbval does: keep only what the last carriage return of each line left visible.
        return re.sub(r"^.*\r(?=[^\n])", "", output.text, flags=re.MULTILINE)
    if output.output_type == "error":
        return f"{output.ename}: {output.evalue}"
    return str(output.get("data", {}).get("text/plain", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "check"])
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)
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
