"""Reading a pod as the API server returns it (controller/launchers/kubernetes/pod_status.py), over the
captured pods: whether it has ended, when its worker ended, its worker's and every container's status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.launchers.kubernetes.pod_status import (
    condition,
    container_statuses,
    finished_at,
    is_terminal,
    parse_time,
    state,
    worker_status,
)
from controller.launchers.kubernetes.podspec import CONTAINER_NAME
from tests.support.captured_pods import load

pytestmark = pytest.mark.unit

# Containers that admission webhooks or a chart's values put next to the worker.
SIDECARS = st.sampled_from(["istio-proxy", "linkerd-proxy", "log-shipper", "vault-agent"])


def just_created() -> dict[str, Any]:
    """A pod as the API server returns it right after creation: no status at all yet."""
    return {key: value for key, value in load("pending-no-status").items() if key != "status"}


def ended_behind_sidecar() -> dict[str, Any]:
    """The worker OOMKilled at 21:20:20 behind an injected proxy, and the proxy stopped 25 s later."""
    pod = load("oomkilled-behind-sidecar")
    pod["status"]["phase"] = "Failed"
    proxy = pod["status"]["containerStatuses"][0]
    proxy["state"] = {
        "terminated": {
            "exitCode": 0,
            "reason": "Completed",
            "startedAt": "2026-11-21T21:20:17Z",
            "finishedAt": "2026-11-21T21:20:45Z",
        }
    }
    return pod


def at(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


def test_an_api_server_timestamp_is_read_as_utc_epoch_seconds() -> None:
    assert parse_time("2026-11-21T21:20:20Z") == at("2026-11-21 21:20:20")


@pytest.mark.parametrize("name", ["succeeded", "oomkilled-exit0", "oomkilled", "deadline-exceeded"])
def test_a_pod_that_succeeded_or_failed_has_ended(name: str) -> None:
    assert is_terminal(load(name))


@pytest.mark.parametrize("name", ["pending-no-status", "containercreating", "running", "terminating"])
def test_a_pending_or_running_pod_has_not_ended(name: str) -> None:
    assert not is_terminal(load(name))


def test_a_worker_ended_behind_a_sidecar_that_still_runs_is_not_an_ended_pod() -> None:
    assert not is_terminal(load("oomkilled-behind-sidecar"))


def test_a_pod_without_a_status_yet_has_not_ended_nor_anything_to_read() -> None:
    pod = just_created()

    assert not is_terminal(pod)
    assert finished_at(pod) is None
    assert worker_status(pod) is None
    assert container_statuses(pod) == []
    assert condition(pod, "PodScheduled") is None


@pytest.mark.parametrize(
    ("name", "ended"),
    [
        ("succeeded", "2026-11-21 21:20:17"),
        ("oomkilled", "2026-11-21 21:20:20"),
        ("evicted-memory", "2026-11-21 21:26:50"),
    ],
)
def test_an_ended_pod_finished_when_its_worker_did(name: str, ended: str) -> None:
    assert finished_at(load(name)) == at(ended)


def test_a_pod_finished_when_its_worker_did_not_when_a_sidecar_did() -> None:
    assert finished_at(ended_behind_sidecar()) == at("2026-11-21 21:20:20")


@pytest.mark.parametrize("name", ["running", "containercreating", "node-shutdown-rejected"])
def test_a_pod_whose_worker_has_not_ended_or_never_started_has_no_finish_time(name: str) -> None:
    assert finished_at(load(name)) is None


def test_the_worker_status_is_found_by_name_behind_a_sidecar() -> None:
    worker = worker_status(load("oomkilled-behind-sidecar"))

    assert worker is not None
    assert worker["name"] == CONTAINER_NAME
    assert state(worker, "terminated") == {
        "containerID": "containerd://9b8a873c6b50e757019e7c5cc7a80b6309c365b686d837e23effc90c39eaf8a8",
        "exitCode": 137,
        "finishedAt": "2026-11-21T21:20:20Z",
        "message": "Killed\n",
        "reason": "OOMKilled",
        "startedAt": "2026-11-21T21:20:18Z",
    }
    assert state(worker, "running") is None


def test_a_pod_scheduled_on_no_node_has_no_worker_status() -> None:
    assert worker_status(load("unschedulable")) is None
    assert state(None, "terminated") is None


@given(sidecars=st.lists(SIDECARS, max_size=3), position=st.integers(min_value=0))
def test_the_worker_status_is_the_workers_wherever_it_stands(sidecars: list[str], position: int) -> None:
    names = [*sidecars]
    names.insert(position % (len(names) + 1), CONTAINER_NAME)
    pod = {"status": {"containerStatuses": [{"name": name, "state": {"running": {}}} for name in names]}}

    assert worker_status(pod) == {"name": CONTAINER_NAME, "state": {"running": {}}}


def test_every_container_status_is_read_init_containers_first() -> None:
    statuses = container_statuses(load("init-oomkilled"))

    assert [status["name"] for status in statuses] == ["istio-init", "istio-proxy", CONTAINER_NAME]
    assert [list(status["state"]) for status in statuses] == [["terminated"], ["waiting"], ["waiting"]]


def test_a_pod_without_init_containers_has_its_containers_statuses_only() -> None:
    assert [status["name"] for status in container_statuses(load("oomkilled"))] == [CONTAINER_NAME]


def test_a_condition_is_found_by_type() -> None:
    scheduled = condition(load("unschedulable"), "PodScheduled")

    assert scheduled is not None
    assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")
    assert condition(load("unschedulable"), "Ready") is None
    assert condition(load("pending-no-status"), "PodScheduled") is None
