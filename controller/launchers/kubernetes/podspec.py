"""The worker pod of one job, as the JSON the API server takes: pure, no I/O, no Kubernetes client.

One pod per attempt at a query, never retried by Kubernetes (``restartPolicy: Never``), stopped by the
kubelet at ``activeDeadlineSeconds``. CPU and memory requests equal the limits, so the pod is of
Guaranteed QoS and an OOM kill is the query's own limit, not the node's pressure. The security context
passes Pod Security "restricted": non-root with a fixed uid, no privilege escalation, every capability
dropped, seccomp RuntimeDefault, a read-only root with a size-capped emptyDir at /tmp; no service-account
token and no service links reach the worker.

The termination grace period is `TERMINATION_GRACE_SECONDS`, not the default 30 s: a worker has nothing
to clean up and exits on SIGTERM at once (worker_image/__main__.py), so the grace period only bounds how
long a worker that somehow does not can keep its CPU, memory and concurrency slot after its deadline, a
cancel or a deletion (with 30 s, a query with a 5 s deadline ended after 35 s: issue 11).

The single container has no command: the image's entrypoint runs ``python -m worker_image``, which reads
the request from ``PODQ_REQUEST``. ``PODQ_MEMORY_LIMIT_BYTES`` is the container's own ``limits.memory``
through the downward API: the worker watches its memory against the kubelet's own figure
(worker_image/memwatch.py) and reports ``memory`` before the kernel thrashes at the limit; an OOM kill
that happens anyway stays the authority (pod_fate.py). The worker writes a user error to
``/dev/termination-log`` by default, which is the container's termination-message path, so
``PODQ_TERMINATION_MESSAGE_PATH`` is not set.
A request's ``debug`` section reaches the pod only when test hooks are enabled; otherwise it is dropped.
A warm pool's pod (`build_pool_pod`, warm.py) is the same pod before any query: no deadline yet, and
``PODQ_REQUEST_STDIN=1`` with ``stdin``/``stdinOnce`` instead of ``PODQ_REQUEST``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from controller.launchers.base import Job
from controller.launchers.worker_io import encode_request, polars_threads, with_limits
from worker_image.protocol import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    MEMORY_LIMIT_ENV,
    POLARS_ENV,
    REQUEST_ENV,
    REQUEST_STDIN_ENV,
    TEST_HOOKS_ENV,
    WorkerRequest,
)

__all__ = [
    "ANNOTATION_ATTEMPT",
    "ANNOTATION_OPERATION",
    "ANNOTATION_SQL_SHA256",
    "ANNOTATION_SUBMITTED_AT",
    "ANNOTATION_TIMEOUT",
    "CONTAINER_NAME",
    "LABEL_INSTANCE",
    "LABEL_MANAGED_BY",
    "LABEL_NAME",
    "LABEL_QUERY_ID",
    "TERMINATION_GRACE_SECONDS",
    "PodTemplate",
    "build_pod",
    "build_pool_pod",
    "job_annotations",
    "pod_name",
    "quantities",
    "query_id_of",
    "selector",
    "worker_request",
]

LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_QUERY_ID = "podq.dev/query-id"
ANNOTATION_SUBMITTED_AT = "podq.dev/submitted-at"
# Of the SQL for a query, of the dataset URL for an inspection.
ANNOTATION_SQL_SHA256 = "podq.dev/sql-sha256"
ANNOTATION_ATTEMPT = "podq.dev/attempt"
ANNOTATION_OPERATION = "podq.dev/operation"
# A pool pod's query's timeout (warm.py): its activeDeadlineSeconds also counts the time it stood idle.
ANNOTATION_TIMEOUT = "podq.dev/timeout-seconds"
CONTAINER_NAME = "worker"

WORKER_APP = "podq-worker"
MANAGER = "podq"
POD_NAME_PREFIX = "podq-"
# A fixed numeric uid and gid (distroless's "nonroot"): the kubelet can only verify runAsNonRoot for a
# numeric user, and the pod does not depend on which user the image names.
RUN_AS_ID = 65532
# Seconds between SIGTERM and SIGKILL for a worker (deadline, cancel, deletion); see the module docstring.
TERMINATION_GRACE_SECONDS = 2
TMP_VOLUME = "tmp"
TMP_PATH = "/tmp"

_MAX_NAME = 63
# A DNS-1123 label: at once a valid pod name (a DNS-1123 subdomain) and a valid label value.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


@dataclass(frozen=True)
class PodTemplate:
    """Everything about a worker pod that comes from the settings rather than from the job."""

    namespace: str
    instance: str
    image: str
    image_pull_policy: str
    service_account: str | None
    node_selector: Mapping[str, str]
    tolerations: Sequence[Mapping[str, Any]]
    priority_class: str | None
    image_pull_secrets: Sequence[str]
    tmp_size: str
    enable_test_hooks: bool
    # An ownerReference every pod carries (see owner.py); None: the pods have no owner.
    owner: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        # Checked here so a bad release name stops the controller at start, not every pod at creation.
        if len(self.instance) > _MAX_NAME or not _LABEL_VALUE.fullmatch(self.instance):
            raise ValueError(
                f"instance {self.instance!r} is not a valid label value "
                f"(at most {_MAX_NAME} letters, digits, '-', '_', '.', starting and ending alphanumeric)"
            )


def pod_name(query_id: str) -> str:
    """``podq-<query id>``; a `ValueError` if that is no valid pod name or the id no valid label value."""
    name = POD_NAME_PREFIX + query_id
    if len(name) > _MAX_NAME or not _DNS_LABEL.fullmatch(query_id):
        raise ValueError(
            f"query id {query_id!r} makes no valid pod name: it takes at most "
            f"{_MAX_NAME - len(POD_NAME_PREFIX)} lowercase letters, digits and '-', "
            "starting and ending alphanumeric"
        )
    return name


def selector(instance: str) -> str:
    """The label selector of every worker pod of one controller instance."""
    return f"{LABEL_MANAGED_BY}={MANAGER},{LABEL_INSTANCE}={instance}"


def query_id_of(pod: Mapping[str, Any]) -> str | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    value = labels.get(LABEL_QUERY_ID)
    return value if isinstance(value, str) else None


def build_pod(job: Job, template: PodTemplate, *, submitted_at: float) -> dict[str, Any]:
    """The pod running `job`; `submitted_at` is the query's submission time (epoch seconds)."""
    request, test_hooks = worker_request(job, template)
    env = {REQUEST_ENV: encode_request(request), **({TEST_HOOKS_ENV: "1"} if test_hooks else {})}
    labels = {**_labels(template), LABEL_QUERY_ID: job.query_id}
    metadata = _metadata(template, pod_name(job.query_id), labels, job_annotations(job, submitted_at))
    container = _container(template, job.limits.cpu_millicores, job.limits.memory_bytes, env)
    return _pod(template, metadata, container, max(1, math.ceil(job.limits.timeout_seconds)))


