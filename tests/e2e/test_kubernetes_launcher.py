"""Every outcome a user can meet, with each query run as a real pod on a real kubelet, submitted over HTTP
to the real controller (`podq serve` with `PODQ_LAUNCHER=kubernetes`).

The failures are the kubelet's own: OOMKilled from the kernel's OOM killer inside the pod's memory cgroup,
DeadlineExceeded from `activeDeadlineSeconds`, exit codes from real signals; or the worker's own memory
watch, which stops a query near its pod's limit (from the downward API) before the kernel has to. The
deadline, cancel and deletion tests run real CPU-bound SQL (a top-k over an 8e9-row cross join, inside
polars' native code all along), since a sleeping test hook stops at any signal and would hide a worker
that does not. The worker's test hooks (`debug`, enabled per controller) only make the worker sleep,
allocate or die, where that is what a test needs. Each test checks that no pod of its controller
outlives it (see `kube_controllers`).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from controller.launchers.kubernetes.pod_status import parse_time
from controller.testing.fileserver import FileServer
from controller.testing.process import wait_finished, wait_status
from tests.support.api import assert_each_failed_as_its_kind, simple_query, simple_rows, sleeper, submit
from tests.support.api import run as run_to_end
from tests.support.e2e import (
    KUBECTL_POLL_SECONDS,
    KubeControllers,
    StartKubeController,
    kubectl,
    pod_events,
    running_pod,
)
from tests.support.fixtures import CPU_BOUND_SQL, HUNGRY_SQL, RUNAWAY_SQL
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

Controllers = tuple[KubeControllers, StartKubeController]
POD_TIMEOUT = 120.0


def run(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    return run_to_end(client, body, timeout=POD_TIMEOUT)


def cpu_bound(server: FileServer, **limits: Any) -> dict[str, Any]:
    """Real SQL that keeps the worker inside polars' native collect() for minutes, in ~80 MiB."""
    body: dict[str, Any] = {
        "sql": CPU_BOUND_SQL,
        "datasets": [{"url": f"{server.url}/large.parquet", "table_name": "table2"}],
    }
    if limits:
        body["limits"] = limits
    return body


# Between the end the kubelet or a user decides and the record saying so: a worker that exits on SIGTERM
# at once, the watch event, the log read. A worker ignoring SIGTERM would take the 2 s grace period more.
STOP_SECONDS = 3.0


def pod_started(record: dict[str, Any]) -> float:
    """When the query's pod started on its node (its container's start, else the pod's): the kubelet counts
    `activeDeadlineSeconds` from the pod's start, not from the controller's `started_at`, which also holds
    scheduling and the sandbox (seconds on a busy node). Kubernetes keeps whole seconds."""
    return parse_time(record["placement"]["started_at"])


def count_query(server: FileServer) -> dict[str, Any]:
    return {
        "sql": "SELECT count(*) AS n, sum(value) AS total FROM t",
        "datasets": [{"url": f"{server.url}/simple.parquet", "table_name": "t"}],
    }


def assert_simple_count(record: dict[str, Any]) -> None:
    assert record["status"] == "succeeded", record
    assert record["result"]["rows"] == [[10, 67.5]]


def evidence(capsys: pytest.CaptureFixture[str], case: str, record: dict[str, Any]) -> None:
    """Print what the classification read from the pod into the run's log, for the reader of CI output."""
    placement = record["placement"]
    fields = {
        k: placement.get(k) for k in ("pod", "phase", "reason", "message", "container_reason", "exit_code")
    }
    with capsys.disabled():
        print(f"\n[e2e evidence] {case}: error={record['error']['error_type']} pod status read: {fields}")


def test_a_query_runs_in_its_own_pod_and_the_pod_is_deleted_after(
    kube_controllers: Controllers, pod_file_server: FileServer, parquet_dir: Any
) -> None:
    controllers, start = kube_controllers
    with start().client() as client:
        record = run(client, simple_query(pod_file_server.url))
    assert record["status"] == "succeeded", record
    assert record["result"]["rows"] == simple_rows(parquet_dir)
    placement = record["placement"]
    assert placement["kind"] == "kubernetes"
    assert placement["pod"] == f"podq-{record['id']}"
    assert placement["namespace"] == controllers.namespace
    assert placement["phase"] == "Succeeded" and placement["exit_code"] == 0


