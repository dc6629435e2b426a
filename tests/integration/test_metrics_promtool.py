"""A live controller's /metrics, after queries of every outcome, as Prometheus' own linter sees it."""

from __future__ import annotations

import httpx
import pytest

from controller.testing.process import ControllerProcess
from podq.client import Client, SQLError
from tests.support.promtool import Promtool

pytestmark = pytest.mark.integration


def test_promtool_check_metrics_passes_on_live_metrics(
    running_controller: ControllerProcess, promtool: Promtool
) -> None:
    with Client(running_controller.url) as podq:
        podq.run("SELECT 1 AS x")
        with pytest.raises(SQLError):
            podq.run("SELEC 1")
    text = httpx.get(f"{running_controller.url}/metrics").text
    assert 'podq_queries_finished_total{error_type="sql",operation="query",status="failed"}' in text
    checked = promtool.run("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", "promtool has lint findings"
