"""Kubernetes, a query larger than the warm pool's size class (issue 15): a pool pod resized in place
(``PODQ_KUBE_WARM_POOL_RESIZE``) vs a cold pod, alternating, one query at a time.

Part of the kube section of ``python -m bench``, after `bench.kube_warm`. Two controllers on this host in
the section's namespace at its small limits (``--kube-cpu``, ``--kube-memory``: the pool's size class):
one keeps a pool of one pod and resizes it, the other has no pool and starts a cold pod. Every query is
`SELECT 1` at twice the class's memory (the same CPU, so the same polars threads). For each path:
submit -> result; for the resized one also the resize's part of it (the resize patch to the kubelet
reporting the new resources, as the controller logs it). (A cold pod's own start is not split out: the
API server's timestamps are whole seconds.) Each resize run starts once the pool pod is idle and running,
each cold run once the previous run's pods are gone; the first of each is a warm-up.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.kube import Target, finished, kube_client
from bench.kube_pods import wait_no_pods
from bench.kube_warm import pool_ready
from bench.latency import Series
from bench.stats import ms, ratio, table
from controller.launchers.kubernetes.podspec import selector
from controller.launchers.kubernetes.pool import POOL_POD_PREFIX
from controller.quantity import parse_memory_bytes
from controller.testing.process import ControllerProcess

COLD, RESIZE = "bench-resize-cold", "bench-resize-warm"
RESIZED = re.compile(r"pool pod \S+ resized in ([0-9.]+)s")


async def _served(api: httpx.AsyncClient, memory: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    response = await api.post("/v1/queries", json={"sql": "SELECT 1 AS one", "limits": {"memory": memory}})
    response.raise_for_status()
    record = await finished(api, response.headers["Location"])
    return time.perf_counter() - started, record


def _last_resize(controller: ControllerProcess) -> float:
    found = RESIZED.findall(controller.log())
    if not found:
        raise RuntimeError("the resizing controller resized no pool pod")
    return float(found[-1])


async def _alternate(
    namespace: str, memory: str, controllers: dict[str, ControllerProcess], runs: int
) -> list[Series]:
    cold, resized = Series("submit -> result, cold pod", []), Series("submit -> result, pool pod resized", [])
    applied = Series("of which the resize, patched -> applied", [])
    async with (
        kube_client() as kube,
        httpx.AsyncClient(base_url=controllers[COLD].url, timeout=60) as cold_api,
        httpx.AsyncClient(base_url=controllers[RESIZE].url, timeout=60) as resize_api,
    ):
        for run in range(runs + 1):  # the first of each is a warm-up
            await pool_ready(kube, namespace, RESIZE, 1)
            resize_seconds, record = await _served(resize_api, memory)
            if not record["placement"]["pod"].startswith(POOL_POD_PREFIX):
                raise RuntimeError(f"the resized query ran cold: {record['placement']}")
            await wait_no_pods(kube, namespace, selector(COLD))
            cold_seconds, _ = await _served(cold_api, memory)
            if run:
                resized.samples.append(resize_seconds)
                applied.samples.append(_last_resize(controllers[RESIZE]))
                cold.samples.append(cold_seconds)
    return [cold, resized, applied]


def measure(target: Target, workdir: Path, runs: int) -> list[Series]:
    workdir = Path(tempfile.mkdtemp(prefix="kube-resize-", dir=workdir))
    memory = str(2 * parse_memory_bytes(target.memory))
    target.namespace.create()
    pool = {"PODQ_KUBE_WARM_POOL_SIZE": "1", "PODQ_KUBE_WARM_POOL_RESIZE": "true"}
    controllers = {
        name: ControllerProcess(
            workdir / name, target.settings(name, small=True, **extra), workdir / f"{name}.log"
        )
        for name, extra in ((COLD, {}), (RESIZE, pool))
    }
    try:
        for controller in controllers.values():
            controller.start(timeout=60)
        return asyncio.run(_alternate(target.namespace.name, memory, controllers, runs))
    finally:
        for controller in controllers.values():
            controller.stop()
        target.namespace.delete()


def report(series: list[Series]) -> str:
    cold = series[0]
    header = ["SELECT 1 at twice the class's memory", "runs", "p50 ms", "p95 ms", "p50 / cold", "p95 / cold"]
    rows = [
        [s.name, str(len(s.samples)), ms(s.p50), ms(s.p95), ratio(s.p50 / cold.p50), ratio(s.p95 / cold.p95)]
        for s in series
    ]
    return table(header, rows)
