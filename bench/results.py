"""Section 5, result downloads: one 100,000-row result fetched as JSON, CSV, Arrow and Parquet from
`GET /v1/queries/{id}/result`, side by side: bytes on the wire, download time, and the client's time to
parse the body into a polars DataFrame (JSON: `json.loads` and `pl.DataFrame` from the rows, which is
what a client of the JSON API has to do; it gets strings where Arrow and Parquet get types).

The result has the types a data platform cares about: Int64, String, Decimal(12, 2), Datetime with a time
zone, Float64 and List(Int64). The controller is a real `podq serve` (local launcher) with
`PODQ_MAX_RESULT_BYTES` at its 32 MiB ceiling, since 100,000 rows of JSON pass the 8 MiB default.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from bench.stats import median, ms, ratio, table
from controller.testing.fileserver import FileServer
from controller.testing.process import ControllerProcess

SQL = "SELECT id, name, amount, at, score, tags FROM t ORDER BY id"
FORMATS = ("json", "csv", "arrow", "parquet")


@dataclass(frozen=True)
class Download:
    format: str
    bytes: int
    fetch_seconds: float
    parse_seconds: float


def _frame(rows: int) -> pl.DataFrame:
    start = dt.datetime(2024, 1, 1)
    return pl.DataFrame(
        {
            "id": pl.int_range(rows, eager=True),
            "name": [f"customer_{i % 5000}" for i in range(rows)],
            "amount": pl.Series([f"{i % 100000 / 100:.2f}" for i in range(rows)]).cast(pl.Decimal(12, 2)),
            "at": pl.datetime_range(
                start, start + dt.timedelta(seconds=rows - 1), "1s", eager=True, time_zone="Europe/Amsterdam"
            ),
            "score": [i * 0.37 for i in range(rows)],
            "tags": [[i % 7, i % 11] for i in range(rows)],
        }
    )


def _parse_json(body: bytes) -> pl.DataFrame:
    result = json.loads(body)
    names = [column["name"] for column in result["columns"]]
    return pl.DataFrame(result["rows"], schema=names, orient="row")


def _parse_csv(body: bytes) -> pl.DataFrame:
    return pl.read_csv(io.BytesIO(body))


PARSERS: dict[str, Callable[[bytes], pl.DataFrame]] = {
    "json": _parse_json,
    "csv": _parse_csv,
    "arrow": pl.read_ipc_stream,
    "parquet": lambda body: pl.read_parquet(io.BytesIO(body)),
}


def measure(workdir: Path, rows: int = 100_000, repeats: int = 5) -> list[Download]:
    workdir = Path(tempfile.mkdtemp(prefix="results-", dir=workdir))
    data = workdir / "data"
    data.mkdir()
    _frame(rows).write_parquet(data / "t.parquet")
    settings = {
        "PODQ_MAX_RESULT_BYTES": str(32 * 2**20),
        "PODQ_FETCH_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        "PODQ_LOG_LEVEL": "WARNING",
    }
    controller = ControllerProcess(workdir / "store", settings, workdir / "controller.log")
    with FileServer(data) as server:
        controller.start()
        try:
            with controller.client(timeout=300) as client:
                body: dict[str, Any] = {
                    "sql": SQL,
                    "datasets": [{"url": f"{server.url}/t.parquet", "table_name": "t"}],
                    "max_rows": rows,
                    "limits": {"memory": "2Gi", "timeout_seconds": 300},
                }
                location = client.post("/v1/queries", json=body).headers["location"]
                record = client.get(location, params={"wait": 300}).json()
                if record["status"] != "succeeded" or record["result"]["truncated"]:
                    raise RuntimeError(f"the benchmark query did not return all its rows: {record}")
                return [_download(client, f"{location}/result", name, rows, repeats) for name in FORMATS]
        finally:
            controller.stop()


def _download(client: httpx.Client, path: str, name: str, rows: int, repeats: int) -> Download:
    fetches, parses, size = [], [], 0
    for _ in range(repeats + 1):  # the first is a warm-up
        started = time.perf_counter()
        response = client.get(path, params={"format": name})
        fetched = time.perf_counter()
        response.raise_for_status()
        frame = PARSERS[name](response.content)
        parsed = time.perf_counter()
        if frame.height != rows:
            raise RuntimeError(f"{name}: parsed {frame.height} rows, expected {rows}")
        fetches.append(fetched - started)
        parses.append(parsed - fetched)
        size = len(response.content)
    return Download(name, size, median(fetches[1:]), median(parses[1:]))


def report(downloads: list[Download], rows: int = 100_000) -> str:
    json_row = next(d for d in downloads if d.format == "json")
    return table(
        [
            f"{rows:,} rows",
            "bytes",
            "vs json",
            "download ms",
            "parse ms (client, to polars)",
            "parse vs json",
        ],
        [
            [
                d.format,
                f"{d.bytes:,}",
                ratio(d.bytes / json_row.bytes),
                ms(d.fetch_seconds),
                ms(d.parse_seconds),
                ratio(d.parse_seconds / json_row.parse_seconds),
            ]
            for d in downloads
        ],
    )


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="podq-bench-") as temporary:
        print(report(measure(Path(temporary))))