def build_pool_pod(
    template: PodTemplate, name: str, labels: Mapping[str, str], *, cpu_millicores: int, memory_bytes: int
) -> dict[str, Any]:
    """A pod started ahead of any query (`warm.py`): the same pod as `build_pod`'s at these limits, but with
    no deadline (set when a query claims it) and a worker waiting for its request on stdin (attach)."""
    env = {REQUEST_STDIN_ENV: "1", **({TEST_HOOKS_ENV: "1"} if template.enable_test_hooks else {})}
    metadata = _metadata(template, name, {**_labels(template), **labels}, {})
    container = _container(template, cpu_millicores, memory_bytes, env)
    container.update({"stdin": True, "stdinOnce": True})
    return _pod(template, metadata, container, None)


def worker_request(job: Job, template: PodTemplate) -> tuple[dict[str, Any], bool]:
    """The request as the worker gets it, and whether test hooks apply to it."""
    request = with_limits(job.request, job.limits)
    test_hooks = template.enable_test_hooks and "debug" in request
    if not test_hooks:
        # The worker refuses a debug section without its hooks enabled; the query runs without it.
        request.pop("debug", None)
    return request, test_hooks


def job_annotations(job: Job, submitted_at: float) -> dict[str, str]:
    return {
        ANNOTATION_SUBMITTED_AT: _rfc3339(submitted_at),
        ANNOTATION_SQL_SHA256: hashlib.sha256(_subject(job.request).encode()).hexdigest(),
        ANNOTATION_ATTEMPT: str(job.attempt),
        ANNOTATION_OPERATION: job.request["operation"],
    }


