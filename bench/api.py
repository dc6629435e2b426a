"""Section 3, API and store: submissions/s with concurrent clients, list/get latency and RSS at a full queue.

The controller's worker is a stand-in that sleeps (PODQ_WORKER_PYTHON), with one query running at a
time, so every submission stays queued and nothing but the API and the SQLite store is measured. The
submission rate is set beside the rate of `GET /healthz` from the same clients: the HTTP stack's floor.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.latency import Series
from bench.stats import median, ms, percentile, ratio, table
from controller.testing.process import ControllerProcess

STAND_IN = "#!/bin/sh\nexec sleep 3600\n"


@dataclass(frozen=True)
class ApiResults:
    clients: int
    submitted: int
    submit_rate: float
    healthz_rate: float
    latencies: list[Series]
    rss_idle_mib: float
    rss_full_mib: float


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _rate(
    url: str, clients: int, total: int, call: Callable[[httpx.Client], str | None]
) -> tuple[float, list[str]]:
    """Requests/s of `clients` threads sharing `total` calls; returns what the calls returned."""
    lock = threading.Lock()
    remaining = [total]
    results: list[str] = []

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                value = call(client)
                if value is not None:
                    with lock:
                        results.append(value)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client_loop) for _ in range(clients)]:
            future.result()
    return total / (time.perf_counter() - started), results


def _submit(client: httpx.Client) -> str:
    response = client.post("/v1/queries", json={"sql": "SELECT 1 AS one"})
    if response.status_code != 202:
        raise RuntimeError(f"submission refused: {response.status_code} {response.text}")
    return str(response.headers["Location"])


def _healthz(client: httpx.Client) -> None:
    client.get("/healthz").raise_for_status()


def _latency(name: str, client: httpx.Client, paths: list[str]) -> Series:
    samples = []
    for path in paths:
        started = time.perf_counter()
        client.get(path).raise_for_status()
        samples.append(time.perf_counter() - started)
    return Series(name, samples)


def stand_in_settings(workdir: Path, *, max_queued: int) -> dict[str, str]:
    """A controller whose one worker at a time only sleeps: what is measured is the API and the store."""
    stand_in = workdir / "sleeping-worker"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    return {
        "PODQ_WORKER_PYTHON": str(stand_in),
        "PODQ_MAX_CONCURRENT": "1",
        "PODQ_MAX_QUEUED": str(max_queued),
        "PODQ_DEFAULT_TIMEOUT_SECONDS": "600",
        "PODQ_LOG_LEVEL": "WARNING",
    }


def measure(workdir: Path, stored: int, clients: int, runs: int) -> ApiResults:
    # A store of this run's own: one left in a reused --workdir would add its queries to `stored`.
    workdir = Path(tempfile.mkdtemp(prefix="api-", dir=workdir))
    settings = stand_in_settings(workdir, max_queued=stored * 2)
    controller = ControllerProcess(workdir / "api-data", settings, workdir / "api.log")
    controller.start()
    assert controller.process is not None
    try:
        healthz_rate, _ = _rate(controller.url, clients, 2000, _healthz)
        rss_idle = _rss_mib(controller.process.pid)
        submit_rate, locations = _rate(controller.url, clients, stored, _submit)
        rss_full = _rss_mib(controller.process.pid)
        picks = random.Random(5).choices(locations, k=runs)
        with controller.client() as client:
            latencies = [
                _latency("GET /v1/queries?limit=50", client, ["/v1/queries?limit=50"] * runs),
                _latency(
                    "GET /v1/queries?status=queued&limit=50",
                    client,
                    ["/v1/queries?status=queued&limit=50"] * runs,
                ),
                _latency("GET /v1/queries?limit=500", client, ["/v1/queries?limit=500"] * runs),
                _latency("GET /v1/queries/{id}", client, picks),
            ]
    finally:
        controller.stop()
    return ApiResults(clients, stored, submit_rate, healthz_rate, latencies, rss_idle, rss_full)


def report(results: ApiResults) -> str:
    throughput = table(
        [f"{results.clients} concurrent clients", "requests/s", "vs healthz"],
        [
            [
                "POST /v1/queries (accepted, stays queued)",
                f"{results.submit_rate:.0f}",
                ratio(results.submit_rate / results.healthz_rate),
            ],
            ["GET /healthz (HTTP floor)", f"{results.healthz_rate:.0f}", ratio(1.0)],
        ],
    )
    latency = table(
        [f"with {results.submitted} stored queries", "runs", "p50 ms", "p95 ms"],
        [
            [s.name, str(len(s.samples)), ms(median(s.samples)), ms(percentile(s.samples, 0.95))]
            for s in results.latencies
        ],
    )
    rss = table(
        ["controller RSS", "MiB"],
        [
            ["idle (after warm-up)", f"{results.rss_idle_mib:.0f}"],
            [f"{results.submitted} queued", f"{results.rss_full_mib:.0f}"],
        ],
    )
    return "\n\n".join([throughput, latency, rss])
