"""helm/podq/README.md: its values table is the one generated from values.schema.json and values.yaml
(tests/support/chart_readme.py), and Chart.yaml names the chart's maintainers."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.support.chart_readme import README, rendered, table
from tests.support.helm import CHART_DIR

pytestmark = pytest.mark.unit


def test_the_values_table_is_up_to_date() -> None:
    text = README.read_text()
    assert rendered(text) == text, "the values table is stale: python -m tests.support.chart_readme"


def test_the_table_has_a_row_for_every_value_of_the_schema() -> None:
    keys = re.findall(r"^\| `([^`]+)` \|", table(), flags=re.MULTILINE)
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())

    def leaves(node: dict[str, object], path: str = "") -> list[str]:
        found: list[str] = []
        for key, sub in node.get("properties", {}).items():  # type: ignore[attr-defined]
            dotted = f"{path}.{key}" if path else key
            found.extend(leaves(sub, dotted) if "properties" in sub else [dotted])
        return found

    assert keys == leaves(schema)
    assert {"helmTest.enabled", "config.maxResultBytes", "metrics.prometheusRule.window"} <= set(keys)
    # Every row says something.
    assert not re.search(r"\| \|$", table(), flags=re.MULTILINE)


def test_chart_yaml_names_its_maintainers_and_no_address_it_does_not_have() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["maintainers"] and all(m["name"] for m in chart["maintainers"])
    # Until the project has a public home, none is made up.
    assert "home" not in chart and "sources" not in chart


def test_the_readme_names_every_scenario_in_ci() -> None:
    text = README.read_text()
    for path in sorted((CHART_DIR / "ci").glob("*-values.yaml")):
        assert f"`{path.name}`" in text, path.name
