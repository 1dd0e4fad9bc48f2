"""environment.yml must create the same environment as pyproject.toml.

The conda file installs the package's dependencies and its test extra through pip, so the two
lists are compared as requirements: names normalised (PEP 503), version specifiers equal.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = REPO_ROOT / "pyproject.toml"
ENVIRONMENT = REPO_ROOT / "environment.yml"
EDITABLE_SELF = "-e ."
PYTHON_ENTRY = re.compile(r"^python\s*(?P<specifier>[<>=!~].*)?$")


def _pyproject() -> dict:
    with PYPROJECT.open("rb") as file:
        return tomllib.load(file)


def _environment() -> dict:
    with ENVIRONMENT.open(encoding="utf-8") as file:
        return yaml.safe_load(file)


def _conda_entries() -> list[str]:
    return [entry for entry in _environment()["dependencies"] if isinstance(entry, str)]


def _pip_entries() -> list[str]:
    sections = [entry["pip"] for entry in _environment()["dependencies"] if isinstance(entry, dict) and "pip" in entry]
    assert len(sections) == 1, f"{ENVIRONMENT.name} must have exactly one pip section, found {len(sections)}"
    return [str(entry).strip() for entry in sections[0]]


def _by_name(requirements: list[str], source: str) -> dict[str, Requirement]:
    """Map each normalised package name to its parsed requirement."""
    table: dict[str, Requirement] = {}
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name not in table, f"{source} lists {requirement.name} twice"
        table[name] = requirement
    return table


def _comparable(requirement: Requirement) -> tuple:
    marker = str(requirement.marker) if requirement.marker else ""
    return (sorted(requirement.extras), requirement.specifier, marker)


def _pyproject_requirements() -> dict[str, Requirement]:
    project = _pyproject()["project"]
    listed = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    return _by_name(listed, "pyproject.toml (dependencies and the test extra)")


def _environment_requirements() -> dict[str, Requirement]:
    listed = [entry for entry in _pip_entries() if not entry.startswith("-")]
    return _by_name(listed, f"the pip section of {ENVIRONMENT.name}")


def test_environment_is_named_ichlab():
    assert _environment()["name"] == "ichlab"


def test_environment_python_matches_requires_python():
    requires_python = SpecifierSet(_pyproject()["project"]["requires-python"])
    python_entries = [match for entry in _conda_entries() if (match := PYTHON_ENTRY.match(entry))]

    assert len(python_entries) == 1, f"{ENVIRONMENT.name} must list python once, found {len(python_entries)}"
    python_specifier = SpecifierSet(python_entries[0]["specifier"] or "")
    assert python_specifier == requires_python, f"{ENVIRONMENT.name} asks for python{python_specifier}, pyproject.toml for {requires_python}"


def test_environment_installs_pip():
    assert "pip" in _conda_entries()


def test_environment_installs_ichlab_editable():
    assert EDITABLE_SELF in _pip_entries()


def test_environment_has_every_pyproject_package():
    missing = sorted(set(_pyproject_requirements()) - set(_environment_requirements()))
    assert not missing, f"{ENVIRONMENT.name} lacks {missing}, which pyproject.toml requires"


def test_environment_has_no_extra_packages():
    extra = sorted(set(_environment_requirements()) - set(_pyproject_requirements()))
    assert not extra, f"{ENVIRONMENT.name} lists {extra}, which pyproject.toml does not require"


def test_environment_versions_match_pyproject():
    expected = _pyproject_requirements()
    listed = _environment_requirements()
    different = {
        name: (str(listed[name]), str(expected[name]))
        for name in sorted(expected.keys() & listed.keys())
        if _comparable(listed[name]) != _comparable(expected[name])
    }
    assert not different, f"requirements differ as (environment.yml, pyproject.toml): {different}"


def test_torch_is_not_pinned():
    # Colab keeps its preinstalled torch only when no exact or upper bound forces another build.
    torch_specifier = _environment_requirements()["torch"].specifier
    operators = {specifier.operator for specifier in torch_specifier}
    assert operators <= {">="}, f"torch must have at most a lower bound, found {torch_specifier}"
