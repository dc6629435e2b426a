"""The warm pool's decisions, pure: which pods it holds, which one a query may claim, what the claim writes.

A pool pod (`podspec.build_pool_pod`) carries ``podq.dev/warm=idle`` and ``podq.dev/pool-template``, a
hash of everything the pod is built from: a pod of another template (an older image, other settings) is
never claimed, and is deleted. Claiming is one merge patch carrying the pod's ``resourceVersion``, which
the API server checks as a precondition (409 Conflict when anyone changed the pod since it was read): the
same patch relabels the pod ``warm=claimed`` with the query's id, annotates it as `build_pod` annotates a
cold pod, and sets ``activeDeadlineSeconds`` to the pod's age plus the query's timeout (the kubelet counts
a deadline from the pod's start, so the query gets its own timeout, not the pod's idle time). Being one
update, a claim either happened whole or not at all: no pod serves two queries, no query gets two pods, and
no claimed pod is left without a deadline.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.launchers.base import Job
from controller.launchers.kubernetes.pod_status import is_terminal, parse_time, state, worker_status
from controller.launchers.kubernetes.podspec import (
    ANNOTATION_TIMEOUT,
    LABEL_QUERY_ID,
    PodTemplate,
    build_pool_pod,
    job_annotations,
)
from worker_image.protocol import EXIT_NO_REQUEST

LABEL_WARM = "podq.dev/warm"
LABEL_POOL_TEMPLATE = "podq.dev/pool-template"
IDLE = "idle"
CLAIMED = "claimed"
POOL_POD_PREFIX = "podq-warm-"


@dataclass(frozen=True)
class SizeClass:
    """The limits every pod of the pool has; which queries may take one is resize.py's `fit`."""

    cpu_millicores: int
    memory_bytes: int


@dataclass(frozen=True)
class Plan:
    create: int
    # (name, resourceVersion): deleted only if unchanged since, so never a pod claimed meanwhile.
    delete: tuple[tuple[str, str], ...]
    # When the oldest pod kept reaches its maximum idle age (epoch seconds); None: no pod kept.
    recheck_at: float | None = None


def template_hash(template: PodTemplate, size: SizeClass) -> str:
    body = build_pool_pod(
        template, "", {}, cpu_millicores=size.cpu_millicores, memory_bytes=size.memory_bytes
    )
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def pool_pod(template: PodTemplate, size: SizeClass, suffix: str) -> dict[str, Any]:
    """A new idle pool pod named ``podq-warm-<suffix>``."""
    labels = {LABEL_WARM: IDLE, LABEL_POOL_TEMPLATE: template_hash(template, size)}
    return build_pool_pod(
        template,
        POOL_POD_PREFIX + suffix,
        labels,
        cpu_millicores=size.cpu_millicores,
        memory_bytes=size.memory_bytes,
    )


