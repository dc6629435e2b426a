"""The worker image's pins (worker_image/requirements.txt) and pyproject's dependencies must not drift.

pyproject.toml states what podq needs, with lower bounds; the image installs exactly the pinned versions.
Every third-party package that worker_image imports must appear in both, and its pin must satisfy
pyproject's bound, or the image runs other code than the tests did.
"""

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in (ROOT / "worker_image" / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version and not Requirement(line).marker, f"not an exact pin: {line!r}"
        assert canonicalize_name(name) not in pins, f"pinned twice: {name}"
        pins[canonicalize_name(name)] = version
    return pins


def _declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


def _imported_distributions() -> set[str]:
    modules: set[str] = set()
    for path in (ROOT / "worker_image").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"__future__", "worker_image"}
    owners = packages_distributions()
    unknown = sorted(m for m in third_party if m not in owners)
    assert not unknown, f"worker_image imports modules no installed distribution provides: {unknown}"
    return {canonicalize_name(owners[m][0]) for m in third_party}


WORKER_DISTRIBUTIONS = sorted(_imported_distributions())


def test_worker_imports_third_party_packages() -> None:
    # Guards the parametrized test below against silently checking nothing.
    assert {"polars", "pyarrow", "httpx", "sqlglot"} <= set(WORKER_DISTRIBUTIONS)


@pytest.mark.parametrize("distribution", WORKER_DISTRIBUTIONS, ids=WORKER_DISTRIBUTIONS)
def test_pin_satisfies_pyproject(distribution: str) -> None:
    declared = _declared()
    pins = _pins()
    assert distribution in declared, (
        f"worker_image imports {distribution}; add it to pyproject's dependencies"
    )
    assert distribution in pins, (
        f"worker_image imports {distribution}; pin it in worker_image/requirements.txt"
    )
    requirement = declared[distribution]
    assert requirement.specifier.contains(pins[distribution], prereleases=True), (
        f"worker_image/requirements.txt pins {distribution}=={pins[distribution]}, "
        f"outside pyproject's {requirement}"
    )


def test_pins_are_well_formed() -> None:
    assert _pins(), "worker_image/requirements.txt pins nothing"
