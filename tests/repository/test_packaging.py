"""pyproject, the lock file, environment.yml, README and CI agree with each other."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import lora_basics

ROOT = Path(__file__).resolve().parents[2]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalize(re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0])


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pyproject_packages() -> set[str]:
    """Every package pyproject.toml asks for (an extra that names the project's own extras is not a package)."""
    project = pyproject()["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    return {requirement_name(r) for r in requirements} - {normalize(project["name"])}


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[normalize(name)] = version
    return pins


def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def environment_pip_section() -> list[str]:
    return next(item["pip"] for item in environment()["dependencies"] if isinstance(item, dict))


def lock_python() -> Version:
    """The Python the lock file was frozen on (its header says so)."""
    header = (ROOT / "requirements-lock.txt").read_text().splitlines()[0]
    return Version(re.search(r"Python (\d+\.\d+\.\d+)", header).group(1))


def test_environment_yml_installs_every_pin_of_the_lock_file_and_the_package():
    # Binder and conda get the versions `make lab` installs: all of them, through the lock file itself.
    pip_section = environment_pip_section()
    assert "-r requirements-lock.txt" in pip_section
    assert pip_section[-1] == "-e ."
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip_section, "CPU-only torch on Binder"


def test_environment_yml_python_is_the_lock_files():
    python = next(dep for dep in environment()["dependencies"] if isinstance(dep, str) and dep.startswith("python"))
    minor = python.split("=")[-1]
    assert Version(minor) == Version(f"{lock_python().major}.{lock_python().minor}")
    assert lock_python() in SpecifierSet(pyproject()["project"]["requires-python"])


def test_requires_python_excludes_the_pythons_the_lock_cannot_install_on():
    # numpy 2.4, scipy 1.17, ipython 9 (pinned in the lock) require Python 3.11.
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    assert Version("3.10.13") not in requires and Version("3.11.5") in requires
    assert pyproject()["tool"]["ruff"]["target-version"] == "py311"


def test_lock_file_pins_every_pyproject_package_and_the_cpu_torch():
    lock = lock_pins()
    missing = pyproject_packages() - set(lock)
    assert not missing, f"not pinned in requirements-lock.txt: {missing}"
    assert lock["torch"] == "2.13.0"


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make lab" in readme
    assert re.search(r"^make test$", ci, flags=re.MULTILINE)
    assert "set -euo pipefail" in ci


def test_makefile_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("lab", "test", "notebooks", "bench"):
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), target


def test_the_version_is_written_once():
    # pyproject.toml reads it from lora_basics.__version__; the installed metadata agrees.
    from importlib.metadata import version

    project = pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lora_basics.__version__"}
    assert Version(version("lora-basics")) == Version(lora_basics.__version__)


def test_github_workflow_and_pre_commit_run_what_ci_runs():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "test.yml").read_text())
    steps = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
    assert "bash .ci/run" in steps
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"]
    ruff = next(repo for repo in hooks if repo["repo"].endswith("ruff-pre-commit"))
    assert Version(ruff["rev"].lstrip("v")) == Version(lock_pins()["ruff"])
    local = [hook["entry"] for repo in hooks if repo["repo"] == "local" for hook in repo["hooks"]]
    assert "python -m tools.nbtools check" in local


def test_make_help_lists_every_target():
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY: (.*)$", makefile, flags=re.MULTILINE).group(1).split()
    helped = set(re.findall(r'^\t@echo "make (\w+)', makefile, flags=re.MULTILINE))
    assert sorted(set(phony) - {"help"} - helped) == []
