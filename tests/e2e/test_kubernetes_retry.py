"""Retries on a real cluster: not yet. A query's pod keeps its name (`podq-<id>`), so the next attempt's
create would meet the failed pod and adopt it; until attempts get pods of their own, the kubernetes
launcher refuses a `retry` policy with a 422 naming the field, and stores nothing."""

from __future__ import annotations

import pytest

from tests.support.e2e import KubeControllers, StartKubeController

pytestmark = pytest.mark.e2e


def test_a_retry_policy_is_refused_on_the_kubernetes_launcher(
    kube_controllers: tuple[KubeControllers, StartKubeController],
) -> None:
    controllers, start = kube_controllers
    with start().client() as client:
        refused = client.post("/v1/queries", json={"sql": "SELECT 1", "retry": {"on": ["memory"]}})
        listed = client.get("/v1/queries").json()["items"]
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert [error["field"] for error in body["details"]["errors"]] == ["retry"], body
    assert "kubernetes launcher" in body["message"]
    assert listed == [] and controllers.pods() == []
