"""The student hand-out: everything a learner needs to run the lessons and the exercises, and no answers.

    python -m lora_course.handout handout.zip        (make handout)

The zip holds one folder, ``lora-basics-handout/``, with:

- ``notebooks/NN_*.ipynb``: the lessons; ``notebooks/exercises/NN_*.ipynb``: the student copies (refused if they
  are stale: run ``make exercises`` first);
- ``lora_basics/`` and ``lora_course/`` (the library, the checkers, ``setup()``, the tiny GPT) and ``data/`` (its
  pretrained weights), so that the check cells run;
- ``pyproject.toml``, ``requirements-lock.txt``, ``environment.yml`` and the ``Makefile``, so that ``make lab``
  sets everything up, and a ``README.md`` for learners.

It leaves out what would give answers away: ``notebooks/exercises/solutions/`` (the instructor notebooks), the
instructor guide, ``tests/`` (they run the solutions and list wrong answers), the maintainer tools and the git
history (which holds the solutions). Entries are sorted and dated 1980-01-01, so the same sources give the same
zip.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

from .exercises import ROOT, generate

FOLDER = "lora-basics-handout"
FILES = ["pyproject.toml", "requirements-lock.txt", "environment.yml", "Makefile"]
TREES = {"lora_basics": "*.py", "lora_course": "*.py", "data": "*"}
NOTEBOOKS = ["notebooks/[0-9]*.ipynb", "notebooks/exercises/[0-9]*.ipynb"]

README = """# lora-basics: the hand-out

LoRA (low-rank adaptation) from scratch: lessons in `notebooks/`, exercises in `notebooks/exercises/`.

## Set up

```bash
make lab    # creates .venv from requirements-lock.txt (first run only), then opens JupyterLab on notebooks/
```

You need Python >= 3.10 with `venv`. With conda instead: `conda env create -f environment.yml`, then
`conda activate lora-basics`, `pip install --no-deps -e .` and `jupyter lab notebooks/`.

## Work on the exercises

Each lesson `notebooks/NN_name.ipynb` ends with exercises in `notebooks/exercises/NN_name.ipynb`. In each
exercise cell, replace `raise NotImplementedError(...)` with your code, run the cell, then run the check cell
below it: it prints `✓ ...`, or what it expected, what came back and a hint.

When you hand in a notebook, only its **exercise cells** (those whose first line is `# Exercise N.M: name`) are
graded: put everything your answer needs inside them, and keep their first line and the names of the functions
as they are. The other cells are replaced by the hand-out's before grading, and cells you add are not run.
"""


def handout_files(root: Path = ROOT) -> dict[str, Path]:
    """What goes into the hand-out: ``{path inside the folder: file}``."""
    files = {name: root / name for name in FILES}
    for tree, pattern in TREES.items():
        for path in sorted((root / tree).rglob(pattern)):
            if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(".pyc"):
                files[str(path.relative_to(root))] = path
    for pattern in NOTEBOOKS:
        for path in sorted(root.glob(pattern)):
            files[str(path.relative_to(root))] = path
    return files


def build(target: Path, root: Path = ROOT) -> list[str]:
    """Write the hand-out zip to ``target``; return the paths it holds. Refuses stale student copies."""
    stale = generate(check=True)
    if stale:
        raise ValueError(f"the student copies are not up to date ({'; '.join(stale)}): run `make exercises` first")
    files = handout_files(root)
    names = sorted([*files, "README.md"])
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            info = zipfile.ZipInfo(f"{FOLDER}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            data = README.encode() if name == "README.md" else files[name].read_bytes()
            archive.writestr(info, data)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", type=Path, nargs="?", default=Path("handout.zip"), help="the zip to write")
    args = parser.parse_args(argv)
    try:
        names = build(args.target)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    exercises = sum(name.startswith("notebooks/exercises/") for name in names)
    print(f"wrote {args.target}: {len(names)} files, {exercises} exercise notebooks, no solutions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
