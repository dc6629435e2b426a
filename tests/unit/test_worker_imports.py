"""The worker's start-up: a query without datasets never imports the fetch (httpx) or the parquet check
(pyarrow), which together were a third of a `SELECT 1` worker's run (BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from worker_image.protocol import REQUEST_ENV, decode_envelope

pytestmark = pytest.mark.unit

HEAVY = ("httpx", "httpcore", "pyarrow")
FETCH = {
    "connect_timeout_seconds": 5,
    "read_timeout_seconds": 5,
    "total_timeout_seconds": 10,
    "max_download_bytes": 1024,
}
# Runs the worker as `python -m worker_image` does, then reports which of HEAVY it imported.
PROBE = (
    "import json, sys\n"
    "from worker_image.__main__ import main\n"
    "main()\n"
    f"print(json.dumps(sorted(name for name in {HEAVY!r} if name in sys.modules)))\n"
)


def _imported(request: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PODQ_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**env, REQUEST_ENV: json.dumps(request)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    worker_output, _, imported_line = done.stdout.rstrip("\n").rpartition("\n")
    return decode_envelope(worker_output), json.loads(imported_line)


@pytest.mark.parametrize(
    ("datasets", "ok", "imported"),
    [
        ([], True, []),
        # The control: a dataset (refused by the address policy, so nothing is fetched) loads all three.
        ([{"url": "http://127.0.0.1:9/t.parquet", "table_name": "t"}], False, sorted(HEAVY)),
    ],
    ids=["no-datasets", "with-a-dataset"],
)
def test_only_a_query_with_datasets_imports_httpx_and_pyarrow(
    datasets: list[dict[str, str]], ok: bool, imported: list[str]
) -> None:
    request = {
        "operation": "query",
        "sql": "SELECT 1 AS one" if not datasets else "SELECT * FROM t",
        "datasets": datasets,
        "max_rows": 10,
        "max_result_bytes": 65536,
        "fetch": FETCH,
    }
    envelope, loaded = _imported(request)
    assert envelope["ok"] is ok, envelope
    assert loaded == imported
