"""NOTES.txt: how to reach the release and submit a first query, with the token only when auth is on."""

from __future__ import annotations

import pytest

from tests.support.helm import NAMESPACE, Helm

pytestmark = pytest.mark.chart

PORT_FORWARD = f"kubectl -n {NAMESPACE} port-forward service/podq 8000:80"
SUBMIT = "podq submit --url http://127.0.0.1:8000 --wait --sql 'SELECT 42 AS answer'"
BEARER = '-H "Authorization: Bearer $PODQ_TOKEN"'


def test_without_auth(helm: Helm) -> None:
    notes = helm.notes()
    assert notes.startswith("podq 0.1.0 is installed as release podq")
    assert PORT_FORWARD in notes
    assert SUBMIT in notes
    assert "curl -s -X POST http://127.0.0.1:8000/v1/queries" in notes
    assert "PODQ_TOKEN" not in notes
    assert "persistence.enabled is false" not in notes


@pytest.mark.parametrize(
    ("auth", "secret", "jsonpath"),
    [
        pytest.param({"tokens": ["t0k3n"]}, "podq-tokens", "{.data.tokens}", id="chart-secret"),
        pytest.param(
            {"existingSecret": "api", "existingSecretKey": "list.txt"}, "api", r"{.data.list\.txt}", id="own"
        ),
    ],
)
def test_with_auth(helm: Helm, auth: dict[str, object], secret: str, jsonpath: str) -> None:
    notes = helm.notes({"auth": auth})
    assert f"kubectl -n {NAMESPACE} get secret {secret}" in notes
    assert f"-o jsonpath='{jsonpath}' | base64 -d | head -n 1" in notes
    assert notes.count(BEARER) == 2
    assert SUBMIT in notes
    assert "t0k3n" not in notes


def test_service_port_and_names(helm: Helm) -> None:
    notes = helm.notes({"service": {"port": 8080}, "fullnameOverride": "analytics"}, namespace="data")
    assert "kubectl -n data port-forward service/analytics 8000:8080" in notes
    assert "kubectl -n data rollout status deployment/analytics" in notes
    assert "http://analytics.data.svc:8080" in notes


def test_warns_without_persistence(helm: Helm) -> None:
    assert "persistence.enabled is false" in helm.notes({"persistence": {"enabled": False}})


def test_postgresql(helm: Helm) -> None:
    notes = helm.notes({"replicaCount": 2, "database": {"existingSecret": "pg", "existingSecretKey": "dsn"}})
    assert "The store is PostgreSQL (PODQ_DATABASE_URL from Secret pg, key\ndsn): 2 controller(s)" in notes
    assert "/readyz runs SELECT 1" in notes
    assert "persistence.enabled is false" not in notes
    url_notes = helm.notes({"database": {"url": "postgresql://u:pw-secret@db/podq"}})
    assert "Secret podq-database" in url_notes
    assert "pw-secret" not in url_notes
