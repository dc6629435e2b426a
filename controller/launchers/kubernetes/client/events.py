"""The core/v1 Events podq records on its worker pods: built here, sent by `KubeClient.create_event`."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["make_event"]

# core/v1 Event validation limits (pkg/apis/core/validation/events.go) that apply once eventTime is set.
EVENT_MESSAGE_LIMIT_BYTES = 1024
EVENT_FIELD_LIMIT = 128
_NAME_LIMIT = 253
_NAME_SUFFIX = 17  # "." and 16 hex digits of nanoseconds


def make_event(
    pod: Mapping[str, Any],
    *,
    reason: str,
    message: str,
    type: str = "Normal",
    component: str = "podq-controller",
    action: str | None = None,
    instance: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A core/v1 Event about `pod`, as `kubectl describe pod` and `kubectl get events` show it (no I/O but
    the defaults of `now` and `instance`).

    It carries both the legacy fields (firstTimestamp, lastTimestamp, count, source) and the new ones
    (eventTime, action, reportingComponent, reportingInstance): once eventTime is set the API server
    requires the new ones, and kubectl reads either. `instance` defaults to this host's name (in a pod:
    the pod's), `action` to `reason`; the name is ``<pod>.<nanoseconds in hex>``, as client-go names them.
    """
    meta = pod["metadata"]
    when = (now or datetime.now(UTC)).astimezone(UTC)
    nanos = int(when.timestamp()) * 10**9 + when.microsecond * 1000
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta['name'][: _NAME_LIMIT - _NAME_SUFFIX]}.{nanos:x}",
            "namespace": meta["namespace"],
        },
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": reason,
        "message": message.encode()[:EVENT_MESSAGE_LIMIT_BYTES].decode(errors="ignore"),
        "type": type,
        "count": 1,
        "firstTimestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lastTimestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventTime": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "source": {"component": component},
        "action": (action or reason)[:EVENT_FIELD_LIMIT],
        "reportingComponent": component,
        "reportingInstance": (instance or socket.gethostname())[:EVENT_FIELD_LIMIT],
    }
