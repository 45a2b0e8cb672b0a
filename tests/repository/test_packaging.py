"""pyproject, the lock file, environment.yml, README and CI agree with each other."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
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
    project = pyproject()["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    return {requirement_name(r) for r in requirements}


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[normalize(name)] = version
    return pins


def environment_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    pins = {}
    for requirement in pip_section:
        if requirement.startswith("-"):
            continue
        name, version = requirement.split("==")
        pins[normalize(name)] = version
    return pins


def test_environment_yml_lists_the_same_packages_as_pyproject():
    assert set(environment_pins()) == pyproject_packages()


def test_environment_yml_pins_the_lock_file_versions():
    lock = lock_pins()
    for name, version in environment_pins().items():
        assert lock.get(name) == version, f"{name}: environment.yml has {version}, lock has {lock.get(name)}"


def test_environment_yml_installs_the_package_and_python():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert "-e ." in pip_section
    python = next(dep for dep in env["dependencies"] if isinstance(dep, str) and dep.startswith("python"))
    assert Version(python.split("=")[-1]) in SpecifierSet(pyproject()["project"]["requires-python"])


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