def _labels(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return (pod.get("metadata") or {}).get("labels") or {}


def is_idle(pod: Mapping[str, Any]) -> bool:
    return _labels(pod).get(LABEL_WARM) == IDLE


def _deleting(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def _running(pod: Mapping[str, Any]) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return (pod.get("status") or {}).get("phase") == "Running" and all(
        "running" in (status.get("state") or {}) for status in statuses
    )


def _started(pod: Mapping[str, Any]) -> float:
    start = (pod.get("status") or {}).get("startTime")
    return parse_time(start) if isinstance(start, str) else math.inf


def claimable(pods: Iterable[Mapping[str, Any]], template: str) -> list[Mapping[str, Any]]:
    """Idle pods of this template whose worker is running, longest started first."""
    ready = [
        pod
        for pod in pods
        if is_idle(pod)
        and _labels(pod).get(LABEL_POOL_TEMPLATE) == template
        and not _deleting(pod)
        and _running(pod)
    ]
    return sorted(ready, key=_started)


def got_no_request(pod: Mapping[str, Any]) -> bool:
    """Whether this is a pool pod whose worker ended by itself without a request: its stdin closed (an attach
    interrupted before the request was whole, by a controller's crash) or held no valid request. Its query
    never ran there."""
    if LABEL_WARM not in _labels(pod):
        return False
    terminated = state(worker_status(pod), "terminated")
    return (
        terminated is not None
        and terminated.get("exitCode") == EXIT_NO_REQUEST
        and terminated.get("reason") != "OOMKilled"
    )


def claimed_by(pods: Iterable[Mapping[str, Any]], query_id: str) -> Mapping[str, Any] | None:
    """The pool pod claimed for this query (by a predecessor of this controller), if any."""
    for pod in pods:
        labels = _labels(pod)
        if labels.get(LABEL_WARM) == CLAIMED and labels.get(LABEL_QUERY_ID) == query_id:
            return pod
    return None


def _created(pod: Mapping[str, Any]) -> float:
    created = (pod.get("metadata") or {}).get("creationTimestamp")
    return parse_time(created) if isinstance(created, str) else math.inf


def _name_and_version(pod: Mapping[str, Any]) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return str(meta.get("name")), str(meta.get("resourceVersion"))


def _keep_first(pod: Mapping[str, Any]) -> tuple[bool, float, str]:
    # Running before starting (a started worker is what a query needs), then the youngest (the oldest is
    # recycled soonest anyway); the name so that replicas seeing the same pods pick the same ones.
    return (not _running(pod), -_created(pod), str((pod.get("metadata") or {}).get("name")))


def plan(
    pods: Iterable[Mapping[str, Any]], template: str, size: int, *, now: float, max_idle_seconds: float
) -> Plan:
    """How many pods to create so that `size` idle pods of this template are up or on their way, and which
    idle pods to delete: another template's, one whose worker has ended (it got no request), one idle
    longer than `max_idle_seconds` since it was created (replaced by a new one), and those beyond `size`
    (the size was lowered, or replicas overshot it)."""
    live = []
    delete = []
    for pod in pods:
        if not is_idle(pod) or _deleting(pod):
            continue
        stale = _labels(pod).get(LABEL_POOL_TEMPLATE) != template or is_terminal(pod)
        if stale or now - _created(pod) >= max_idle_seconds:
            delete.append(_name_and_version(pod))
        else:
            live.append(pod)
    live.sort(key=_keep_first)
    kept, beyond = live[:size], live[size:]
    delete += [_name_and_version(pod) for pod in beyond]
    ages_out = [_created(pod) + max_idle_seconds for pod in kept]
    recheck_at = min((at for at in ages_out if math.isfinite(at)), default=None)
    return Plan(create=size - len(kept), delete=tuple(delete), recheck_at=recheck_at)


def claim_deadline(pod: Mapping[str, Any], now: float, timeout_seconds: float) -> int:
    """``activeDeadlineSeconds`` that ends the pod `timeout_seconds` from `now` (or a little later: whole
    seconds, rounded up)."""
    started = _started(pod)
    age = max(0.0, now - started) if math.isfinite(started) else 0.0
    return max(1, math.ceil(age + timeout_seconds))


def claim_patch(pod: Mapping[str, Any], job: Job, *, now: float, extra_seconds: float = 0) -> dict[str, Any]:
    """The merge patch claiming `pod` for `job`; the API server refuses it (409) if the pod changed. The
    deadline allows `extra_seconds` more than the query's timeout (a resize to wait for, resize.py)."""
    return {
        "metadata": {
            "resourceVersion": pod["metadata"]["resourceVersion"],
            "labels": {LABEL_WARM: CLAIMED, LABEL_QUERY_ID: job.query_id},
            "annotations": {
                **job_annotations(job, job.submitted_at or now),
                ANNOTATION_TIMEOUT: f"{job.limits.timeout_seconds:g}",
            },
        },
        "spec": {
            "activeDeadlineSeconds": claim_deadline(pod, now, job.limits.timeout_seconds + extra_seconds)
        },
    }
