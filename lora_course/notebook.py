"""`setup()`: the first line of every notebook, so that every run prints the same numbers; and `clean()`:
what a committed notebook keeps of its metadata (used by ``make notebooks`` and ``make exercises``)."""

from __future__ import annotations

import os
import random

THREADS_VARIABLE = "LORA_BASICS_THREADS"


def setup(seed: int = 0) -> None:
    """Seed python, numpy and torch, and pin torch's thread count.

    The thread count comes from the environment variable ``LORA_BASICS_THREADS`` (``make test``
    and ``make notebooks`` set it, default 2), so a run can be repeated with ``=1`` to check that
    printed numbers do not depend on it. Unset, torch keeps its own default.
    """
    # Imported here rather than at the top: clean() and the constants below also serve tools that must start
    # fast without torch (the git filter of .gitattributes runs `python -m tools.nbtools strip`).
    import torch

    threads = os.environ.get(THREADS_VARIABLE)
    if threads:
        if not threads.isdigit() or int(threads) < 1:
            raise ValueError(f"{THREADS_VARIABLE} must be a positive integer, got {threads!r}")
        torch.set_num_threads(int(threads))
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


KERNEL = "python3"
#: The only notebook-level metadata a committed notebook keeps (the rest changes from machine to machine).
NOTEBOOK_METADATA = ("kernelspec", "language_info")
#: The only cell-level metadata it keeps: tags, and nbgrader's marks on the exercise notebooks' cells.
CELL_METADATA = ("tags", "nbgrader")


def clean(nb) -> None:
    """Strip metadata that changes from run to run or machine to machine (``nb`` changed in place)."""
    nb.metadata = {key: nb.metadata[key] for key in NOTEBOOK_METADATA if key in nb.metadata}
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": KERNEL}
    nb.metadata.get("language_info", {}).pop("version", None)
    for cell in nb.cells:
        cell.metadata = {key: cell.metadata[key] for key in CELL_METADATA if cell.metadata.get(key)}
