"""`GET /v1/queries/{id}/result` against a real `podq serve`: every type polars SQL returns keeps its type
through the worker's Arrow stream, the store and the download, as Arrow and as Parquet; the caps cut
every format alike and the headers say so; 404, 409 and 406 in the API's error shape; the client's
`result()` and `podq result --format arrow|parquet`."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from controller.testing.process import REPO_ROOT, ControllerProcess
from podq.client import AsyncClient, Client, Conflict, NotFound
from tests.support.api import run, sleeper, submit

pytestmark = pytest.mark.integration

StartController = Callable[..., ControllerProcess]

# Every type polars SQL can return, over the fixture's types.parquet (tests/support/parquet_files.py:
# date, datetime with a zone, time, duration, decimal, floats with NaN and ±inf, a null Int64, binary that
# is not UTF-8, list, struct, categorical, UInt64 past 2^63) plus what SQL makes of them.
TYPES_SQL = """
SELECT *,
    CAST(datetime_tz AS TIMESTAMP) AS datetime_naive,
    'héllo, wörld' AS text,
    CAST(7 AS INT) AS int32,
    CAST(-3 AS SMALLINT) AS int16,
    CAST(2.5 AS REAL) AS float32,
    CAST(NULL AS VARCHAR) AS null_text,
    NULL AS nothing_at_all,
    [1.5, 2.5] AS floats,
    [[1, 2], [3]] AS nested,
    TRUE AS flag,
    CAST(12.345 AS DECIMAL(20, 3)) AS wide_decimal
