"""Durable submissions/s by store backend: SQLite (one controller) against PostgreSQL with one and with two
controllers, the same clients spread over the controllers. Like bench/api.py the worker is a stand-in
and one query runs at a time, so what is measured is the API and the store's durable insert.

`python -m bench.backends URL1 URL2`: two empty PostgreSQL databases (one per PostgreSQL row) the
controllers may create tables in, on a server that syncs its commits (fsync and synchronous_commit on).
"""

from __future__ import annotations

import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.api import _rate, _submit, stand_in_settings
from bench.stats import table
from controller.testing.process import ControllerProcess


def _controllers(
    workdir: Path, replicas: int, database_url: str | None, stored: int
) -> list[ControllerProcess]:
    settings = {
        **stand_in_settings(workdir, max_queued=stored * 4),
        **({"PODQ_DATABASE_URL": database_url} if database_url else {}),
    }
    return [
        ControllerProcess(workdir / f"data-{n}", settings, workdir / f"controller-{n}.log")
        for n in range(replicas)
    ]


def submissions_per_second(
    workdir: Path, replicas: int, database_url: str | None, clients: int = 20, stored: int = 2000
) -> float:
    workdir = Path(tempfile.mkdtemp(prefix="backends-", dir=workdir))
    controllers = _controllers(workdir, replicas, database_url, stored)
    for controller in controllers:
        controller.start()
    try:
        # Each controller gets its share of the clients and of the submissions, all at once.
        with ThreadPoolExecutor(len(controllers)) as pool:
            started = time.perf_counter()
            list(
                pool.map(
                    lambda c: _rate(c.url, clients // len(controllers), stored // len(controllers), _submit),
                    controllers,
                )
            )
            return stored / (time.perf_counter() - started)
    finally:
        for controller in controllers:
            controller.stop()


def main(one: str, two: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rows = [
            ["SQLite, 1 controller", f"{submissions_per_second(workdir, 1, None):.0f}"],
            ["PostgreSQL, 1 controller", f"{submissions_per_second(workdir, 1, one):.0f}"],
            ["PostgreSQL, 2 controllers", f"{submissions_per_second(workdir, 2, two):.0f}"],
        ]
    print(table(["20 clients, 2000 submissions", "durable submissions/s"], rows))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
