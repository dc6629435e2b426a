"""Section 2 (continued), warm start on the embedded default: throughput and memory, warm vs cold.

Throughput: `queries` `SELECT 1` submitted at once to a controller with `PODQ_MAX_CONCURRENT=cap`, from the
first submission to the last terminal record. Memory (warm start): with `cap` queries asleep in their
workers (a test hook), the zygote's RSS and PSS and each worker's PSS and private memory
(/proc/<pid>/smaps_rollup); PSS shares the zygote's pages among the processes mapping them, private is
what a worker alone holds.
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.stats import median, table
from controller.testing.process import ControllerProcess, wait_finished

SQL = "SELECT 1 AS one"
ZYGOTE_MODULE = "worker_image.zygote"


@dataclass(frozen=True)
class Memory:
    zygote_rss: int | None
    zygote_pss: int | None
    worker_pss: float
    worker_private: float
    workers: int


def controller(workdir: Path, *, warm: bool, **settings: str) -> ControllerProcess:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{'warm' if warm else 'cold'}-", dir=workdir))
    env = {"PODQ_LOG_LEVEL": "WARNING", "PODQ_LOCAL_WARM_START": str(warm).lower(), **settings}
    process = ControllerProcess(run_dir / "data", env, run_dir / "controller.log")
    process.start()
    return process


def throughput(workdir: Path, *, warm: bool, queries: int, cap: int) -> float:
    """Queries per second."""
    served = controller(workdir, warm=warm, PODQ_MAX_CONCURRENT=str(cap), PODQ_MAX_QUEUED=str(queries * 2))
    try:
        with served.client() as client, ThreadPoolExecutor(16) as pool:
            wait_finished(client, client.post("/v1/queries", json={"sql": SQL}).headers["Location"])

            def one(_: int) -> str:
                response = client.post("/v1/queries", json={"sql": SQL})
                response.raise_for_status()
                status: str = wait_finished(client, response.headers["Location"], timeout=600)["status"]
                return status

            started = time.perf_counter()
            statuses = list(pool.map(one, range(queries)))
            elapsed = time.perf_counter() - started
    finally:
        served.stop()
    if set(statuses) != {"succeeded"}:
        raise RuntimeError(f"throughput run: not all succeeded: {sorted(set(statuses))}")
    return queries / elapsed


def _descendants(root: int) -> list[tuple[int, int, int, str]]:
    """(pid, ppid, sid, cmdline) of every descendant of `root`."""
    table_: list[tuple[int, int, int, str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        table_.append((int(entry), int(stat[1]), int(stat[3]), cmdline))
    found, pending = [], [root]
    while pending:
        parent = pending.pop()
        for row in table_:
            if row[1] == parent:
                found.append(row)
                pending.append(row[0])
    return found


def _rollup(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        values[name] = int(rest.split()[0]) * 1024
    return values


def memory(workdir: Path, *, warm: bool, cap: int) -> Memory:
    served = controller(workdir, warm=warm, PODQ_MAX_CONCURRENT=str(cap), PODQ_ENABLE_TEST_HOOKS="true")
    try:
        with served.client() as client:
            body = {"sql": SQL, "debug": {"sleep_seconds": 8}}
            locations = [client.post("/v1/queries", json=body).headers["Location"] for _ in range(cap)]
            assert served.process is not None
            deadline = time.monotonic() + 30
            while True:
                procs = _descendants(served.process.pid)
                workers = [p for p in procs if p[0] == p[2] and "worker_image" in p[3]]
                if len(workers) >= cap or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            time.sleep(1.0)
            zygotes = [p for p in procs if ZYGOTE_MODULE in p[3] and p[0] != p[2]]
            rollups = [_rollup(pid) for pid, *_ in workers]
            zygote = _rollup(zygotes[0][0]) if zygotes else {}
            for location in locations:
                wait_finished(client, location)
    finally:
        served.stop()
    return Memory(
        zygote_rss=zygote.get("Rss"),
        zygote_pss=zygote.get("Pss"),
        worker_pss=median([r["Pss"] for r in rollups]),
        worker_private=median([r["Private_Clean"] + r["Private_Dirty"] for r in rollups]),
        workers=len(rollups),
    )


def measure(workdir: Path, queries: int, cap: int) -> tuple[dict[str, float], dict[str, Memory]]:
    rates = {
        mode: throughput(workdir, warm=mode == "warm", queries=queries, cap=cap) for mode in ("cold", "warm")
    }
    # Warm only: a cold worker asleep in the test hook has not imported polars yet, so its figure would
    # flatter it.
    memories = {"warm": memory(workdir, warm=True, cap=cap)}
    return rates, memories


def report(rates: dict[str, float], memories: dict[str, Memory], queries: int, cap: int) -> str:
    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value / 2**20:.0f}"

    out = [
        table(
            [f"throughput: {queries} x SELECT 1 at cap {cap}", "queries/s"],
            [[m, f"{r:.1f}"] for m, r in rates.items()],
        )
    ]
    out.append("")
    rows = [
        [mode, mib(m.zygote_rss), mib(m.zygote_pss), mib(m.worker_pss), mib(m.worker_private), str(m.workers)]
        for mode, m in memories.items()
    ]
    header = ["memory (MiB)", "zygote RSS", "zygote PSS", "worker PSS (median)", "worker private", "workers"]
    out.append(table(header, rows))
    return "\n".join(out)