FROM t
"""
TYPED_FORMATS = {"arrow": "application/vnd.apache.arrow.stream", "parquet": "application/vnd.apache.parquet"}


def _read(body: bytes, format_name: str) -> pl.DataFrame:
    return pl.read_ipc_stream(body) if format_name == "arrow" else pl.read_parquet(io.BytesIO(body))


def test_every_type_round_trips_through_arrow_and_parquet(
    running_controller: ControllerProcess, file_server: str, parquet_dir: Path
) -> None:
    expected = (
        pl.SQLContext({"t": pl.scan_parquet(parquet_dir / "types.parquet")}).execute(TYPES_SQL).collect()
    )
    with running_controller.client() as client:
        location = submit(
            client,
            {"sql": TYPES_SQL, "datasets": [{"url": f"{file_server}/types.parquet", "table_name": "t"}]},
        )
        record = client.get(location, params={"wait": 60}).json()
        assert record["status"] == "succeeded", record
        assert "arrow" not in record["result"]
        for name, media in TYPED_FORMATS.items():
            for how in ({"params": {"format": name}}, {"headers": {"Accept": media}}):
                response = client.get(f"{location}/result", **how)  # type: ignore[arg-type]
                assert response.status_code == 200, response.text
                assert response.headers["content-type"] == media
                assert response.headers["podq-truncated"] == "false"
                downloaded = _read(response.content, name)
                assert downloaded.schema == expected.schema
                # NaN equals NaN here; every value, null and type as polars itself has them.
                assert_frame_equal(downloaded, expected)
        # JSON stays the default rendering, and is the record's result.
        default = client.get(f"{location}/result")
        assert default.headers["content-type"] == "application/json"
        assert default.json() == record["result"]
        csv_text = client.get(f"{location}/result", params={"format": "csv"}).text
        assert csv_text.splitlines()[0] == ",".join(expected.columns)
        assert len(csv_text.splitlines()) == 1 + expected.height


def test_the_caps_cut_every_format_alike_and_the_headers_say_so(
    start_controller: StartController, file_server: str
) -> None:
    controller = start_controller(max_result_bytes=str(65_536))
    large = [{"url": f"{file_server}/large.parquet", "table_name": "t"}]
    with controller.client() as client:
        by_rows = submit(
            client, {"sql": "SELECT id, val FROM t ORDER BY id", "datasets": large, "max_rows": 5}
        )
        # 2000 rows of a wide string column: far past 64 KiB of JSON.
        wide = f"SELECT id, '{'x' * 100}' AS padding FROM t ORDER BY id"
        by_bytes = submit(client, {"sql": wide, "datasets": large})
        for location, cut_by in ((by_rows, "rows"), (by_bytes, "bytes")):
            record = client.get(location, params={"wait": 60}).json()
            assert record["status"] == "succeeded", record
            returned = len(record["result"]["rows"])
            assert record["result"]["truncated_by"] == cut_by and 0 < returned < 2000
            for name in ("json", "csv", "arrow", "parquet"):
                response = client.get(f"{location}/result", params={"format": name})
                assert response.status_code == 200
                headers = response.headers
                assert (headers["podq-total-rows"], headers["podq-returned-rows"]) == ("2000", str(returned))
                assert (headers["podq-truncated"], headers["podq-truncated-by"]) == ("true", cut_by)
                if name in TYPED_FORMATS:
                    frame = _read(response.content, name)
                    assert frame["id"].to_list() == list(range(returned))
            # The record, rows and Arrow stream together, stays within the byte cap.
            assert len(client.get(location).content) < 65_536 + 4096


def test_unknown_unfinished_failed_and_unacceptable(running_controller: ControllerProcess) -> None:
    with running_controller.client() as client:
        missing = client.get("/v1/queries/nope/result")
        assert missing.status_code == 404 and missing.json()["error_type"] == "validation"
        failed = run(client, {"sql": "SELECT no_such_column"})
        assert failed["status"] == "failed"
        conflict = client.get(f"/v1/queries/{failed['id']}/result")
        assert conflict.status_code == 409
        assert conflict.json()["details"] == {"id": failed["id"], "status": "failed"}
        running = submit(client, sleeper(30))
        try:
            early = client.get(f"{running}/result", params={"format": "arrow"})
            assert early.status_code == 409 and early.json()["details"]["status"] in ("queued", "running")
        finally:
            client.delete(running)
        done = run(client, {"sql": "SELECT 1 AS x"})
        for how in ({"params": {"format": "xlsx"}}, {"headers": {"Accept": "text/html"}}):
            refused = client.get(f"/v1/queries/{done['id']}/result", **how)  # type: ignore[arg-type]
            assert refused.status_code == 406, refused.text
            assert set(refused.json()) == {"error_type", "message", "details", "retryable"}


def test_the_clients_and_the_cli_download_typed_results(
    running_controller: ControllerProcess, tmp_path: Path
) -> None:
    sql = "SELECT CAST(1.10 AS DECIMAL(5, 2)) AS d, [1, 2] AS l"
    with Client(running_controller.url) as podq:
        record = podq.run(sql)
        arrow = podq.result(record.id)
        assert (arrow.format, arrow.media_type) == ("arrow", TYPED_FORMATS["arrow"])
        assert (arrow.total_rows, arrow.returned_rows, arrow.truncated, arrow.truncated_by) == (
            1,
            1,
            False,
            None,
        )
        frame = pl.read_ipc_stream(arrow.content)
        assert frame.schema == pl.Schema({"d": pl.Decimal(5, 2), "l": pl.List(pl.Int64)})
        with pytest.raises(NotFound):
            podq.result("nope")
        failed = podq.submit("SELECT nope")
        podq.wait(failed.id)
        with pytest.raises(Conflict):
            podq.result(failed.id, format="parquet")

    async def download() -> Any:
        async with AsyncClient(running_controller.url) as podq:
            return await podq.result(record.id, format="parquet")

    parquet = asyncio.run(download())
    assert_frame_equal(pl.read_parquet(io.BytesIO(parquet.content)), frame)

    for name in ("arrow", "parquet"):
        out = tmp_path / f"answer.{name}"
        done = subprocess.run(
            [sys.executable, "-m", "controller", "result", record.id, "--format", name, "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
            check=False,
            env={**os.environ, "PODQ_URL": running_controller.url},
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == f"wrote 1 rows to {out}\n"
        assert_frame_equal(_read(out.read_bytes(), name), frame)


def test_a_bad_format_is_a_bad_request_in_the_client(running_controller: ControllerProcess) -> None:
    with running_controller.client() as client:
        done = run(client, {"sql": "SELECT 1 AS x"})
    # Straight over HTTP: the client itself refuses an unknown format before sending.
    response = httpx.get(f"{running_controller.url}/v1/queries/{done['id']}/result", params={"format": "xml"})
    assert response.status_code == 406
    with Client(running_controller.url) as podq, pytest.raises(ValueError, match="format must be one of"):
        podq.result(done["id"], format="xml")  # type: ignore[arg-type]
