"""The images' pins (worker_image/requirements.txt, controller/requirements.txt) and pyproject must not drift.

pyproject.toml states what podq needs, with lower bounds; each image installs exactly its pinned versions.
Every third-party package an image's code imports must appear in both, and its pin must satisfy
pyproject's bound, or the image runs other code than the tests did. The controller image holds the
controller package, the client package (podq/, which `podq`'s commands are built on) and the worker_image
modules the controller imports (the protocol), not the worker's engine.
"""

import ast
import re
import sys
import tomllib
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"controller", "worker_image", "podq"}


@dataclass(frozen=True)
class Image:
    name: str
    requirements: Path
    # Where the image's code starts; the first-party modules they import are followed.
    roots: tuple[str, ...]
    # What it must be found to import, so that the checks below cannot pass by checking nothing.
    expected: frozenset[str]


IMAGES = [
    Image(
        "worker",
        ROOT / "worker_image" / "requirements.txt",
        ("worker_image",),
        frozenset({"polars", "pyarrow", "httpx", "sqlglot"}),
    ),
    Image(
        "controller",
        ROOT / "controller" / "requirements.txt",
        ("controller",),
        frozenset({"fastapi", "uvicorn", "httpx", "pydantic-settings", "prometheus-client", "pyyaml"}),
    ),
]


def _pins(image: Image) -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in image.requirements.read_text().splitlines():
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


def _module_file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _image_files(image: Image) -> set[Path]:
    """Every file of the roots' packages, and every first-party module they import, transitively."""
    pending = [p for root in image.roots for p in (ROOT / root).rglob("*.py")]
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            if name.split(".")[0] in FIRST_PARTY and (found := _module_file(name)) is not None:
                pending.append(found)
                # `from pkg import x` also runs pkg/__init__.py.
                if (init := _module_file(name.rsplit(".", 1)[0])) is not None and "." in name:
                    pending.append(init)
    return seen


def _imported_distributions(image: Image) -> list[str]:
    modules = {name.split(".")[0] for path in _image_files(image) for name in _imports(path)}
    third_party = modules - set(sys.stdlib_module_names) - {"__future__"} - FIRST_PARTY
    owners = packages_distributions()
    unknown = sorted(m for m in third_party if m not in owners)
    assert not unknown, f"{image.name} code imports modules no installed distribution provides: {unknown}"
    return sorted({canonicalize_name(owners[m][0]) for m in third_party})


CASES = [(image, dist) for image in IMAGES for dist in _imported_distributions(image)]


@pytest.mark.parametrize("image", IMAGES, ids=[i.name for i in IMAGES])
def test_image_imports_the_expected_packages(image: Image) -> None:
    # Guards the parametrized test below against silently checking nothing.
    assert image.expected <= set(_imported_distributions(image))


def test_controller_image_leaves_the_worker_engine_out() -> None:
    controller = next(i for i in IMAGES if i.name == "controller")
    assert not {"polars", "pyarrow", "sqlglot"} & set(_imported_distributions(controller))
    assert not {"polars", "pyarrow", "sqlglot"} & set(_pins(controller))


@pytest.mark.parametrize(("image", "distribution"), CASES, ids=[f"{i.name}-{d}" for i, d in CASES])
def test_pin_satisfies_pyproject(image: Image, distribution: str) -> None:
    declared = _declared()
    pins = _pins(image)
    requirements = image.requirements.relative_to(ROOT)
    assert distribution in declared, (
        f"{image.name} code imports {distribution}; add it to pyproject's dependencies"
    )
    assert distribution in pins, f"{image.name} code imports {distribution}; pin it in {requirements}"
    requirement = declared[distribution]
    assert requirement.specifier.contains(pins[distribution], prereleases=True), (
        f"{requirements} pins {distribution}=={pins[distribution]}, outside pyproject's {requirement}"
    )


@pytest.mark.parametrize("image", IMAGES, ids=[i.name for i in IMAGES])
def test_pins_are_well_formed(image: Image) -> None:
    assert _pins(image), f"{image.requirements} pins nothing"


def test_controller_dockerfile_copies_the_worker_modules_the_controller_imports() -> None:
    controller = next(i for i in IMAGES if i.name == "controller")
    needed = {str(p.relative_to(ROOT)) for p in _image_files(controller) if p.parts[-2] == "worker_image"}
    copied = set(re.findall(r"worker_image/\w+\.py", (ROOT / "Dockerfile").read_text()))
    assert needed, "the controller imports no worker_image module: the check below would check nothing"
    assert copied == needed
