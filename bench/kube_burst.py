"""Kubernetes, a burst (issue 15): `queries` `SELECT 1` submitted at once to a controller at
``PODQ_MAX_CONCURRENT=8`` with a warm pool of 4, and to one without a pool, one burst after the other in the
same run; from the first submission, the time to the first result and to the last.

Part of the kube section of ``python -m bench``, after `bench.kube_warm`. Both controllers run on this host
in the section's namespace at its small limits (``--kube-cpu``, ``--kube-memory``: the pool's size class).
The warm burst starts once the pool is at its size with every pod running; the cold one once the warm
burst's pods are gone. A pool of 4 serves the first 4 queries at once; the other 16 start cold pods
(misses: empty) while the pool refills, so the last result shows what the refill adds to a cold start.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.kube import Target, finished, kube_client, submit
from bench.kube_pods import wait_no_pods
from bench.kube_warm import pool_ready
from bench.stats import ms, ratio, table
from controller.launchers.kubernetes.podspec import selector
from controller.testing.process import ControllerProcess

COLD, WARM = "bench-burst-cold", "bench-burst-warm"
POOL_SIZE, CAP = 4, 8


@dataclass(frozen=True)
class Burst:
    name: str
    first: float  # seconds from the first submission to the first result
    last: float  # and to the last


async def _burst(name: str, url: str, queries: int) -> Burst:
    async with httpx.AsyncClient(base_url=url, timeout=60) as api:
        started = time.perf_counter()

        async def one() -> float:
            await finished(api, await submit(api))
            return time.perf_counter() - started

        done = await asyncio.gather(*(one() for _ in range(queries)))
    return Burst(name, min(done), max(done))


async def _both(namespace: str, cold_url: str, warm_url: str, queries: int) -> list[Burst]:
    async with kube_client() as kube:
        await pool_ready(kube, namespace, WARM, POOL_SIZE)
        warm = await _burst(f"warm pool of {POOL_SIZE}", warm_url, queries)
        await pool_ready(kube, namespace, WARM, POOL_SIZE)
        await wait_no_pods(kube, namespace, selector(COLD))
        cold = await _burst("cold pods", cold_url, queries)
    return [cold, warm]


def measure(target: Target, workdir: Path, queries: int) -> list[Burst]:
    workdir = Path(tempfile.mkdtemp(prefix="kube-burst-", dir=workdir))
    target.namespace.create()
    pool = {"PODQ_KUBE_WARM_POOL_SIZE": str(POOL_SIZE)}
    controllers = [
        ControllerProcess(
            workdir / name,
            target.settings(name, small=True, PODQ_MAX_CONCURRENT=str(CAP), **extra),
            workdir / f"{name}.log",
        )
        for name, extra in ((COLD, {}), (WARM, pool))
    ]
    try:
        for controller in controllers:
            controller.start(timeout=60)
        return asyncio.run(_both(target.namespace.name, controllers[0].url, controllers[1].url, queries))
    finally:
        for controller in controllers:
            controller.stop()
        target.namespace.delete()


def report(bursts: list[Burst], queries: int) -> str:
    cold = bursts[0]
    rows = [
        [b.name, ms(b.first), ms(b.last), ratio(b.first / cold.first), ratio(b.last / cold.last)]
        for b in bursts
    ]
    header = [
        f"{queries} x SELECT 1 at once, cap {CAP}",
        "first result ms",
        "last result ms",
        "first / cold",
        "last / cold",
    ]
    return table(header, rows)