def _labels(template: PodTemplate) -> dict[str, str]:
    return {LABEL_NAME: WORKER_APP, LABEL_MANAGED_BY: MANAGER, LABEL_INSTANCE: template.instance}


def _metadata(
    template: PodTemplate, name: str, labels: Mapping[str, str], annotations: Mapping[str, str]
) -> dict[str, Any]:
    owners = {"ownerReferences": [dict(template.owner)]} if template.owner else {}
    return {
        **owners,
        "name": name,
        "namespace": template.namespace,
        "labels": dict(labels),
        **({"annotations": dict(annotations)} if annotations else {}),
    }


def _pod(
    template: PodTemplate, metadata: dict[str, Any], container: dict[str, Any], deadline: int | None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "restartPolicy": "Never",
            **({"activeDeadlineSeconds": deadline} if deadline is not None else {}),
            "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            **_scheduling(template),
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUN_AS_ID,
                "runAsGroup": RUN_AS_ID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [{"name": TMP_VOLUME, "emptyDir": {"sizeLimit": template.tmp_size}}],
        },
    }


def _rfc3339(epoch_seconds: float) -> str:
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _subject(request: WorkerRequest) -> str:
    return request["sql"] if request["operation"] == "query" else request["url"]


def _scheduling(template: PodTemplate) -> dict[str, Any]:
    """The optional scheduling fields, present only when set."""
    fields: dict[str, Any] = {}
    if template.service_account:
        fields["serviceAccountName"] = template.service_account
    if template.node_selector:
        fields["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        fields["tolerations"] = [dict(toleration) for toleration in template.tolerations]
    if template.priority_class:
        fields["priorityClassName"] = template.priority_class
    if template.image_pull_secrets:
        fields["imagePullSecrets"] = [{"name": name} for name in template.image_pull_secrets]
    return fields


def quantities(cpu_millicores: int, memory_bytes: int) -> dict[str, str]:
    """A container's CPU and memory as the API's quantities (the same for requests and limits)."""
    return {"cpu": f"{cpu_millicores}m", "memory": str(memory_bytes)}


def _container(
    template: PodTemplate, cpu_millicores: int, memory_bytes: int, env: Mapping[str, str]
) -> dict[str, Any]:
    resources = quantities(cpu_millicores, memory_bytes)
    return {
        "name": CONTAINER_NAME,
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "env": _env(cpu_millicores, env),
        "resources": {"requests": resources, "limits": dict(resources)},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": TMP_PATH}],
        "terminationMessagePath": DEFAULT_TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _env(cpu_millicores: int, extra: Mapping[str, str]) -> list[dict[str, Any]]:
    env = {
        **extra,
        **POLARS_ENV,
        "POLARS_MAX_THREADS": str(polars_threads(cpu_millicores)),
        "HOME": TMP_PATH,
        "PYTHONUNBUFFERED": "1",
        # The envelope's length and checksum are over UTF-8 bytes, whatever locale the image sets.
        "PYTHONUTF8": "1",
    }
    memory_limit = {"resourceFieldRef": {"containerName": CONTAINER_NAME, "resource": "limits.memory"}}
    return [
        *({"name": name, "value": value} for name, value in env.items()),
        {"name": MEMORY_LIMIT_ENV, "valueFrom": memory_limit},
    ]