def test_an_inspection_runs_in_a_pod(kube_controllers: Controllers, pod_file_server: FileServer) -> None:
    _, start = kube_controllers
    with start().client() as client:
        response = client.post("/v1/inspections", json={"url": f"{pod_file_server.url}/simple.parquet"})
        assert response.status_code == 202, response.text
        record = wait_finished(client, response.headers["location"], timeout=POD_TIMEOUT)
    assert record["result"]["row_count"] == 10 and record["result"]["valid"] is True
    assert record["placement"]["kind"] == "kubernetes"


def test_the_pod_carries_limits_deadline_labels_and_podq_events_and_cancel_deletes_it(
    kube_controllers: Controllers,
) -> None:
    controllers, start = kube_controllers
    with start().client() as client:
        location = submit(client, sleeper(120, cpu="250m", memory="300Mi", timeout_seconds=90))
        query_id = location.rsplit("/", 1)[1]
        name = f"podq-{query_id}"
        pod = running_pod(controllers, query_id, POD_TIMEOUT)
        labels = pod["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "podq"
        assert labels["app.kubernetes.io/instance"] == controllers.instance
        assert labels["podq.dev/query-id"] == query_id
        spec = pod["spec"]
        assert spec["activeDeadlineSeconds"] == 90 and spec["restartPolicy"] == "Never"
        resources = spec["containers"][0]["resources"]
        assert resources["limits"] == resources["requests"]
        assert resources["limits"]["cpu"] == "250m"
        assert pod["status"]["qosClass"] == "Guaranteed"
        listing = kubectl(
            "get", "pods", "-n", controllers.namespace, "-l", "app.kubernetes.io/managed-by=podq"
        )
        assert name in listing
        wait_until(
            lambda: "QueryStarted" in kubectl("describe", "pod", "-n", controllers.namespace, name),
            "podq's QueryStarted event in kubectl describe",
            within=30,
            every=KUBECTL_POLL_SECONDS,
        )

        assert client.delete(location).status_code == 200
        record = wait_finished(client, location)
    assert record["status"] == "cancelled" and record["error"]["error_type"] == "cancelled"
    wait_until(
        lambda: all(p["metadata"]["name"] != name for p in controllers.pods()),
        "the cancelled query's pod deleted",
        within=POD_TIMEOUT,
        every=KUBECTL_POLL_SECONDS,
    )
    reasons = {event["reason"] for event in pod_events(controllers.namespace, name)}
    assert {"QueryStarted", "QueryCancelled"} <= reasons, reasons


def test_TIMEOUT_1_2_the_deadline_is_the_kubelets_and_the_next_query_succeeds(
    kube_controllers: Controllers, pod_file_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 11: a CPU-bound query at its 5 s deadline ended 35 s after it started, its pod waiting out the
    30 s grace period; it must end within the deadline plus `STOP_SECONDS`, and free its slot as soon."""
    _, start = kube_controllers
    with start(max_concurrent=1).client() as client:
        slow = submit(client, cpu_bound(pod_file_server, cpu="1", memory="1Gi", timeout_seconds=5))
        after = submit(client, count_query(pod_file_server))
        timed_out = wait_finished(client, slow, timeout=POD_TIMEOUT)
        next_one = wait_finished(client, after, timeout=POD_TIMEOUT)
    assert timed_out["status"] == "failed", timed_out
    assert timed_out["error"]["error_type"] == "timeout", timed_out["error"]
    # The kubelet's verdict, read from the pod's status, not a timer of podq's.
    assert timed_out["placement"]["reason"] == "DeadlineExceeded", timed_out["placement"]
    evidence(capsys, "TIMEOUT-1", timed_out)
    assert timed_out["finished_at"] - pod_started(timed_out) <= 5 + STOP_SECONDS, timed_out
    assert_simple_count(next_one)
    assert next_one["started_at"] - pod_started(timed_out) <= 5 + STOP_SECONDS, (timed_out, next_one)


def test_TIMEOUT_1_a_sleeping_worker_is_stopped_at_its_deadline_too(
    kube_controllers: Controllers, pod_file_server: FileServer
) -> None:
    """The hook-based variant: a worker blocked in a system call (sleep), not in polars."""
    _, start = kube_controllers
    with start().client() as client:
        timed_out = run(client, sleeper(timeout_seconds=3))
    assert timed_out["error"]["error_type"] == "timeout", timed_out
    assert timed_out["finished_at"] - pod_started(timed_out) <= 3 + STOP_SECONDS, timed_out


def test_cancelling_a_cpu_bound_query_ends_it_and_frees_its_slot_at_once(
    kube_controllers: Controllers, pod_file_server: FileServer
) -> None:
    controllers, start = kube_controllers
    with start(max_concurrent=1).client() as client:
        slow = submit(client, cpu_bound(pod_file_server, cpu="1", memory="1Gi", timeout_seconds=300))
        after = submit(client, count_query(pod_file_server))
        running_pod(controllers, slow.rsplit("/", 1)[1], POD_TIMEOUT)
        cancelled_at = time.time()
        assert client.delete(slow).status_code == 200
        cancelled = wait_finished(client, slow, timeout=POD_TIMEOUT)
        next_one = wait_finished(client, after, timeout=POD_TIMEOUT)
    assert cancelled["status"] == "cancelled", cancelled
    assert cancelled["finished_at"] - cancelled_at <= STOP_SECONDS, cancelled
    assert_simple_count(next_one)
    assert next_one["started_at"] - cancelled_at <= STOP_SECONDS, next_one


def test_MEM_1_2_an_oom_kill_is_memory_and_the_next_query_succeeds(
    kube_controllers: Controllers, pod_file_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The kernel's OOM kill, which the worker's watch normally forestalls: the allocation hook touches its
    pages in one C call holding the GIL, so the watch cannot look before the kernel kills. What the
    kubelet reports as OOMKilled is the authority."""
    _, start = kube_controllers
    with start().client() as client:
        oom = run(client, {"sql": "SELECT 1", "debug": {"allocate_mb": 1024}, "limits": {"memory": "200Mi"}})
        after = run(client, count_query(pod_file_server))
    assert oom["status"] == "failed", oom
    assert oom["error"]["error_type"] == "memory", oom["error"]
    assert oom["placement"]["container_reason"] == "OOMKilled", oom["placement"]
    assert oom["placement"]["exit_code"] == 137
    evidence(capsys, "MEM-1", oom)
    assert_simple_count(after)


def test_MEM_1_a_query_materialising_beyond_its_limit_is_memory(
    kube_controllers: Controllers, pod_file_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """No test hook: the SQL itself needs more than the pod's memory limit."""
    _, start = kube_controllers
    body = {
        "sql": HUNGRY_SQL,
        "datasets": [{"url": f"{pod_file_server.url}/large.parquet", "table_name": "table2"}],
        "limits": {"memory": "256Mi", "timeout_seconds": 100},
    }
    with start().client() as client:
        record = run(client, body)
    assert record["error"]["error_type"] == "memory", record
    evidence(capsys, "MEM-1 (sql)", record)


def test_MEM_1_a_runaway_query_ends_as_memory_within_3_seconds_of_starting(
    kube_controllers: Controllers, pod_file_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 11: at the pod's limit the kernel thrashed for many seconds before its OOM kill; the worker's
    watch, given the pod's limits.memory through the downward API, stops the query near it."""
    _, start = kube_controllers
    body = {
        "sql": RUNAWAY_SQL,
        "datasets": [{"url": f"{pod_file_server.url}/large.parquet", "table_name": "table2"}],
        "limits": {"cpu": "1", "memory": "512Mi", "timeout_seconds": 100},
    }
    with start().client() as client:
        # What a pod costs on its node before any query runs (interpreter, download, the end seen) on this
        # cluster; measured, not assumed: "within 3 s of starting" is of the query, not of the pod. Both
        # count from the pod's start on its node: scheduling and the sandbox vary by seconds on a busy node.
        trivial = run(client, count_query(pod_file_server))
        record = run(client, body)
    evidence(capsys, "MEM-1 (runaway)", record)
    assert record["error"]["error_type"] == "memory", record
    assert record["error"]["details"]["limit_bytes"] == 512 * 2**20, record["error"]
    pod_overhead = trivial["finished_at"] - pod_started(trivial)
    # Before issue 11 the kernel thrashed at the limit for 15-60 s; STOP_SECONDS absorbs the whole-second
    # start times and the variation of one busy node.
    assert record["finished_at"] - pod_started(record) <= pod_overhead + 3 + STOP_SECONDS, (trivial, record)


@pytest.mark.parametrize("how", ["segv", "exit"])
def test_CRASH_1_2_a_dead_worker_is_a_crash_and_nothing_carries_over(
    how: str, kube_controllers: Controllers, pod_file_server: FileServer
) -> None:
    _, start = kube_controllers
    with start().client() as client:
        crashed = run(client, {"sql": "SELECT 1", "debug": {"crash": how}})
        first = run(client, count_query(pod_file_server))
        second = run(client, count_query(pod_file_server))
    assert crashed["error"]["error_type"] == "crash", crashed
    details = crashed["error"]["details"]
    assert details["exit_code"] == (139 if how == "segv" else 1), details
    assert_simple_count(first)
    assert_simple_count(second)
    # CRASH-2: each query had a fresh pod of its own.
    pods = {r["placement"]["pod"] for r in (crashed, first, second)}
    assert len(pods) == 3


def test_ERR_1_every_error_type_reaches_the_user_in_one_shape(
    kube_controllers: Controllers, pod_file_server: FileServer, pod_closed_port_url: str
) -> None:
    _, start = kube_controllers
    table = {"url": f"{pod_file_server.url}/simple.parquet", "table_name": "t"}
    cases = {
        "validation": {
            "sql": "SELECT * FROM t",
            "datasets": [{**table, "url": f"{pod_file_server.url}/fake.parquet"}],
        },
        "network": {
            "sql": "SELECT * FROM t",
            "datasets": [{**table, "url": f"{pod_closed_port_url}/x.parquet"}],
        },
        "sql": {"sql": "SELECT nonexistent FROM t", "datasets": [table]},
        "timeout": sleeper(timeout_seconds=2),
        "memory": {"sql": "SELECT 1", "debug": {"allocate_mb": 1024}, "limits": {"memory": "200Mi"}},
        "crash": {"sql": "SELECT 1", "debug": {"crash": "segv"}},
    }
    with start(max_concurrent=3).client() as client:
        locations = {kind: submit(client, body) for kind, body in cases.items()}
        records = {kind: wait_finished(client, loc, timeout=POD_TIMEOUT) for kind, loc in locations.items()}
    assert_each_failed_as_its_kind(records)
    assert "nonexistent" in records["sql"]["error"]["message"]


def test_ERR_2_a_failed_query_leaves_the_service_working(
    kube_controllers: Controllers, pod_file_server: FileServer
) -> None:
    _, start = kube_controllers
    with start().client() as client:
        failed = run(client, {**count_query(pod_file_server), "sql": "SELECT id FROM t WHERE nosuch > 1"})
        ok = run(client, count_query(pod_file_server))
    assert failed["error"]["error_type"] == "sql", failed
    assert "nosuch" in failed["error"]["message"]
    assert_simple_count(ok)


def test_QUEUE_1_cap_of_two_pods_fifo_and_all_complete(kube_controllers: Controllers) -> None:
    """Cap 2, four slow queries: two pods, two queued queries without pods; all four complete, FIFO."""
    controllers, start = kube_controllers
    with start(max_concurrent=2).client() as client:
        locations = [submit(client, sleeper(6)) for _ in range(4)]
        ids = [loc.rsplit("/", 1)[1] for loc in locations]
        wait_status(client, locations[0], "running", timeout=POD_TIMEOUT)
        wait_status(client, locations[1], "running", timeout=POD_TIMEOUT)
        statuses = [client.get(loc).json()["status"] for loc in locations[2:]]
        pod_names = {p["metadata"]["name"] for p in controllers.pods()}
        records = [wait_finished(client, loc, timeout=POD_TIMEOUT) for loc in locations]
    assert statuses == ["queued", "queued"]
    assert not pod_names & {f"podq-{i}" for i in ids[2:]}, pod_names
    assert [r["status"] for r in records] == ["succeeded"] * 4
    starts = [r["started_at"] for r in records]
    assert starts[2] >= max(starts[:2]) and starts[3] >= max(starts[:2])
    assert min(r["finished_at"] for r in records[:2]) <= min(starts[2:])


def test_limits_no_node_could_ever_hold_are_refused_at_submission(kube_controllers: Controllers) -> None:
    controllers, start = kube_controllers
    with start(max_cpu="512", max_memory="4Ti").client() as client:
        for limits in ({"cpu": "500"}, {"memory": "3Ti"}):
            response = client.post("/v1/queries", json={"sql": "SELECT 1", "limits": limits})
            assert response.status_code == 422, response.text
            assert response.json()["details"]["errors"][0]["field"] == "limits", response.json()
            assert "no node could ever hold" in response.json()["message"]
        assert client.get("/v1/queries").json()["items"] == []
    assert controllers.pods() == []


def test_limits_that_do_not_fit_now_fail_as_unschedulable_after_the_wait(
    kube_controllers: Controllers, ballast: Callable[[str], None]
) -> None:
    controllers, start = kube_controllers
    free_millicores = ballast(controllers.namespace)
    with start(unschedulable_after_seconds=5).client() as client:
        record = run(client, sleeper(5, cpu=f"{free_millicores + 100}m", memory="128Mi"))
    assert record["error"]["error_type"] == "unschedulable", record
    assert "Insufficient cpu" in record["error"]["message"], record["error"]
    assert record["error"]["retryable"] is True


def test_an_image_that_cannot_be_pulled_fails_as_image(kube_controllers: Controllers) -> None:
    _, start = kube_controllers
    with start(worker_image="podq.local/no-such-image:0", image_pull_grace_seconds=3).client() as client:
        record = run(client, {"sql": "SELECT 1"})
    assert record["error"]["error_type"] == "image", record
    assert "podq.local/no-such-image:0" in record["error"]["message"]


@pytest.mark.parametrize("stop", ["kill -9", "SIGTERM"])
def test_a_restarted_controller_adopts_running_pods_and_each_result_lands_once(
    stop: str, kube_controllers: Controllers, pod_file_server: FileServer
) -> None:
    controllers, start = kube_controllers
    first = start(max_concurrent=2)
    body = {**count_query(pod_file_server), "debug": {"sleep_seconds": 20}}
    with first.client() as client:
        locations = [submit(client, body) for _ in range(2)]
    ids = [loc.rsplit("/", 1)[1] for loc in locations]
    uids = {query_id: running_pod(controllers, query_id, POD_TIMEOUT)["metadata"]["uid"] for query_id in ids}
    if stop == "kill -9":
        first.kill()
    else:
        assert first.stop() in (0, -15)  # uvicorn re-raises the SIGTERM it handled
    # The pods outlive their controller: nobody deleted them.
    assert {p["metadata"]["uid"] for p in controllers.pods()} >= set(uids.values())

    with start(max_concurrent=2).client() as client:
        records = [wait_finished(client, loc, timeout=POD_TIMEOUT) for loc in locations]
    for record in records:
        assert_simple_count(record)
    for query_id, uid in uids.items():
        adopted = [
            e
            for e in pod_events(controllers.namespace, f"podq-{query_id}")
            if e["reason"] == "QueryAdopted" and e["involvedObject"].get("uid") == uid
        ]
        assert adopted, (
            f"pod podq-{query_id} was not adopted: {pod_events(controllers.namespace, f'podq-{query_id}')}"
        )
        created = [
            e for e in pod_events(controllers.namespace, f"podq-{query_id}") if e["reason"] == "QueryStarted"
        ]
        assert len(created) == 1, created


def test_a_finished_pod_is_kept_for_its_ttl_then_deleted(
    kube_controllers: Controllers, pod_file_server: FileServer
) -> None:
    controllers, start = kube_controllers
    with start(pod_ttl_seconds=5).client() as client:
        record = run(client, count_query(pod_file_server))
    assert_simple_count(record)
    name = record["placement"]["pod"]
    logs = kubectl("logs", "-n", controllers.namespace, name)
    assert "PODQ-RESULT-V1" in logs
    wait_until(
        lambda: all(p["metadata"]["name"] != name for p in controllers.pods()),
        "the pod deleted after its TTL",
        within=POD_TIMEOUT,
        every=KUBECTL_POLL_SECONDS,
    )


def test_a_pod_deleted_by_someone_else_fails_the_query_as_a_retryable_crash(
    kube_controllers: Controllers, pod_file_server: FileServer
) -> None:
    """A CPU-bound worker, deleted by hand: it must stop at the kubelet's SIGTERM, not at the SIGKILL
    after the grace period, and its slot go to the next query."""
    controllers, start = kube_controllers
    with start(max_concurrent=1).client() as client:
        location = submit(client, cpu_bound(pod_file_server, cpu="1", memory="1Gi", timeout_seconds=300))
        after = submit(client, count_query(pod_file_server))
        query_id = location.rsplit("/", 1)[1]
        running_pod(controllers, query_id, POD_TIMEOUT)
        deleted_at = time.time()
        kubectl("delete", "pod", "-n", controllers.namespace, f"podq-{query_id}", "--wait=false")
        record = wait_finished(client, location, timeout=POD_TIMEOUT)
        next_one = wait_finished(client, after, timeout=POD_TIMEOUT)
    assert record["status"] == "failed", record
    assert record["error"]["error_type"] == "crash", record["error"]
    assert record["error"]["retryable"] is True
    assert record["finished_at"] - deleted_at <= STOP_SECONDS, record
    assert_simple_count(next_one)
    assert next_one["started_at"] - deleted_at <= STOP_SECONDS, next_one


@pytest.mark.parametrize("how", ["graceful", "kill"])
def test_the_watch_recovers_from_an_api_server_restart_and_every_result_lands(
    how: str, kube_controllers: Controllers, pod_file_server: FileServer
) -> None:
    """The API server goes away while pods run (gracefully, as in an upgrade, or killed): the controller's
    watch reconnects, the pods' results are read once it is back, and queries queued meanwhile run."""
    command = os.environ.get("PODQ_E2E_RESTART_APISERVER")
    if not command:
        pytest.skip("PODQ_E2E_RESTART_APISERVER is not set: no way to restart this cluster's API server")
    controllers, start = kube_controllers
    body = {**count_query(pod_file_server), "debug": {"sleep_seconds": 8}}
    # After a minute without an API server the node controller taints the node unreachable, and pods made
    # right after the restart stay Pending until the kubelet is heard again (over a minute, measured here):
    # the cluster's recovery, not podq's, so the unschedulable wait is set above it.
    settings = {"max_concurrent": 2, "kube_request_timeout_seconds": 5, "unschedulable_after_seconds": 600}
    with start(**settings).client() as client:
        locations = [submit(client, body) for _ in range(4)]
        running_pod(controllers, locations[0].rsplit("/", 1)[1], POD_TIMEOUT)
        restart = [*shlex.split(command), *(["--kill"] if how == "kill" else [])]
        subprocess.run(restart, check=True, timeout=240, capture_output=True)
        records = [wait_finished(client, loc, timeout=3 * POD_TIMEOUT) for loc in locations]
        wait_until(lambda: client.get("/readyz").status_code == 200, "the controller ready again", within=60)
    for record in records:
        assert_simple_count(record)
        assert len(record["attempts"]) == 1, record
    assert len({r["id"] for r in records}) == 4
