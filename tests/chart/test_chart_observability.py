"""The chart's Grafana dashboard and PrometheusRule: rendered, checked against the metrics the controller
really exports, and the alerts checked and unit-tested by promtool (`check rules`, `test rules`)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.queue.metrics import Metrics
from controller.queue.store import SqliteStore
from tests.support.helm import NAMESPACE, RELEASE, Helm, find, one
from tests.support.promtool import Promtool

pytestmark = pytest.mark.chart

FULLNAME = RELEASE  # the release is named after the chart, so the full name is the release's
ON = {"metrics": {"grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True}}}
METRIC = re.compile(r"\b(podq_[a-z_]+)")


def exported_metrics(tmp_path: Path) -> set[str]:
    """Every series name the controller's /metrics can hold (histogram and counter suffixes included)."""
    store = SqliteStore(tmp_path / "podq.db")
    try:
        text = Metrics(store).render().decode()
    finally:
        store.close()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("podq_")}
    # A labelled counter has no sample before its first increment: its TYPE line names it.
    names |= {m.removesuffix("_total") + "_total" for m in re.findall(r"# TYPE (podq_\w+) counter", text)}
    return names


def dashboard(helm: Helm, values: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    config_map = one(
        [m for m in helm.render(values or ON) if m["metadata"]["name"].endswith("-dashboard")], "ConfigMap"
    )
    return config_map, json.loads(config_map["data"]["podq.json"])


def rules(helm: Helm, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = one(helm.render(values or ON), "PrometheusRule")["spec"]["groups"]
    return groups


def test_both_are_off_by_default(helm: Helm) -> None:
    manifests = helm.render()
    assert one(manifests, "Service")["metadata"]["name"] == FULLNAME
    assert find(manifests, "PrometheusRule") == []
    assert not [m for m in manifests if m["metadata"]["name"].endswith("-dashboard")]


def test_dashboard_is_labelled_for_the_grafana_sidecar(helm: Helm) -> None:
    config_map, board = dashboard(helm)
    assert config_map["metadata"]["name"] == f"{FULLNAME}-dashboard"
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert [p["title"] for p in board["panels"]] == [
        "Queue depth",
        "Running",
        "Outcomes by error type",
        "Submitted",
        "Queue wait",
        "Run time",
        "Peak memory / limit",
        "Attempt phases (p95)",
        "Warm pool",
        "Warm pool claims and misses",
    ]
    assert board["uid"] == "podq-overview"
    moved, _ = dashboard(
        helm,
        {
            "metrics": {
                "grafanaDashboard": {
                    "enabled": True,
                    "namespace": "monitoring",
                    "labels": {"dashboards": "podq"},
                    "annotations": {"grafana_folder": "Data"},
                }
            }
        },
    )
    assert moved["metadata"]["namespace"] == "monitoring"
    assert moved["metadata"]["labels"]["dashboards"] == "podq"
    assert moved["metadata"]["labels"]["grafana_dashboard"] == "1", "labels are added to the sidecar's"
    assert moved["metadata"]["annotations"] == {"grafana_folder": "Data"}


def test_dashboard_and_alerts_query_only_metrics_the_controller_exports(helm: Helm, tmp_path: Path) -> None:
    exported = exported_metrics(tmp_path)
    _, board = dashboard(helm)
    board_exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    rule_exprs = [r["expr"] for g in rules(helm) for r in g["rules"]]
    used = {m for expr in board_exprs + rule_exprs for m in METRIC.findall(expr)}
    assert used, "no metric found in the expressions"
    assert used <= exported, f"not exported by the controller: {sorted(used - exported)}"
    wanted = {"podq_queue_depth", "podq_running", "podq_queries_finished_total"}
    assert wanted <= used and any("podq_queue_wait_seconds_bucket" in e for e in board_exprs)
    assert any("podq_run_seconds_bucket" in e for e in board_exprs)
    assert any("podq_attempt_peak_memory_ratio_bucket" in e for e in board_exprs)
    assert any("podq_attempt_phase_seconds_bucket" in e for e in board_exprs)


def test_rules_pass_promtool_check(helm: Helm, promtool: Promtool, tmp_path: Path) -> None:
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": rules(helm)}))
    checked = promtool.run("check", "rules", str(rule_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 4 rules found" in checked.stdout


SERIES = f'namespace="{NAMESPACE}", job="{FULLNAME}"'


def finished(status: str, error_type: str, per_minute: int) -> dict[str, str]:
    labels = f'{SERIES}, operation="query", status="{status}", error_type="{error_type}"'
    return {"series": f"podq_queries_finished_total{{{labels}}}", "values": f"0+{per_minute}x40"}


def alert(name: str, severity: str, **labels: str) -> dict[str, Any]:
    return {"exp_labels": {"alertname": name, "severity": severity, **labels}}


# Each case: its input series over 40 minutes, and the alerts expected firing at `eval_time`.
ALERT_CASES: dict[str, tuple[list[dict[str, str]], str, list[dict[str, Any]]]] = {
    "controller down": (
        [{"series": f'up{{{SERIES}, instance="10.0.0.1:8000"}}', "values": "0x40"}],
        "10m",
        [
            alert(
                "PodqControllerDown", "critical", namespace=NAMESPACE, job=FULLNAME, instance="10.0.0.1:8000"
            )
        ],
    ),
    "controller gone": (
        [{"series": f'up{{namespace="elsewhere", job="{FULLNAME}"}}', "values": "1x40"}],
        "10m",
        [alert("PodqControllerDown", "critical", namespace=NAMESPACE, job=FULLNAME)],
    ),
    "controller up": ([{"series": f"up{{{SERIES}}}", "values": "1x40"}], "10m", []),
    "queue backing up": (
        [
            {"series": f"podq_queue_depth{{{SERIES}}}", "values": "150x40"},
        ],
        "15m",
        [alert("PodqQueueBackingUp", "warning")],
    ),
    "queue short": (
        [
            {"series": f"podq_queue_depth{{{SERIES}}}", "values": "50x40"},
        ],
        "15m",
        [],
    ),
    "network failures": (
        [
            finished("failed", "network", 5),
            finished("succeeded", "", 5),
        ],
        "30m",
        [alert("PodqFailureRateHigh", "warning", error_type="network")],
    ),
    "sql failures are the queries' own": (
        [
            finished("failed", "sql", 9),
            finished("succeeded", "", 1),
        ],
        "30m",
        [],
    ),
    "out of memory": (
        [
            finished("failed", "memory", 3),
            finished("succeeded", "", 7),
        ],
        "30m",
        [alert("PodqQueriesOutOfMemory", "warning")],
    ),
    "too few queries to judge": (
        [
            {**finished("failed", "crash", 0), "values": "0x40"},
            {**finished("failed", "memory", 0), "values": "0+0.1x40"},
        ],
        "30m",
        [],
    ),
}


@pytest.mark.parametrize("case", list(ALERT_CASES))
def test_alerts_fire_when_they_should(helm: Helm, promtool: Promtool, tmp_path: Path, case: str) -> None:
    series, eval_time, expected = ALERT_CASES[case]
    if not any(s["series"].startswith("up{") for s in series):
        series = [*series, {"series": f"up{{{SERIES}}}", "values": "1x40"}]
    groups = rules(helm)
    # Annotations are checked by `promtool check rules` (templates parse); here, which alerts fire.
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    names = [r["alert"] for g in groups for r in g["rules"]]
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": eval_time,
                        "alertname": name,
                        "exp_alerts": [e for e in expected if e["exp_labels"]["alertname"] == name],
                    }
                    for name in names
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    tested = promtool.run("test", "rules", "tests.yaml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
