"""An ended pod's log, where its worker's envelope is, and the log line that tells how the pod ended."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from controller.launchers.kubernetes.client.api import KubeClient
from controller.launchers.kubernetes.client.errors import KubeError, NotFound
from controller.launchers.kubernetes.pod_progress import Ended
from controller.launchers.kubernetes.podspec import CONTAINER_NAME
from controller.launchers.kubernetes.retry import retrying

log = logging.getLogger(__name__)

# A result larger than this is reported as cut, never parsed short (the envelope carries its length).
MAX_LOG_BYTES = 64 * 2**20


def log_ended(query_id: str, name: str, pod: Mapping[str, Any], ended: Ended) -> None:
    status = pod.get("status", {})
    log.info(
        "query %s: pod %s ended (%s): phase=%s reason=%s containers=%s",
        query_id,
        name,
        ended.reason,
        status.get("phase"),
        status.get("reason"),
        [
            {"name": c.get("name"), "state": c.get("state"), "restartCount": c.get("restartCount")}
            for c in status.get("containerStatuses") or []
        ],
    )


async def read_log(client: KubeClient, namespace: str, name: str) -> tuple[str | None, str | None]:
    """The worker container's log, or None and why it could not be read."""
    try:
        text = await retrying(
            f"reading the log of pod {name}",
            lambda: client.read_log(namespace, name, CONTAINER_NAME, limit_bytes=MAX_LOG_BYTES),
        )
    except NotFound:
        return None, "the pod was deleted before its log was read"
    except KubeError as exc:
        return None, f"the pod's log could not be read: {exc}"
    return text, None
