"""The library stands alone: a reader of ``lora_basics/`` finds LoRA and nothing else, and it imports no course
or maintainer code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lora_basics as lora

LIBRARY = Path(lora.__file__).resolve().parent


def library_files() -> list[Path]:
    return sorted(LIBRARY.glob("*.py"))


@pytest.mark.parametrize("path", library_files(), ids=lambda p: p.name)
def test_library_modules_import_only_torch_the_standard_library_and_each_other(path):
    allowed = {"torch", "__future__"} | set(sys.stdlib_module_names)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            roots = [] if node.level > 0 else [node.module.split(".")[0]]
        else:
            continue
        for root in roots:
            assert root in allowed, f"{path.name}:{node.lineno} imports {root!r}; the library depends on torch alone"


def test_importing_the_library_loads_no_course_or_tool_module():
    code = "import sys, lora_basics; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert [name for name in loaded if name.split(".")[0] in ("lora_course", "tools", "tests")] == []


def test_every_library_module_is_on_the_package_map():
    # The package docstring is the reader's map: one line per module, and nothing on it that is not there.
    documented = {word for word in lora.__doc__.split() if word.endswith(".py")}
    present = {path.name for path in library_files()} - {"__init__.py"}
    assert documented == present


def test_loralib_names_are_all_here():
    loralib = pytest.importorskip("loralib")
    # What loralib itself defines (its namespace also re-exports typing, math, torch ...).
    public = {name for name, obj in vars(loralib).items() if getattr(obj, "__module__", "").startswith("loralib")}
    assert {"Linear", "MergedLinear", "Embedding", "ConvLoRA", "mark_only_lora_as_trainable"} <= public
    assert sorted(public - set(dir(lora))) == []
    assert set(lora.__all__) <= set(dir(lora))
