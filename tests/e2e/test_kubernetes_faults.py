"""kill -9 of the controller while its queries run as pods, at each point where a kill could lose or repeat
work (issue 6, item 5, kubernetes mode), then a restart on the same store.

24 queries, cap 4, so 20 wait while 4 run as pods. Points: right after the 24th 202 (a kill from outside),
and, through the test-only `PODQ_TEST_CRASH_AT`, the controller SIGKILLing itself right after creating
its first pod, before reading an ended pod's log, before storing an outcome it has read, and after
storing one but before deleting its pod. After the restart every query ends exactly once with the result
a run without faults gives, no pod was created twice (pod names derive from query ids: a repeated
create is a 409 and the pod is adopted), and no pod is left behind (see `kube_controllers`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from controller.testing.fileserver import FileServer
from controller.testing.process import wait_finished
from tests.support.e2e import KubeControllers, StartKubeController, kubectl_json

pytestmark = pytest.mark.e2e

Controllers = tuple[KubeControllers, StartKubeController]
QUERIES = 24
CAP = 4
# after_create@5: the first pod made after one of the first four ended, once all 24 were submitted.
POINTS = ["after_accept", "after_create@5", "before_log", "before_finish", "before_delete"]


def query(server: FileServer, index: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sql": f"SELECT count(*) + {index} AS n FROM t",
        "datasets": [{"url": f"{server.url}/simple.parquet", "table_name": "t"}],
        "limits": {"cpu": "250m", "memory": "256Mi", "timeout_seconds": 120},
    }
    if index < CAP:
        # The first four hold their pods a little, so 4 run while 20 wait when the kill comes.
        body["debug"] = {"sleep_seconds": 3}
    return body


def pods_by_reason(namespace: str) -> dict[str, dict[str, set[str]]]:
    """pod name -> event reason -> the uids of the pods of that name the events were about."""
    found: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for event in kubectl_json("get", "events", "-n", namespace)["items"]:
        involved = event["involvedObject"]
        if involved.get("kind") == "Pod" and involved["name"].startswith("podq-"):
            found[involved["name"]][event["reason"]].add(involved.get("uid", ""))
    return found


@pytest.mark.parametrize("point", POINTS)
def test_FAULT_K8S_kill_9_with_20_queued_and_4_running_every_query_ends_once(
    point: str, kube_controllers: Controllers, pod_file_server: FileServer
) -> None:
    controllers, start = kube_controllers
    crash = {} if point == "after_accept" else {"test_crash_at": point}
    first = start(max_concurrent=CAP, **crash)
    with first.client() as client:
        locations = []
        for index in range(QUERIES):
            response = client.post("/v1/queries", json=query(pod_file_server, index))
            assert response.status_code == 202, response.text
            locations.append(response.headers["location"])
    assert first.process is not None
    if point == "after_accept":
        first.kill()
    else:
        first.process.wait(timeout=180)
    assert "test crash point" in first.log() or point == "after_accept", first.log()

    with start(max_concurrent=CAP).client() as client:
        records = [wait_finished(client, location, timeout=600) for location in locations]
    for index, record in enumerate(records):
        assert record["status"] == "succeeded", (point, record)
        assert record["result"]["rows"] == [[10 + index]], record
    assert len({r["id"] for r in records}) == QUERIES

    events = pods_by_reason(controllers.namespace)
    for record in records:
        name = f"podq-{record['id']}"
        reasons = events[name]
        uids = set().union(*reasons.values())
        assert len(uids) == 1, f"{name} was created more than once: {dict(reasons)}"
        assert len(reasons["QueryStarted"]) <= 1 and reasons["QueryStarted"] | reasons["QueryAdopted"], (
            reasons
        )
