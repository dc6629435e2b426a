"""The Kubernetes side of section 4: a namespace of the run's own, bare worker pods (the floor) and waits.

A bare pod is the pod podq would create for the same query
(`controller.launchers.kubernetes.podspec.build_pod`: same image, security context, limits and request),
created, watched to its end and its log read directly through the API, with no controller, queue or rate
limit in the way. Its instance label is not the controller's, so the controller running beside it never
sees it.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass

from controller.launchers.base import Job, Limits
from controller.launchers.kubernetes.client.api import KubeClient
from controller.launchers.kubernetes.podspec import (
    CONTAINER_NAME,
    LABEL_QUERY_ID,
    PodTemplate,
    build_pod,
    selector,
)
from worker_image.protocol import WorkerRequest, decode_envelope

POD_DONE_SECONDS = 180
POD_GONE_SECONDS = 120
POLL_SECONDS = 0.2
LOG_LIMIT_BYTES = 1 << 20


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: dict[str, str]

    def create(self) -> None:
        """The namespace, enforcing Pod Security "restricted" like a real podq namespace."""
        labels = {**self.labels, "pod-security.kubernetes.io/enforce": "restricted"}
        _kubectl("create", "namespace", self.name)
        _kubectl("label", "namespace", self.name, *(f"{key}={value}" for key, value in labels.items()))

    def delete(self) -> None:
        _kubectl("delete", "namespace", self.name, "--wait=true", f"--timeout={POD_GONE_SECONDS}s")


def _kubectl(*args: str) -> None:
    done = subprocess.run(
        ["kubectl", *args], check=False, capture_output=True, text=True, timeout=POD_GONE_SECONDS + 30
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")


async def bare_pod(kube: KubeClient, template: PodTemplate, request: WorkerRequest, limits: Limits) -> float:
    """Seconds from creating the pod to holding its result (create, watch to the end, read the log); the
    pod is deleted afterwards, outside the time, and gone when this returns."""
    job = Job(query_id=f"floor-{uuid.uuid4().hex[:12]}", attempt=1, request=request, limits=limits)
    body = build_pod(job, template, submitted_at=time.time())
    name, namespace = body["metadata"]["name"], template.namespace
    started = time.perf_counter()
    created = await kube.create_pod(namespace, body)
    phase = await _finished_phase(kube, namespace, job.query_id, created["metadata"]["resourceVersion"])
    log = await kube.read_log(namespace, name, CONTAINER_NAME, limit_bytes=LOG_LIMIT_BYTES)
    elapsed = time.perf_counter() - started
    envelope = decode_envelope(log)
    if phase != "Succeeded" or not envelope["ok"]:
        raise RuntimeError(f"bare pod {name} ended {phase}: {envelope}")
    await kube.delete_pod(namespace, name, grace_period_seconds=0)
    await wait_no_pods(kube, namespace, selector(template.instance))
    return elapsed


async def _finished_phase(kube: KubeClient, namespace: str, query_id: str, resource_version: str) -> str:
    deadline = time.monotonic() + POD_DONE_SECONDS
    while time.monotonic() < deadline:
        events = kube.watch_pods(
            namespace, f"{LABEL_QUERY_ID}={query_id}", resource_version, timeout_seconds=60
        )
        async with aclosing(events):
            async for event in events:
                resource_version = event.object["metadata"]["resourceVersion"]
                phase = (event.object.get("status") or {}).get("phase")
                if event.type != "BOOKMARK" and phase in ("Succeeded", "Failed"):
                    return str(phase)
    raise TimeoutError(f"pod of {query_id} not finished within {POD_DONE_SECONDS}s")


async def wait_no_pods(kube: KubeClient, namespace: str, label_selector: str) -> None:
    """Polls until no pod matches: a run starts on a node free of the previous run's pods."""
    deadline = time.monotonic() + POD_GONE_SECONDS
    while (await kube.list_pods(namespace, label_selector))[0]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"pods {label_selector} in {namespace} not gone within {POD_GONE_SECONDS}s")
        await asyncio.sleep(POLL_SECONDS)
