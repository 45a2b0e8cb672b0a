"""pyproject, the lock file, environment.yml, README and CI agree with each other."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent


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
    assert python.split("=")[1] >= pyproject()["project"]["requires-python"].lstrip(">=")


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
