"""Dispatch on Kubernetes with two active controllers against one, both on PostgreSQL: `queued` queries
submitted at once, spread over the controllers, the global cap (`PODQ_MAX_CONCURRENT=8`) held in the
store across them; pods per second from the first dispatch to the last outcome. The two alternate, one
controller then two, `pairs` times, each run on a fresh database and its pods gone before the next starts.

`python -m bench.kube_replicas URL [--pairs N] [--queued N]`: URL connects to a PostgreSQL server as a
role that may create databases (each run gets a new one, left for inspection). The cluster and worker image
come from the environment as for `python -m bench --only kube` (`KUBECONFIG`, `PODQ_E2E_WORKER_IMAGE`).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg

from bench.kube import CAP, Target, finished, pods_gone, submit
from bench.stats import table
from controller.testing.process import ControllerProcess

INSTANCE = "bench-replicas"


def _fresh_database(server_url: str, run: int) -> str:
    """The URL of a new, empty database on the server `server_url` connects to."""
    name = f"podq_bench_replicas_{run}"
    with psycopg.connect(server_url, autocommit=True) as db:
        db.execute(f"DROP DATABASE IF EXISTS {name}".encode())
        db.execute(f"CREATE DATABASE {name}".encode())
    return urlsplit(server_url)._replace(path=f"/{name}").geturl()


async def _dispatch(urls: list[str], queued: int) -> float:
    clients = [httpx.AsyncClient(base_url=url, timeout=60) for url in urls]
    try:
        locations = [(n % len(clients), await submit(clients[n % len(clients)])) for n in range(queued)]
        records = [await finished(clients[n], location) for n, location in locations]
    finally:
        for client in clients:
            await client.aclose()
    return float(max(r["finished_at"] for r in records) - min(r["started_at"] for r in records))


def dispatch_seconds(target: Target, workdir: Path, database_url: str, replicas: int, queued: int) -> float:
    settings = target.settings(
        INSTANCE, small=True, PODQ_MAX_CONCURRENT=str(CAP), PODQ_DATABASE_URL=database_url
    )
    controllers = [
        ControllerProcess(workdir / f"data-{n}", settings, workdir / f"controller-{n}.log")
        for n in range(replicas)
    ]
    try:
        for controller in controllers:
            controller.start(timeout=60)
        seconds = asyncio.run(_dispatch([c.url for c in controllers], queued))
        asyncio.run(pods_gone(target, INSTANCE))
        return seconds
    finally:
        for controller in controllers:
            controller.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.kube_replicas", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("server_url")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--queued", type=int, default=200)
    parser.add_argument("--kube-cpu", default="200m")
    parser.add_argument("--kube-memory", default="256Mi")
    args = parser.parse_args()
    target = Target.from_env(None, None, {"podq.dev/test": "bench"}, args.kube_cpu, args.kube_memory)
    rows = []
    target.namespace.create()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for pair in range(args.pairs):
                for replicas in (1, 2):
                    run = 2 * pair + replicas
                    workdir = Path(tmp) / f"run{run}"
                    workdir.mkdir()
                    url = _fresh_database(args.server_url, run)
                    seconds = dispatch_seconds(target, workdir, url, replicas, args.queued)
                    rows.append(
                        [
                            str(pair + 1),
                            str(replicas),
                            str(args.queued),
                            f"{seconds:.1f}",
                            f"{args.queued / seconds:.2f}",
                        ]
                    )
                    print(" | ".join(rows[-1]), flush=True)
    finally:
        target.namespace.delete()
    print(table(["pair", "controllers", "queries", "seconds", "pods/s"], rows))


if __name__ == "__main__":
    main()
