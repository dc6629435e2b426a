"""Section 4, Kubernetes mode: submit -> result through a real controller vs a bare pod, and dispatch rate.

Needs a cluster (``KUBECONFIG``) whose nodes hold the worker image (``--worker-image``, default
``$PODQ_E2E_WORKER_IMAGE``; nothing is pulled). Everything runs in a namespace of its own, created with
Pod Security "restricted" and deleted at the end. The controller runs on this host, as `podq serve`
with ``PODQ_LAUNCHER=kubernetes``, like the e2e tier runs it.

- Latency: `SELECT 1` submitted to the controller and long-polled to its result, vs the floor: the same
  pod created, watched to its end and its log read directly (`bench.kube_pods`). The two alternate, one
  at a time, each starting once the previous run's pod is gone. The controller's timestamps split its
  time into queued, run (pod created to outcome stored) and the rest.
- Dispatch throughput: `queued` queries submitted at once, `PODQ_MAX_CONCURRENT=8`, pods per second from
  the first dispatch to the last outcome, next to the bound the client rate limit sets
  (``PODQ_KUBE_QPS`` over the API requests each query makes, counted from the controller's log). It runs
  at the default QPS and again with the limit raised, which shows what the limiter itself costs.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.kube_pods import Namespace, bare_pod, wait_no_pods
from bench.kube_requests import PER_QUERY, request_kinds
from bench.latency import Series
from bench.stats import median, ms, ratio, table
from controller.launchers.kubernetes.client.api import KubeClient
from controller.launchers.kubernetes.client.config import load_config
from controller.launchers.kubernetes.options import KubernetesOptions
from controller.launchers.kubernetes.podspec import selector
from controller.models import TERMINAL, QueryIn
from controller.queue.admission import admit_query
from controller.settings import Settings
from controller.testing.process import ControllerProcess

SQL = "SELECT 1 AS one"
IMAGE_ENV = "PODQ_E2E_WORKER_IMAGE"
CAP = 8
QUERY_SECONDS = 600
# client-go's own default rate limit, which podq's default (kube-controller-manager's) is compared with.
CLIENT_GO_QPS, CLIENT_GO_BURST = 5.0, 10


@dataclass(frozen=True)
class Target:
    worker_image: str
    namespace: Namespace
    # Limits of every query of the throughput runs: small enough for CAP pods at once on a 2-core node.
    # The latency runs, one pod at a time, take podq's defaults.
    cpu: str
    memory: str

    @classmethod
    def from_env(
        cls, worker_image: str | None, namespace: str | None, labels: dict[str, str], cpu: str, memory: str
    ) -> Target:
        """Refuses (exits naming what is missing) without a kubeconfig or a worker image."""
        if not os.environ.get("KUBECONFIG"):
            raise SystemExit("bench: the kube section needs KUBECONFIG (a cluster holding the worker image)")
        image = worker_image or os.environ.get(IMAGE_ENV)
        if not image:
            raise SystemExit(f"bench: the kube section needs the worker image: --worker-image or {IMAGE_ENV}")
        name = namespace or f"podq-bench-{os.urandom(3).hex()}"
        return cls(image, Namespace(name, labels), cpu, memory)

    def settings(self, instance: str, *, small: bool, **extra: str) -> dict[str, str]:
        """The controller's environment; `small` gives every query the target's limits."""
        limits = {"PODQ_DEFAULT_CPU": self.cpu, "PODQ_DEFAULT_MEMORY": self.memory} if small else {}
        return {
            "PODQ_LAUNCHER": "kubernetes",
            "PODQ_KUBE_NAMESPACE": self.namespace.name,
            "PODQ_KUBE_INSTANCE": instance,
            "PODQ_WORKER_IMAGE": self.worker_image,
            "PODQ_LOG_LEVEL": "INFO",
            **limits,
            **extra,
        }


@dataclass(frozen=True)
class Throughput:
    qps: float
    burst: int
    queued: int
    seconds: float
    # API requests by kind over the controller's whole life, and those that each query makes.
    requests: dict[str, int]
    per_query: float

    @property
    def pods_per_second(self) -> float:
        return self.queued / self.seconds

    @property
    def bound(self) -> float:
        return self.qps / self.per_query


def _controller(target: Target, workdir: Path, name: str, *, small: bool, **extra: str) -> ControllerProcess:
    settings = target.settings(f"bench-{name}", small=small, **extra)
    return ControllerProcess(workdir / f"kube-{name}-data", settings, workdir / f"kube-{name}.log")


def kube_client() -> KubeClient:
    """The bench's own client: its requests are not podq's, so no rate limit worth the name."""
    return KubeClient(load_config(None, None), qps=1000, burst=1000, request_timeout=30)


async def submit(api: httpx.AsyncClient) -> str:
    response = await api.post("/v1/queries", json={"sql": SQL})
    response.raise_for_status()
    return response.headers["Location"]


async def finished(api: httpx.AsyncClient, location: str) -> dict[str, Any]:
    deadline = time.monotonic() + QUERY_SECONDS
    while time.monotonic() < deadline:
        response = await api.get(location, params={"wait": 30})
        response.raise_for_status()
        record: dict[str, Any] = response.json()
        if record["status"] in TERMINAL:
            if record["status"] != "succeeded":
                raise RuntimeError(f"podq query failed: {record}")
            return record
    raise TimeoutError(f"{location} not finished within {QUERY_SECONDS}s")


async def _latency(target: Target, url: str, instance: str, runs: int) -> tuple[Series, Series, list[Any]]:
    settings = Settings(
        launcher="kubernetes",
        kube_namespace=target.namespace.name,
        kube_instance="bench-floor",
        worker_image=target.worker_image,
    )
    admitted = admit_query(QueryIn(sql=SQL), settings)
    template = KubernetesOptions.from_settings(settings).pod
    podq, floor, records = Series("podq: submit -> result (HTTP)", []), Series("bare pod (floor)", []), []
    async with kube_client() as kube, httpx.AsyncClient(base_url=url, timeout=60) as api:
        for run in range(runs + 1):  # the first of each is a warm-up
            elapsed = await bare_pod(kube, template, admitted.request, admitted.limits)
            started = time.perf_counter()
            record = await finished(api, await submit(api))
            served = time.perf_counter() - started
            await wait_no_pods(kube, target.namespace.name, selector(instance))
            if run:
                floor.samples.append(elapsed)
                podq.samples.append(served)
                records.append(record)
    return podq, floor, records


async def _dispatch(url: str, queued: int) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=60) as api:
        locations = [await submit(api) for _ in range(queued)]
        records = [await finished(api, location) for location in locations]
    return float(max(r["finished_at"] for r in records) - min(r["started_at"] for r in records))


def _throughput(target: Target, workdir: Path, queued: int, qps: float, burst: int) -> Throughput:
    name = f"throughput-qps{qps:g}"
    controller = _controller(
        target,
        workdir,
        name,
        small=True,
        PODQ_MAX_CONCURRENT=str(CAP),
        PODQ_KUBE_QPS=str(qps),
        PODQ_KUBE_BURST=str(burst),
    )
    controller.start(timeout=60)
    try:
        seconds = asyncio.run(_dispatch(controller.url, queued))
        # The controller deletes each pod after storing its outcome: let it finish before stopping it.
        asyncio.run(pods_gone(target, f"bench-{name}"))
    finally:
        controller.stop()
    requests = request_kinds(controller.log_path.read_text(errors="replace"))
    per_query = sum(n for kind, n in requests.items() if kind in PER_QUERY) / queued
    return Throughput(qps, burst, queued, seconds, requests, per_query)


async def pods_gone(target: Target, instance: str) -> None:
    async with kube_client() as kube:
        await wait_no_pods(kube, target.namespace.name, selector(instance))


def measure(
    target: Target, workdir: Path, runs: int, queued: int
) -> tuple[list[Series], dict[str, float], list[Throughput]]:
    # Fresh controller data and logs: the request counts are read from the logs.
    workdir = Path(tempfile.mkdtemp(prefix="kube-", dir=workdir))
    target.namespace.create()
    try:
        controller = _controller(target, workdir, "latency", small=False)
        controller.start(timeout=60)
        try:
            podq, floor, records = asyncio.run(_latency(target, controller.url, "bench-latency", runs))
        finally:
            controller.stop()
        parts = {
            "queued (submitted -> started)": median([r["started_at"] - r["submitted_at"] for r in records]),
            "run (started -> finished)": median([r["finished_at"] - r["started_at"] for r in records]),
        }
        parts["HTTP and polling (rest)"] = podq.p50 - sum(parts.values())
        throughput = [
            _throughput(target, workdir, queued, CLIENT_GO_QPS, CLIENT_GO_BURST),
            _throughput(target, workdir, queued, _default("kube_qps"), _default("kube_burst")),
        ]
    finally:
        target.namespace.delete()
    return [podq, floor], parts, throughput


def _default(setting: str) -> Any:
    return Settings.model_fields[setting].default


def report(
    series: list[Series], parts: dict[str, float], throughput: list[Throughput], target: Target
) -> str:
    floor = series[1]
    rows = [
        [
            s.name,
            str(len(s.samples)),
            ms(s.p50),
            ms(s.p95),
            ratio(s.p50 / floor.p50),
            ratio(s.p95 / floor.p95),
        ]
        for s in series
    ]
    out = [
        f"Image {target.worker_image}. Latency: podq's default limits (cpu {_default('default_cpu')}, "
        f"memory {_default('default_memory')}); "
        f"throughput: cpu {target.cpu}, memory {target.memory}, so {CAP} pods fit at once.",
        "",
    ]
    out.append(
        table(
            ["path (SELECT 1, one at a time)", "runs", "p50 ms", "p95 ms", "p50 / floor", "p95 / floor"], rows
        )
    )
    out.append("")
    out.append(table(["where podq's p50 goes", "ms"], [[name, ms(value)] for name, value in parts.items()]))
    out.append("")
    header = [
        "dispatch, cap 8",
        "queries",
        "seconds",
        "pods/s",
        "API requests per query",
        "QPS / requests",
        "pods/s / bound",
    ]
    rows = [
        [
            f"QPS {t.qps:g}, burst {t.burst}",
            str(t.queued),
            f"{t.seconds:.1f}",
            f"{t.pods_per_second:.2f}",
            f"{t.per_query:.2f}",
            f"{t.bound:.2f}",
            ratio(t.pods_per_second / t.bound),
        ]
        for t in throughput
    ]
    out.append(table(header, rows))
    out.append("")
    kinds = sorted({kind for t in throughput for kind in t.requests})
    out.append(
        table(
            ["API requests (controller's whole run)", *(f"QPS {t.qps:g}" for t in throughput)],
            [[kind, *(str(t.requests.get(kind, 0)) for t in throughput)] for kind in kinds],
        )
    )
    return "\n".join(out)
