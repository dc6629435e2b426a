"""What podq creates is sent as the official client's typed models: the pod spec builder's JSON validates
into a `V1Pod` that serialises back to exactly that JSON, for every kind of pod; an Event into a
`CoreV1Event` that keeps every field the API server requires."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from controller.launchers.kubernetes.client.api import model, to_json
from controller.launchers.kubernetes.client.events import make_event
from controller.launchers.kubernetes.podspec import build_pod
from tests.unit.test_podspec import BARE, FULL, INSPECTION, JOB, QUERY_WITH_DEBUG, SUBMITTED

pytestmark = pytest.mark.unit

OWNER = {"apiVersion": "v1", "kind": "ServiceAccount", "name": "podq", "uid": "u-1"}
PODS = {
    "bare": (JOB, BARE),
    "every-scheduling-field": (JOB, FULL),
    "owned": (JOB, dataclasses.replace(BARE, owner=OWNER)),
    "inspection": (dataclasses.replace(JOB, request=INSPECTION), BARE),
    "test-hooks": (
        dataclasses.replace(JOB, request=QUERY_WITH_DEBUG),
        dataclasses.replace(BARE, enable_test_hooks=True),
    ),
}


@pytest.mark.parametrize("name", PODS)
def test_the_pod_round_trips_through_v1pod(name: str) -> None:
    job, template = PODS[name]
    built = build_pod(job, template, submitted_at=SUBMITTED)
    pod = model("Pod", built)
    assert type(pod).__name__ == "V1Pod"
    assert to_json(pod) == built


def test_the_event_keeps_what_the_api_server_requires() -> None:
    pod: dict[str, Any] = {
        "metadata": {"name": "podq-q1", "namespace": "ns", "uid": "u", "resourceVersion": "7"}
    }
    now = datetime(2026, 12, 3, 7, 30, 1, 250000, tzinfo=UTC)
    event = make_event(pod, reason="Started", message="m", instance="host", now=now)
    typed = model("Event", event)
    sent = to_json(typed)
    assert type(typed).__name__ == "CoreV1Event"
    for key in ("metadata", "involvedObject", "reason", "message", "type", "count", "source", "action"):
        assert sent[key] == event[key], key
    assert (sent["reportingComponent"], sent["reportingInstance"]) == ("podq-controller", "host")
    for key in ("firstTimestamp", "lastTimestamp", "eventTime"):
        assert datetime.fromisoformat(sent[key].replace("Z", "+00:00")).replace(microsecond=0) == now.replace(
            microsecond=0
        ), key
    assert sent["eventTime"].startswith("2026-12-03T07:30:01.25")
