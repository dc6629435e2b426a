"""The Events podq records on its worker pods (controller/launchers/kube_events)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from controller.launchers.kubernetes.client.events import make_event

pytestmark = pytest.mark.unit

POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "podq-q1-1", "namespace": "work", "uid": "5c1d-uid", "resourceVersion": "881"},
    "spec": {"containers": []},
}
NOW = datetime(2026, 3, 4, 5, 6, 7, 89, tzinfo=UTC)


def test_an_event_about_a_pod() -> None:
    event = make_event(POD, reason="QueryTimedOut", message="deadline of 30 s passed", type="Warning",
                       instance="podq-controller-7d9f", now=NOW)  # fmt: skip
    nanos = int(NOW.timestamp()) * 10**9 + 89_000
    assert event == {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"podq-q1-1.{nanos:x}", "namespace": "work"},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "podq-q1-1",
            "namespace": "work",
            "uid": "5c1d-uid",
            "resourceVersion": "881",
        },
        "reason": "QueryTimedOut",
        "message": "deadline of 30 s passed",
        "type": "Warning",
        "count": 1,
        "firstTimestamp": "2026-03-04T05:06:07Z",
        "lastTimestamp": "2026-03-04T05:06:07Z",
        "eventTime": "2026-03-04T05:06:07.000089Z",
        "source": {"component": "podq-controller"},
        "action": "QueryTimedOut",
        "reportingComponent": "podq-controller",
        "reportingInstance": "podq-controller-7d9f",
    }


def test_times_are_utc_and_defaults_are_filled_in() -> None:
    event = make_event(POD, reason="Started", message="m", now=NOW.astimezone(timezone(timedelta(hours=5))))
    assert (event["type"], event["eventTime"]) == ("Normal", "2026-03-04T05:06:07.000089Z")
    assert event["reportingInstance"]  # this host's name
    later = make_event(
        POD, reason="Started", message="m", action="Launch", now=NOW + timedelta(microseconds=1)
    )
    assert later["action"] == "Launch"
    assert later["metadata"]["name"] != event["metadata"]["name"]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("x" * 1024, "x" * 1024),
        ("x" * 2000, "x" * 1024),
        ("é" * 600, "é" * 512),
        ("x" + "é" * 600, "x" + "é" * 511),
    ],
    ids=["at-the-limit", "ascii-over", "two-byte-chars", "a-char-cut-in-two-is-dropped"],
)
def test_the_message_fits_the_api_servers_1024_bytes(message: str, expected: str) -> None:
    assert make_event(POD, reason="R", message=message, now=NOW)["message"] == expected


def test_the_name_of_an_event_about_a_long_named_pod_stays_a_valid_name() -> None:
    pod = {"metadata": {**POD["metadata"], "name": "p" * 253}}
    name = make_event(pod, reason="R", message="m", now=NOW)["metadata"]["name"]
    assert len(name) <= 253 and name.startswith("p" * 200)
