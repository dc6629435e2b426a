"""Two controllers on the kubernetes launcher sharing one PostgreSQL: kill -9 of the one whose pods run, and
the other takes its queries over once its heartbeat is stale, adopting the running pods by name instead of
starting them again. Every query ends exactly once with its own result; no pod is created twice."""

from __future__ import annotations

from typing import Any

import pytest

from controller.testing.fileserver import FileServer
from controller.testing.process import wait_finished
from tests.e2e.test_kubernetes_faults import pods_by_reason, query
from tests.support.e2e import KubeControllers, StartKubeController, running_pod
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.e2e

QUERIES = 8
CAP = 4
# Short, so that the takeover comes within seconds; a heartbeat every half second keeps 6 per stale window.
SHARED = {"heartbeat_seconds": 0.5, "replica_stale_seconds": 3, "max_concurrent": CAP}


def test_a_dead_controllers_running_pods_are_adopted_by_the_other_and_each_query_ends_once(
    kube_controllers: tuple[KubeControllers, StartKubeController],
    pod_file_server: FileServer,
    postgres_server: PostgresServer,
) -> None:
    controllers, start = kube_controllers
    database = postgres_server.take_database()
    first = start(database_url=database, **SHARED)
    with first.client() as client:
        records: list[dict[str, Any]] = []
        for index in range(QUERIES):
            response = client.post("/v1/queries", json=query(pod_file_server, index))
            assert response.status_code == 202, response.text
            records.append(response.json())
    # The first CAP queries sleep in their pods: the first controller runs them when it dies.
    for record in records[:CAP]:
        running_pod(controllers, record["id"])
    second = start(database_url=database, **SHARED)
    first.kill()

    with second.client() as client:
        finished = [wait_finished(client, f"/v1/queries/{r['id']}", timeout=300) for r in records]
    for index, record in enumerate(finished):
        assert record["status"] == "succeeded", record
        assert record["result"]["rows"] == [[10 + index]], record

    events = pods_by_reason(controllers.namespace)
    for record in finished:
        reasons = events[f"podq-{record['id']}"]
        uids = set().union(*reasons.values())
        assert len(uids) == 1, f"podq-{record['id']} was created more than once: {dict(reasons)}"
    adopted = [r["id"] for r in finished[:CAP] if events[f"podq-{r['id']}"]["QueryAdopted"]]
    assert adopted, ({r["id"]: dict(events[f"podq-{r['id']}"]) for r in finished[:CAP]}, second.log())
