"""`helm lint --strict` passes on the chart's defaults and with every optional part switched on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.helm import ALL_TOGGLES, CHART_DIR, POSTGRESQL, Helm

pytestmark = pytest.mark.chart


@pytest.mark.parametrize(
    "files",
    [
        (),
        (ALL_TOGGLES,),
        (ALL_TOGGLES, ALL_TOGGLES.parent / "values-alerts.yaml"),
        (POSTGRESQL,),
        (ALL_TOGGLES, POSTGRESQL),
    ],
    ids=["defaults", "all-toggles", "all-toggles-and-alerts", "postgresql", "all-toggles-postgresql"],
)
def test_lint_strict(helm: Helm, files: tuple[Path, ...]) -> None:
    args = ["lint", "--strict", str(CHART_DIR)]
    for path in files:
        args += ["--values", str(path)]
    output = helm.run(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in output, output
