"""values.yaml documents every value, and values.schema.json refuses what the chart cannot use.

The comment rule: every key of values.yaml that is a value of the chart (a mapping key reached through
mappings only; keys inside list items such as NetworkPolicy rules are data, not values) has a comment
line directly above it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.support.helm import CHART_DIR, Helm, HelmFailed

pytestmark = pytest.mark.chart

VALUES = CHART_DIR / "values.yaml"
SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())


def value_keys(node: yaml.Node | None, path: str = "") -> list[tuple[str, int]]:
    """(dotted path, 0-based line) of every key reached through mappings only."""
    found: list[tuple[str, int]] = []
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            dotted = f"{path}.{key.value}" if path else str(key.value)
            found.append((dotted, key.start_mark.line))
            found += value_keys(value, dotted)
    return found


def undocumented(text: str) -> list[str]:
    lines = text.splitlines()
    return [
        path
        for path, line in value_keys(yaml.compose(text))
        if line == 0 or not lines[line - 1].lstrip().startswith("#")
    ]


def test_every_value_has_a_comment() -> None:
    assert undocumented(VALUES.read_text()) == []


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        pytest.param("# a\na: 1\n# b\nb:\n  # c\n  c: 2\n", [], id="documented"),
        pytest.param("# a\na: 1\nb: 2\n", ["b"], id="top-level"),
        pytest.param("# a\na:\n  b: 1\n", ["a.b"], id="nested"),
        pytest.param("# a\na:\n  # b\n  b: 1\n\n  c: 2\n", ["a.c"], id="blank-line-between"),
        pytest.param("a: 1\n", ["a"], id="first-line"),
        pytest.param("# a\na:\n  - x: 1\n    y: 2\n", [], id="list-items-are-data"),
    ],
)
def test_comment_rule_itself(text: str, missing: list[str]) -> None:
    assert undocumented(text) == missing


def schema_paths(schema: dict[str, Any], path: str = "") -> set[str]:
    """Every dotted path the schema declares through object properties."""
    found: set[str] = set()
    for key, sub in schema.get("properties", {}).items():
        dotted = f"{path}.{key}" if path else key
        found.add(dotted)
        found |= schema_paths(sub, dotted)
    return found


def object_schemas(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)] if "properties" in schema else []
    for key, sub in schema.get("properties", {}).items():
        found += object_schemas(sub, f"{path}.{key}" if path else key)
    return found


def declared(path: str) -> bool:
    """The schema names this value, or it lies inside a free-form map the schema declares (resources)."""
    schema = SCHEMA
    for key in path.split("."):
        if "properties" not in schema:
            return bool(schema.get("type") == "object")
        if key not in schema["properties"]:
            return False
        schema = schema["properties"][key]
    return True


def test_schema_declares_every_value() -> None:
    values = {path for path, _ in value_keys(yaml.compose(VALUES.read_text()))}
    assert {path for path in values if not declared(path)} == set()
    # `global` belongs to helm (parent charts), not to values.yaml.
    assert schema_paths(SCHEMA) - {"global"} - values == set()


def test_schema_is_closed() -> None:
    """Every object the schema describes refuses keys it does not know: a typo fails at install."""
    for path, schema in object_schemas(SCHEMA):
        assert schema.get("additionalProperties") is False, path or "(root)"


REFUSED = [
    pytest.param({"config": {"unknownKey": 1}}, "unknownKey", id="unknown-config-key"),
    pytest.param({"config": {"launcher": "local"}}, "launcher", id="chart-owned-config-key"),
    pytest.param({"config": {"kubeNamespace": "x"}}, "kubeNamespace", id="chart-owned-namespace"),
    pytest.param({"config": {"enableTestHooks": True}}, "enableTestHooks", id="test-hooks"),
    pytest.param({"config": {"maxConcurrent": "8"}}, "maxConcurrent", id="config-wrong-type"),
    pytest.param({"config": {"maxResultBytes": 1024}}, "maxResultBytes", id="config-below-minimum"),
    pytest.param({"config": {"maxMemory": "4 gigs"}}, "maxMemory", id="config-bad-quantity"),
    pytest.param({"config": {"maxCpu": "1.5Gi"}}, "maxCpu", id="config-bad-cpu"),
    pytest.param({"persistence": {"size": 5}}, "size", id="persistence-size-type"),
    pytest.param({"persistence": {"sise": "1Gi"}}, "sise", id="typo"),
    pytest.param({"worker": {"image": {"pullPolicy": "Sometimes"}}}, "pullPolicy", id="pull-policy"),
    pytest.param({"worker": {"namespace": "Not_A_Namespace"}}, "namespace", id="worker-namespace"),
    pytest.param({"auth": {"tokens": ["two words"]}}, "tokens", id="token-with-space"),
    pytest.param({"service": {"port": 0}}, "port", id="service-port"),
    pytest.param({"replicas": 2}, "replicas", id="replicas-is-no-value"),
    pytest.param({"replicaCount": 2}, "replicaCount", id="several-controllers-on-sqlite"),
    pytest.param({"replicaCount": 0}, "replicaCount", id="no-controller"),
    pytest.param({"database": {"url": "mysql://db/podq"}}, "url", id="database-not-postgresql"),
    pytest.param({"database": {"existingSecretKey": ""}}, "existingSecretKey", id="database-empty-key"),
    pytest.param({"config": {"heartbeatSeconds": 0}}, "heartbeatSeconds", id="heartbeat-zero"),
    pytest.param({"config": {"databasePoolSize": 0}}, "databasePoolSize", id="pool-empty"),
    pytest.param(
        {"config": {"kubeWarmPoolMaxIdleSeconds": 5}},
        "kubeWarmPoolMaxIdleSeconds",
        id="warm-pool-idle-too-short",
    ),
    pytest.param({"config": {"kubeWarmPoolResize": "yes"}}, "kubeWarmPoolResize", id="warm-pool-resize-type"),
]


@pytest.mark.parametrize(("values", "named"), REFUSED)
def test_schema_refuses(helm: Helm, values: dict[str, Any], named: str) -> None:
    with pytest.raises(HelmFailed) as failed:
        helm.render(values)
    message = str(failed.value)
    assert "values don't meet the specifications of the schema" in message, message
    assert named in message, message


ACCEPTED = [
    pytest.param({"config": {"maxCpu": 2, "defaultCpu": "500m"}}, id="cpu-number-or-string"),
    pytest.param({"config": {"maxMemory": 2147483648}}, id="memory-in-bytes"),
    pytest.param({"config": {"kubeQps": 0.5}}, id="fractional-qps"),
    pytest.param({"persistence": {"storageClass": "-"}}, id="no-storage-class"),
    pytest.param({"worker": {"namespace": "podq-workers"}}, id="worker-namespace"),
    pytest.param({"replicaCount": 3, "database": {"url": "postgresql://db/podq"}}, id="replicas-with-url"),
    pytest.param({"replicaCount": 2, "database": {"existingSecret": "pg"}}, id="replicas-with-secret"),
    pytest.param({"database": {"url": "postgres://db/podq"}}, id="postgres-scheme"),
]


@pytest.mark.parametrize("values", ACCEPTED)
def test_schema_accepts(helm: Helm, values: dict[str, Any]) -> None:
    assert helm.render(values)
