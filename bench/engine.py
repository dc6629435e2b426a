"""Section 1, the worker engine: podq's worker end to end vs polars in-process vs DuckDB, per query.

The worker runs as `python -m worker_image` with the request in PODQ_REQUEST and fetches every table over
HTTP from a loopback file server, as it would in production (the fetch policy must allow 127.0.0.0/8).
Polars and DuckDB read the same files from local disk in this process. Each figure is the median of
`repeats` runs after one warm-up run per engine. "net" is the worker less its fixed cost (a worker run of
`SELECT 1` over no dataset: interpreter, imports, envelope), leaving the fetch, the checks and the query.
"warm" is the same request through the local launcher with warm start (a worker forked from its zygote,
in its cgroups where writable): what a query costs on the embedded default.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import polars as pl

from bench.data import TABLES
from bench.queries import QUERIES
from bench.stats import geomean, median, ms, ratio, table
from controller.launchers.base import Job, Limits
from controller.launchers.local.launcher import LocalLauncher
from controller.testing.fileserver import FileServer
from worker_image.protocol import REQUEST_ENV, WorkerRequest, decode_envelope

if TYPE_CHECKING:
    import duckdb

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_ROWS = 1000
# polars threads (whole cores) of a warm worker: the machine's, as a bare worker gets.
WARM_THREADS = os.cpu_count() or 1


@dataclass(frozen=True)
class QueryTimes:
    name: str
    worker: float
    # The worker less its fixed cost (a `SELECT 1` worker run): fetch, checks and the query itself.
    worker_net: float
    polars: float
    duckdb: float
    rows: int
    # Through the local launcher, forked from a zygote.
    warm: float


def _timed(run: Callable[[], int], repeats: int) -> tuple[float, int]:
    rows = run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return median(samples), rows


def _request(sql: str, tables: tuple[str, ...], base_url: str) -> dict[str, Any]:
    return {
        "operation": "query",
        "sql": sql,
        "datasets": [{"url": f"{base_url}/{name}.parquet", "table_name": name} for name in tables],
        "max_rows": MAX_ROWS,
        "max_result_bytes": 16 * 1024 * 1024,
        "fetch": {
            "connect_timeout_seconds": 5,
            "read_timeout_seconds": 60,
            "total_timeout_seconds": 600,
            "max_download_bytes": 8 * 1024**3,
            "allowed_networks": ["127.0.0.0/8"],
        },
    }


def _worker_runner(sql: str, tables: tuple[str, ...], base_url: str, scratch: Path) -> Callable[[], int]:
    request = _request(sql, tables, base_url)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PODQ_")}
    env.update({"PYTHONPATH": str(REPO_ROOT), REQUEST_ENV: json.dumps(request), "TMPDIR": str(scratch)})

    def run() -> int:
        done = subprocess.run(
            [sys.executable, "-m", "worker_image"], env=env, capture_output=True, text=True, check=False
        )
        envelope = decode_envelope(done.stdout)
        if not envelope["ok"]:
            raise RuntimeError(f"worker failed: {envelope['error']}")
        rows: int = envelope["result"]["total_rows"]
        return rows

    return run


class _WarmLauncher:
    """A local launcher with warm start on an event loop of its own, for synchronous timing."""

    def __init__(self, work_dir: Path) -> None:
        self._runner = asyncio.Runner()
        self._launcher = LocalLauncher(
            work_dir=work_dir, warm_start=True, warm_threads=(WARM_THREADS,), wait_for_zygotes=True
        )
        self._runner.run(self._launcher.start())
        self._queries = itertools.count()

    def runner(self, sql: str, tables: tuple[str, ...], base_url: str) -> Callable[[], int]:
        request = cast(WorkerRequest, _request(sql, tables, base_url))
        limits = Limits(cpu_millicores=WARM_THREADS * 1000, memory_bytes=4 * 2**30, timeout_seconds=600)

        def run() -> int:
            job = Job(f"bench-{next(self._queries)}", 1, request, limits)
            outcome = self._runner.run(self._launcher.run(job))
            if outcome.result is None or outcome.placement.get("start") != "warm":
                raise RuntimeError(f"warm worker failed: {outcome}")
            rows: int = outcome.result["total_rows"]
            return rows

        return run

    def close(self) -> None:
        self._runner.run(self._launcher.close())
        self._runner.close()


def _polars_runner(sql: str, paths: dict[str, Path]) -> Callable[[], int]:
    def run() -> int:
        context = pl.SQLContext({name: pl.scan_parquet(path) for name, path in paths.items()})
        return context.execute(sql).collect().height

    return run


def _duckdb_runner(sql: str, connection: duckdb.DuckDBPyConnection) -> Callable[[], int]:
    def run() -> int:
        return len(connection.execute(sql).fetchall())

    return run


def measure(paths: dict[str, Path], scratch: Path, repeats: int) -> list[QueryTimes]:
    directory = next(iter(paths.values())).parent
    scratch.mkdir(parents=True, exist_ok=True)
    # Imported here: DuckDB is the `bench` extra, and the other sections run without it.
    try:
        import duckdb
    except ImportError:
        raise SystemExit("the engine section needs DuckDB: pip install -e '.[bench]'") from None

    connection = duckdb.connect()
    for name, path in paths.items():
        connection.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")
    results = []
    warm = _WarmLauncher(scratch / "warm")
    with FileServer(directory) as server:
        startup, _ = _timed(_worker_runner("SELECT 1 AS one", (), server.url, scratch), repeats)
        for name, sql in QUERIES.items():
            worker, worker_rows = _timed(_worker_runner(sql, TABLES, server.url, scratch), repeats)
            warm_time, warm_rows = _timed(warm.runner(sql, TABLES, server.url), repeats)
            in_process, polars_rows = _timed(_polars_runner(sql, paths), repeats)
            reference, duckdb_rows = _timed(_duckdb_runner(sql, connection), repeats)
            if not worker_rows == warm_rows == polars_rows == duckdb_rows:
                counts = (worker_rows, warm_rows, polars_rows, duckdb_rows)
                raise RuntimeError(f"{name}: row counts differ: {counts}")
            # Noise can make the difference negative on tiny data; clamp so the geometric mean stays defined.
            net = max(worker - startup, 1e-4)
            results.append(QueryTimes(name, worker, net, in_process, reference, polars_rows, warm_time))
    warm.close()
    connection.close()
    return results


def report(label: str, results: list[QueryTimes]) -> str:
    rows = [
        [
            r.name,
            str(r.rows),
            ms(r.worker),
            ms(r.worker_net),
            ms(r.warm),
            ms(r.polars),
            ms(r.duckdb),
            ratio(r.worker / r.polars),
            ratio(r.worker_net / r.polars),
            ratio(r.warm / r.polars),
            ratio(r.polars / r.duckdb),
            ratio(r.worker / r.duckdb),
        ]
        for r in results
    ]
    rows.append(
        [
            "**geomean**",
            "",
            "",
            "",
            "",
            "",
            "",
            ratio(geomean([r.worker / r.polars for r in results])),
            ratio(geomean([r.worker_net / r.polars for r in results])),
            ratio(geomean([r.warm / r.polars for r in results])),
            ratio(geomean([r.polars / r.duckdb for r in results])),
            ratio(geomean([r.worker / r.duckdb for r in results])),
        ]
    )
    header = [
        f"query ({label})",
        "rows",
        "worker ms",
        "worker net ms",
        "warm ms",
        "polars ms",
        "duckdb ms",
        "worker/polars",
        "net/polars",
        "warm/polars",
        "polars/duckdb",
        "worker/duckdb",
    ]
    return table(header, rows)
