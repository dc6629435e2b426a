"""Kubernetes with a warm pool (issue 15): `SELECT 1` submit -> result through a controller with
``PODQ_KUBE_WARM_POOL_SIZE`` vs one without, alternating, one query at a time.

Part of the kube section of ``python -m bench``, after `bench.kube`'s runs. Both controllers run on this
host in the section's namespace, at the section's small limits (``--kube-cpu``, ``--kube-memory``: the
pool's size class), so the pool and a cold pod fit on a 2-core node at once. Each warm run starts
once the pool is back at its size with every pod running (the steady state of a pool that keeps up), each
cold run once the previous run's pods are gone; the first run of each is a warm-up. `bench` prints the
load average before and after, since the cluster's node shares this machine.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from bench.kube import Target, finished, kube_client, submit
from bench.kube_pods import POD_GONE_SECONDS, POLL_SECONDS, wait_no_pods
from bench.latency import Series
from bench.stats import ms, ratio, table
from controller.launchers.kubernetes.client.api import KubeClient
from controller.launchers.kubernetes.podspec import selector
from controller.launchers.kubernetes.pool import IDLE, LABEL_WARM
from controller.testing.process import ControllerProcess

COLD, WARM = "bench-cold", "bench-warm"
POOL_SIZE = 2


async def pool_ready(kube: KubeClient, namespace: str, instance: str, size: int) -> None:
    """Until exactly `size` pods of the controller `instance` exist, all of them idle and running."""
    deadline = time.monotonic() + POD_GONE_SECONDS
    while True:
        pods, _ = await kube.list_pods(namespace, selector(instance))
        idle = [p for p in pods if p["metadata"]["labels"].get(LABEL_WARM) == IDLE]
        running = [p for p in idle if (p.get("status") or {}).get("phase") == "Running"]
        if len(pods) == len(running) == size:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the pool of {size} not ready within {POD_GONE_SECONDS}s")
        await asyncio.sleep(POLL_SECONDS)


async def _served(api: httpx.AsyncClient) -> float:
    started = time.perf_counter()
    await finished(api, await submit(api))
    return time.perf_counter() - started


async def _alternate(namespace: str, cold_url: str, warm_url: str, runs: int, size: int) -> list[Series]:
    cold, warm = Series("cold pod", []), Series(f"warm pool of {size}", [])
    async with (
        kube_client() as kube,
        httpx.AsyncClient(base_url=cold_url, timeout=60) as cold_api,
        httpx.AsyncClient(base_url=warm_url, timeout=60) as warm_api,
    ):
        for run in range(runs + 1):  # the first of each is a warm-up
            await pool_ready(kube, namespace, WARM, size)
            warm_seconds = await _served(warm_api)
            await wait_no_pods(kube, namespace, selector(COLD))
            cold_seconds = await _served(cold_api)
            if run:
                warm.samples.append(warm_seconds)
                cold.samples.append(cold_seconds)
    return [cold, warm]


def measure(target: Target, workdir: Path, runs: int, size: int) -> list[Series]:
    workdir = Path(tempfile.mkdtemp(prefix="kube-warm-", dir=workdir))
    target.namespace.create()
    controllers = [
        ControllerProcess(workdir / name, target.settings(name, small=True, **extra), workdir / f"{name}.log")
        for name, extra in ((COLD, {}), (WARM, {"PODQ_KUBE_WARM_POOL_SIZE": str(size)}))
    ]
    try:
        for controller in controllers:
            controller.start(timeout=60)
        return asyncio.run(
            _alternate(target.namespace.name, controllers[0].url, controllers[1].url, runs, size)
        )
    finally:
        for controller in controllers:
            controller.stop()
        target.namespace.delete()


def report(series: list[Series]) -> str:
    cold = series[0]
    rows = [
        [s.name, str(len(s.samples)), ms(s.p50), ms(s.p95), ratio(s.p50 / cold.p50), ratio(s.p95 / cold.p95)]
        for s in series
    ]
    header = ["SELECT 1, submit -> result", "runs", "p50 ms", "p95 ms", "p50 / cold", "p95 / cold"]
    return table(header, rows)
