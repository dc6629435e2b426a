"""The helm binary and the podq chart, for the chart tests (loaded by tests/conftest.py).

`helm`: the binary from ``PODQ_HELM`` (tests/run.sh sets it from tests/tools/build-helm.sh), else ``helm`` on
PATH; a test that asks for it fails, never skips, when there is neither: the ``chart`` marker, which every
test using the fixture gets, is how a run without helm leaves those tests out, loudly.

`Helm.render` runs ``helm template`` and parses every document, refusing a mapping with a key twice; values
go to helm as YAML on its standard input, exactly as a values file would. `Helm.notes` renders NOTES.txt.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "podq"
# The chart's scenario values (chart-testing's convention: ci/*-values.yaml, each linted and rendered).
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
ALL_TOGGLES = CHART_DIR / "ci" / "all-toggles-values.yaml"
ALERTS = CHART_DIR / "ci" / "alerts-values.yaml"
# Several controllers on a PostgreSQL (on top of the defaults or of ALL_TOGGLES): the Secret, the rolling
# update, the PodDisruptionBudget and the anti-affinity, no claim.
POSTGRESQL = CHART_DIR / "ci" / "postgresql-values.yaml"
RELEASE = "podq"
NAMESPACE = "podq-chart-test"
HELM_TIMEOUT_SECONDS = 120
NOTES_COPY = "notes-under-test.txt"

Manifest = dict[str, Any]


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping with a key twice (PyYAML keeps the last silently; the API
    server may refuse such an object or keep either value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        duplicates = sorted({str(key) for key in keys if keys.count(key) > 1})
        if duplicates:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate keys {duplicates}", node.start_mark
            )
        return super().construct_mapping(node, deep=deep)


class HelmFailed(Exception):
    """helm exited non-zero; the message is its stderr."""


@dataclass(frozen=True)
class Helm:
    path: str

    def run(self, *args: str, stdin: str | None = None) -> str:
        """helm's stdout; `HelmFailed` with its stderr when it exits non-zero."""
        done = subprocess.run(
            [self.path, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=HELM_TIMEOUT_SECONDS,
            check=False,
            # Keep helm off the developer's own helm configuration, repositories and cache.
            env={**os.environ, "HELM_CONFIG_HOME": "/nonexistent", "HELM_CACHE_HOME": "/nonexistent"},
        )
        if done.returncode != 0:
            raise HelmFailed(done.stderr.strip())
        return done.stdout

    def template(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        files: Sequence[Path] = (),
        release: str = RELEASE,
        namespace: str = NAMESPACE,
    ) -> str:
        """The rendered chart as YAML text: `files` first, then `values` on top (as ``-f``)."""
        args = ["template", release, str(CHART_DIR), "--namespace", namespace]
        for path in files:
            args += ["--values", str(path)]
        if values is not None:
            args += ["--values", "-"]
        return self.run(*args, stdin=None if values is None else yaml.safe_dump(dict(values)))

    def render(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        files: Sequence[Path] = (),
        release: str = RELEASE,
        namespace: str = NAMESPACE,
    ) -> list[Manifest]:
        """Every object the chart renders, parsed."""
        text = self.template(values, files=files, release=release, namespace=namespace)
        return [doc for doc in yaml.load_all(text, Loader=_UniqueKeyLoader) if doc is not None]

    def notes(self, values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE) -> str:
        """NOTES.txt as `helm install` would print it for these values. `helm template` leaves NOTES
        out, so a scratch copy of the chart carries a ConfigMap that renders NOTES.txt through `tpl`."""
        with tempfile.TemporaryDirectory() as scratch:
            chart = Path(scratch) / CHART_DIR.name
            shutil.copytree(CHART_DIR, chart)
            shutil.copy(chart / "templates" / "NOTES.txt", chart / NOTES_COPY)
            (chart / "templates" / "notes-under-test.yaml").write_text(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-under-test\ndata:\n"
                f'  notes: {{{{ tpl (.Files.Get "{NOTES_COPY}") . | toJson }}}}\n'
            )
            args = ["template", RELEASE, str(chart), "--namespace", namespace]
            args += ["--show-only", "templates/notes-under-test.yaml", "--values", "-"]
            text = self.run(*args, stdin=yaml.safe_dump(dict(values or {})))
        notes: str = yaml.safe_load(text)["data"]["notes"]
        return notes


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses `helm` is marked ``chart``, wherever it lives, before ``-m`` selects."""
    for item in items:
        if "helm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.chart)


@pytest.fixture(scope="session")
def helm() -> Helm:
    """The helm binary: ``PODQ_HELM``, else ``helm`` on PATH; the test fails when there is none."""
    configured = os.environ.get("PODQ_HELM")
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"PODQ_HELM={configured} is not an executable file", pytrace=False)
        return Helm(configured)
    found = shutil.which("helm")
    if found is None:
        pytest.fail(
            "the chart tests need helm: set PODQ_HELM (bash tests/tools/build-helm.sh builds it) or put "
            "helm on PATH; without it deselect them with -m 'not chart'",
            pytrace=False,
        )
    return Helm(found)


def find(manifests: Sequence[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    """The objects of `kind` (and `name`, when given)."""
    return [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]


def one(manifests: Sequence[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The single object of `kind` (and `name`); an assertion error when there is not exactly one."""
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, rendered {len(found)}"
    return found[0]


def controller_pod_spec(manifests: Sequence[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def controller_container(manifests: Sequence[Manifest]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = controller_pod_spec(manifests)["containers"]
    assert len(containers) == 1, f"expected one controller container, rendered {len(containers)}"
    return containers[0]


def secret_value(manifests: Sequence[Manifest], name: str, key: str) -> str:
    """The decoded value of `key` in the rendered Secret `name` (an assertion error when not rendered)."""
    data: dict[str, str] = one(manifests, "Secret", name)["data"]
    assert key in data, f"Secret {name} has no key {key}"
    return base64.b64decode(data[key]).decode()


def controller_env(manifests: Sequence[Manifest]) -> dict[str, str]:
    """The controller's environment: its ConfigMap (the only envFrom) and then its own env entries, a
    ``secretKeyRef`` read from the Secret the chart renders (a Secret it does not render is an error)."""
    container = controller_container(manifests)
    sources = container.get("envFrom") or []
    names = [s["configMapRef"]["name"] for s in sources]
    assert len(names) == 1, f"expected one envFrom ConfigMap, rendered {names}"
    # The chart's other ConfigMap (the Grafana dashboard) is not the controller's environment.
    env: dict[str, str] = dict(one(manifests, "ConfigMap", names[0])["data"])
    for entry in container.get("env") or []:
        assert entry["name"] not in env, f"{entry['name']} is set twice"
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secret_value(manifests, ref["name"], ref["key"])
        else:
            env[entry["name"]] = entry["value"]
    return env
