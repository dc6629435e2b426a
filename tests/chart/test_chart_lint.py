"""`helm lint --strict` passes on the chart's defaults, on every scenario in helm/podq/ci/, and with the
alerts on top of every other toggle; every scenario renders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.helm import ALERTS, ALL_TOGGLES, CHART_DIR, CI_VALUES, POSTGRESQL, Helm

pytestmark = pytest.mark.chart

SCENARIOS = [(), *((path,) for path in CI_VALUES), (ALL_TOGGLES, ALERTS), (ALL_TOGGLES, POSTGRESQL)]


def test_the_chart_has_its_scenarios() -> None:
    names = {path.name for path in CI_VALUES}
    assert {
        "default-values.yaml",
        "all-toggles-values.yaml",
        "alerts-values.yaml",
        "postgresql-values.yaml",
    } <= names
    # Nothing in ci/ that chart-testing would not pick up.
    assert sorted((CHART_DIR / "ci").iterdir()) == CI_VALUES


@pytest.mark.parametrize(
    "files",
    SCENARIOS,
    ids=["defaults", *(p.stem for p in CI_VALUES), "all-toggles-and-alerts", "all-toggles-and-postgresql"],
)
def test_lint_strict(helm: Helm, files: tuple[Path, ...]) -> None:
    args = ["lint", "--strict", str(CHART_DIR)]
    for path in files:
        args += ["--values", str(path)]
    output = helm.run(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in output, output


@pytest.mark.parametrize("path", CI_VALUES, ids=[p.stem for p in CI_VALUES])
def test_every_scenario_renders_a_controller(helm: Helm, path: Path) -> None:
    kinds = [manifest["kind"] for manifest in helm.render(files=[path])]
    assert kinds.count("Deployment") == 1 and kinds.count("Service") == 1
