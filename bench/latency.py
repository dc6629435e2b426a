"""Section 2, local launcher latency: submit -> result of `SELECT 1` over HTTP against its floors.

Compared side by side: the real `podq serve` (local launcher, submit then long-poll the record) with warm
start (workers forked from a zygote, the default) and with cold starts (`PODQ_LOCAL_WARM_START=false`), the
worker as a bare subprocess (no controller), the same query called in-process (no new process), and a
fresh `python -c "import polars"` (the floor of any new worker process). The controller's own timestamps
(submitted/started/finished) split the HTTP round trip into queueing, the worker run and the rest, and
`python -X importtime` shows what a worker spends importing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.stats import median, ms, percentile, ratio, table
from controller.testing.process import ControllerProcess, wait_finished
from worker_image.protocol import REQUEST_ENV, FetchOptions, decode_envelope

REPO_ROOT = Path(__file__).resolve().parents[1]
SQL = "SELECT 1 AS one"
FETCH: FetchOptions = {
    "connect_timeout_seconds": 5,
    "read_timeout_seconds": 10,
    "total_timeout_seconds": 30,
    "max_download_bytes": 1024,
}


@dataclass(frozen=True)
class Series:
    name: str
    samples: list[float]

    @property
    def p50(self) -> float:
        return median(self.samples)

    @property
    def p95(self) -> float:
        return percentile(self.samples, 0.95)


def _repeat(name: str, run: Callable[[], None], runs: int) -> Series:
    run()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return Series(name, samples)


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PODQ_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _subprocess(argv: list[str], env: dict[str, str]) -> Callable[[], None]:
    def run() -> None:
        subprocess.run(argv, env=env, capture_output=True, check=True)

    return run


def _bare_worker(env: dict[str, str]) -> Callable[[], None]:
    request = {"operation": "query", "sql": SQL, "max_rows": 10, "max_result_bytes": 65536, "fetch": FETCH}
    worker_env = {**env, REQUEST_ENV: json.dumps(request)}

    def run() -> None:
        done = subprocess.run(
            [sys.executable, "-m", "worker_image"], env=worker_env, capture_output=True, text=True, check=True
        )
        decode_envelope(done.stdout)

    return run


def _in_process(scratch: Path) -> Callable[[], None]:
    from worker_image.sql import run_query

    def run() -> None:
        run_query(SQL, [], FETCH, scratch, max_rows=10, max_result_bytes=65536)

    return run


class _Podq:
    """Submit -> terminal record through a real controller; keeps the controller's own timestamps."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.records: list[dict[str, Any]] = []

    def __call__(self) -> None:
        response = self.client.post("/v1/queries", json={"sql": SQL})
        response.raise_for_status()
        record = wait_finished(self.client, response.headers["Location"])
        if record["status"] != "succeeded":
            raise RuntimeError(f"podq query failed: {record}")
        self.records.append(record)


def _import_costs(env: dict[str, str], top: int = 6) -> list[tuple[str, float]]:
    """Cumulative import time of the worker's heaviest top-level imports (`python -X importtime`)."""
    request = {"operation": "query", "sql": SQL, "max_rows": 10, "max_result_bytes": 65536, "fetch": FETCH}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "worker_image"],
        env={**env, REQUEST_ENV: json.dumps(request)},
        capture_output=True,
        text=True,
        check=True,
    )
    costs: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if cumulative.isdigit() and not name.startswith(" ") and "." not in name:
            costs[name] = max(costs.get(name, 0.0), int(cumulative) / 1e6)
    return sorted(costs.items(), key=lambda item: -item[1])[:top]


def measure(workdir: Path, runs: int) -> tuple[list[Series], dict[str, float], list[tuple[str, float]]]:
    env = _env()
    floor = _repeat(
        "python -c 'import polars' (floor)", _subprocess([sys.executable, "-c", "import polars"], env), runs
    )
    bare_python = _repeat("python -c 'pass'", _subprocess([sys.executable, "-c", "pass"], env), runs)
    worker = _repeat("python -m worker_image (bare subprocess)", _bare_worker(env), runs)
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        in_process = _repeat("run_query in-process", _in_process(Path(scratch)), runs)
    served: dict[str, Series] = {}
    parts: dict[str, float] = {}
    for mode in ("warm", "cold"):
        served[mode], records = _served(workdir, runs, warm=mode == "warm")
        parts[f"{mode}: queued (submitted -> started)"] = median(
            [r["started_at"] - r["submitted_at"] for r in records]
        )
        parts[f"{mode}: worker run (started -> finished)"] = median(
            [r["finished_at"] - r["started_at"] for r in records]
        )
        parts[f"{mode}: HTTP and polling (rest)"] = served[mode].p50 - sum(
            value for name, value in parts.items() if name.startswith(f"{mode}:")
        )
    series = [served["warm"], served["cold"], worker, floor, bare_python, in_process]
    return series, parts, _import_costs(env)


def _served(workdir: Path, runs: int, *, warm: bool) -> tuple[Series, list[dict[str, Any]]]:
    # A store of this run's own, even in a reused --workdir.
    run_dir = Path(tempfile.mkdtemp(prefix="latency-", dir=workdir))
    settings = {"PODQ_LOG_LEVEL": "WARNING", "PODQ_LOCAL_WARM_START": str(warm).lower()}
    controller = ControllerProcess(run_dir / "data", settings, run_dir / "controller.log")
    controller.start()
    try:
        with controller.client() as client:
            podq = _Podq(client)
            mode = "warm start" if warm else "cold start"
            served = _repeat(f"podq serve, {mode}: submit -> result (HTTP)", podq, runs)
    finally:
        controller.stop()
    return served, podq.records[1:]


def report(series: list[Series], parts: dict[str, float], imports: list[tuple[str, float]]) -> str:
    floor, bare = series[3], series[4]
    rows = [
        [s.name, str(len(s.samples)), ms(s.p50), ms(s.p95), ratio(s.p50 / floor.p50), ratio(s.p50 / bare.p50)]
        for s in series
    ]
    header = ["path (SELECT 1)", "runs", "p50 ms", "p95 ms", "p50 / import polars", "p50 / python -c pass"]
    out = [table(header, rows)]
    out.append("")
    out.append(table(["where podq's p50 goes", "ms"], [[name, ms(value)] for name, value in parts.items()]))
    out.append("")
    out.append(table(["worker import (cumulative, one run)", "ms"], [[n, ms(v)] for n, v in imports]))
    return "\n".join(out)
