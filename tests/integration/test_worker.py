"""The worker as a real subprocess against a real HTTP server: the seed scenarios, the SQL guard end to
end, the fetch limits and the protocol's edges. Expected values come from polars reading the local file."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from controller.testing.fileserver import FileServer
from tests.support.fixtures import (
    CPU_BOUND_SQL,
    RUNAWAY_SQL,
    TEST_HOOKS_ON,
    RunWorker,
    StartWorker,
    WorkerRun,
    inspect_request,
    query_request,
)
from tests.support.parquet_files import TYPES_ROWS
from tests.support.waiting import wait_until
from worker_image.encode import to_rows
from worker_image.memwatch import threshold
from worker_image.protocol import (
    ENVELOPE_MARKER,
    EXIT_USER_ERROR,
    MEMORY_LIMIT_ENV,
    TERMINATION_MESSAGE_ENV,
    TERMINATION_MESSAGE_LIMIT,
)

pytestmark = pytest.mark.integration


def succeeded(run: WorkerRun) -> dict[str, Any]:
    assert run.exit_code == 0, run.stderr
    assert run.envelope is not None and run.envelope["ok"] is True, run.stdout
    result: dict[str, Any] = run.envelope["result"]
    return result


def failed(run: WorkerRun, error_type: str) -> dict[str, Any]:
    assert run.exit_code == EXIT_USER_ERROR, run.stderr
    assert run.envelope is not None and run.envelope["ok"] is False, run.stdout
    error: dict[str, Any] = run.envelope["error"]
    assert error["error_type"] == error_type, error
    assert set(error) == {"error_type", "message", "details", "retryable"}
    return error


def expected_columns(path: Path) -> list[dict[str, str]]:
    return [{"name": name, "type": str(dtype)} for name, dtype in pl.read_parquet_schema(path).items()]


def rows_of(frame: pl.DataFrame) -> list[list[Any]]:
    return [list(row) for row in frame.rows()]


def json_part(result: dict[str, Any], expected: pl.DataFrame) -> dict[str, Any]:
    """The result without its typed forms, once both are checked to hold `expected`, types and all."""
    typed = {name: base64.b64decode(result[name]) for name in ("arrow", "parquet")}
    assert_frame_equal(pl.read_ipc_stream(typed["arrow"]), expected)
    assert_frame_equal(pl.read_parquet(io.BytesIO(typed["parquet"])), expected)
    return {key: value for key, value in result.items() if key not in typed}


def unique_path() -> str:
    return f"never-fetched-{uuid.uuid4().hex}"


# ---------------------------------------------------------------- FETCH


def test_FETCH_1_valid_and_not_parquet(run_worker: RunWorker, file_server: str) -> None:
    assert succeeded(run_worker(inspect_request(f"{file_server}/simple.parquet")))["valid"] is True
    for name, reason in [
        ("fake.parquet", "does not start with the parquet magic bytes"),
        ("not_parquet.csv", "does not start with the parquet magic bytes"),
        ("truncated.parquet", "does not end with the parquet magic bytes"),
    ]:
        error = failed(run_worker(inspect_request(f"{file_server}/{name}")), "validation")
        assert error["message"].startswith("Not a valid parquet file"), error
        assert reason in error["message"]
        assert error["details"] == {"url": f"{file_server}/{name}"}
        assert error["retryable"] is False


@pytest.fixture(scope="module")
def refused_port() -> Iterator[int]:
    """A port bound but never listening: connecting is refused, and nothing else can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_FETCH_2_http_status_and_unreachable(
    run_worker: RunWorker, file_server: str, refused_port: int
) -> None:
    assert succeeded(run_worker(inspect_request(f"{file_server}/simple.parquet")))["row_count"] == 10

    url = f"{file_server}/status/404"
    error = failed(run_worker(inspect_request(url)), "network")
    assert error["message"] == f"HTTP 404 Not Found fetching {url}"
    assert error["details"] == {"url": url, "status_code": 404}
    assert error["retryable"] is False

    url = f"{file_server}/status/503"
    error = failed(run_worker(inspect_request(url)), "network")
    assert error["message"] == f"HTTP 503 Service Unavailable fetching {url}"
    assert error["retryable"] is True

    url = f"http://127.0.0.1:{refused_port}/simple.parquet"
    error = failed(run_worker(inspect_request(url)), "network")
    assert error["message"] == f"connection refused by 127.0.0.1:{refused_port} fetching {url}"
    assert error["details"] == {"url": url, "host": "127.0.0.1", "port": refused_port}

    url = "http://podq-fixture.invalid/simple.parquet"  # RFC 2606: never resolves
    error = failed(run_worker(inspect_request(url)), "network")
    assert error["message"].startswith(f"DNS lookup failed for host 'podq-fixture.invalid' fetching {url}")


def test_FETCH_2_read_timeout_when_the_server_goes_silent(run_worker: RunWorker, file_server: str) -> None:
    url = f"{file_server}/slow?seconds=30"
    started = time.monotonic()
    error = failed(run_worker(inspect_request(url, read_timeout_seconds=0.5)), "network")
    assert error["message"] == f"fetch timeout: {url} sent no data for 0.5s"
    assert error["details"] == {"url": url, "timeout_seconds": 0.5}
    assert time.monotonic() - started < 15


def test_FETCH_2_total_timeout_when_the_server_drips(run_worker: RunWorker, file_server: str) -> None:
    # Each byte comes well within the read timeout; only the deadline for the whole download stops it.
    url = f"{file_server}/slow?seconds=30&drip=0.1"
    started = time.monotonic()
    error = failed(
        run_worker(inspect_request(url, read_timeout_seconds=5, total_timeout_seconds=1.5)), "network"
    )
    assert error["message"] == f"fetch timeout: {url} did not download within 1.5s"
    assert time.monotonic() - started < 15


def test_download_over_the_cap_is_refused_whether_or_not_declared(
    run_worker: RunWorker, file_server: str, parquet_dir: Path
) -> None:
    size = (parquet_dir / "large.parquet").stat().st_size
    url = f"{file_server}/large.parquet"
    error = failed(run_worker(inspect_request(url, max_download_bytes=size - 1)), "network")
    assert error["message"] == (
        f"download too large: {url} declares {size} bytes, over the limit of {size - 1} bytes"
    )
    assert error["details"] == {"url": url, "max_download_bytes": size - 1, "content_length": size}
    assert error["retryable"] is False

    url = f"{file_server}/big?bytes=5000000"  # no Content-Length: counted while streaming
    error = failed(run_worker(inspect_request(url, max_download_bytes=1_000_000)), "network")
    assert error["message"] == f"download too large: {url} sent more than the limit of 1000000 bytes"

    assert succeeded(run_worker(inspect_request(f"{file_server}/large.parquet", max_download_bytes=size)))


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/x.parquet", "/etc/passwd", "http://"]
)
def test_only_http_and_https_urls_are_fetched(run_worker: RunWorker, url: str) -> None:
    error = failed(run_worker(inspect_request(url)), "validation")
    assert error["message"] == f"dataset URLs must be http:// or https:// with a host; refused {url!r}"


def test_redirects_are_followed(run_worker: RunWorker, file_server: str) -> None:
    assert (
        succeeded(run_worker(inspect_request(f"{file_server}/redirect?to=/simple.parquet")))["row_count"]
        == 10
    )


def test_proxy_variables_are_ignored(run_worker: RunWorker, file_server: str, refused_port: int) -> None:
    proxy = f"http://127.0.0.1:{refused_port}"
    env = {name: proxy for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy")}
    assert succeeded(run_worker(inspect_request(f"{file_server}/simple.parquet"), env_extra=env))


# ---------------------------------------------------------------- SCHEMA


@pytest.mark.parametrize("name", ["simple", "empty", "wide", "types"])
def test_SCHEMA_1_columns_and_row_count(
    run_worker: RunWorker, file_server: str, parquet_dir: Path, name: str
) -> None:
    result = succeeded(run_worker(inspect_request(f"{file_server}/{name}.parquet")))
    local = parquet_dir / f"{name}.parquet"
    assert result == {
        "valid": True,
        "columns": expected_columns(local),
        "row_count": pl.read_parquet(local).height,
    }


def test_SCHEMA_1_simple_has_the_documented_types(run_worker: RunWorker, file_server: str) -> None:
    result = succeeded(run_worker(inspect_request(f"{file_server}/simple.parquet")))
    assert result["columns"] == [
        {"name": "id", "type": "Int64"},
        {"name": "name", "type": "String"},
        {"name": "value", "type": "Float64"},
    ]
    assert result["row_count"] == 10


# ---------------------------------------------------------------- SQL


def test_SQL_1_tables_registered_and_joined(
    run_worker: RunWorker, sample_datasets: list[dict[str, str]], parquet_dir: Path
) -> None:
    simple = pl.read_parquet(parquet_dir / "simple.parquet")
    large = pl.read_parquet(parquet_dir / "large.parquet")

    result = succeeded(run_worker(query_request("SELECT * FROM table1", sample_datasets)))
    assert json_part(result, simple) == {
        "columns": expected_columns(parquet_dir / "simple.parquet"),
        "rows": rows_of(simple),
        "total_rows": 10,
        "truncated": False,
        "truncated_by": None,
    }

    sql = "SELECT t1.id, t1.name, t2.val FROM table1 AS t1 JOIN table2 AS t2 ON t1.id = t2.id ORDER BY t1.id"
    result = succeeded(run_worker(query_request(sql, sample_datasets)))
    joined = simple.join(large, on="id").select("id", "name", "val").sort("id")
    assert result["rows"] == rows_of(joined)
    assert result["total_rows"] == joined.height
    assert [c["name"] for c in result["columns"]] == ["id", "name", "val"]


def test_SQL_2_filter_returns_the_matching_rows(
    run_worker: RunWorker, sample_datasets: list[dict[str, str]], parquet_dir: Path
) -> None:
    result = succeeded(run_worker(query_request("SELECT name FROM table1 WHERE id > 5", sample_datasets)))
    expected = pl.read_parquet(parquet_dir / "simple.parquet").filter(pl.col("id") > 5).select("name")
    assert result["rows"] == rows_of(expected)
    assert result["total_rows"] == expected.height == 4
    assert result["columns"] == [{"name": "name", "type": "String"}]

    result = succeeded(run_worker(query_request("SELECT name FROM table1 WHERE id > 100", sample_datasets)))
    assert json_part(result, expected.clear()) == {
        "columns": [{"name": "name", "type": "String"}],
        "rows": [],
        "total_rows": 0,
        "truncated": False,
        "truncated_by": None,
    }


def test_SQL_2_query_over_an_empty_dataset(
    run_worker: RunWorker, file_server: str, parquet_dir: Path
) -> None:
    datasets = [{"url": f"{file_server}/empty.parquet", "table_name": "nothing"}]
    result = succeeded(run_worker(query_request("SELECT * FROM nothing", datasets)))
    assert json_part(result, pl.read_parquet(parquet_dir / "empty.parquet")) == {
        "columns": expected_columns(parquet_dir / "empty.parquet"),
        "rows": [],
        "total_rows": 0,
        "truncated": False,
        "truncated_by": None,
    }


def test_SQL_3_results_are_cut_at_max_rows_and_counted_in_full(
    run_worker: RunWorker, sample_datasets: list[dict[str, str]], parquet_dir: Path
) -> None:
    large = pl.read_parquet(parquet_dir / "large.parquet")
    result = succeeded(run_worker(query_request("SELECT * FROM table2", sample_datasets, max_rows=1000)))
    assert len(result["rows"]) == 1000
    assert result["rows"] == rows_of(large.head(1000))
    assert result["total_rows"] == 2000
    assert result["truncated"] is True

    sql = "SELECT * FROM table2 ORDER BY id DESC"
    result = succeeded(run_worker(query_request(sql, sample_datasets, max_rows=5)))
    assert result["rows"] == rows_of(large.sort("id", descending=True).head(5))
    assert (result["total_rows"], result["truncated"]) == (2000, True)

    result = succeeded(
        run_worker(query_request("SELECT * FROM table2 LIMIT 2000", sample_datasets, max_rows=2000))
    )
    assert (len(result["rows"]), result["total_rows"], result["truncated"]) == (2000, 2000, False)


def test_SQL_4_syntax_error_is_an_sql_error(
    run_worker: RunWorker, sample_datasets: list[dict[str, str]]
) -> None:
    error = failed(run_worker(query_request("SELEC * FROM table1", sample_datasets)), "sql")
    assert error["message"].startswith("SQL syntax error")
    assert error["retryable"] is False


def test_SQL_5_missing_column_is_named(run_worker: RunWorker, sample_datasets: list[dict[str, str]]) -> None:
    error = failed(run_worker(query_request("SELECT nonexistent FROM table1", sample_datasets)), "sql")
    assert error["message"] == "column 'nonexistent' not found; available columns: id, name, value"
    assert error["details"] == {"column": "nonexistent"}

    error = failed(run_worker(query_request("SELECT id FROM table1 WHERE nam = 'x'", sample_datasets)), "sql")
    assert error["message"] == (
        """column 'nam' not found; available columns: id, name, value. Did you mean "name"?"""
    )


def test_other_polars_errors_are_sql_errors_without_the_plan(
    run_worker: RunWorker, sample_datasets: list[dict[str, str]]
) -> None:
    error = failed(run_worker(query_request("SELECT name + 1 FROM table1", sample_datasets)), "sql")
    assert "arithmetic on" in error["message"]
    assert "Resolved plan" not in error["message"] and "/tmp" not in error["message"]


def test_result_values_use_the_documented_json_encoding(run_worker: RunWorker, file_server: str) -> None:
    datasets = [{"url": f"{file_server}/types.parquet", "table_name": "types"}]
    result = succeeded(run_worker(query_request("SELECT * FROM types", datasets)))
    assert result["total_rows"] == TYPES_ROWS
    first, *_ = result["rows"]
    by_name = dict(zip([c["name"] for c in result["columns"]], first, strict=True))
    assert by_name == {
        "date": "2024-01-31",
        "datetime_tz": "2024-01-31T12:34:56.789000+01:00",
        "time": "12:34:56.789",
        "duration": "P1DT2H3M4.5S",
        "decimal": "12.50",
        "float": 1.5,
        "nothing": None,
        "binary": "AP9wb2Rx",
        "list": [1, 2, None],
        "struct": {"a": 1, "b": "x"},
        "categorical": "red",
        "big": 2**64 - 1,
    }
    assert [row[5] for row in result["rows"]] == [1.5, "NaN", "Infinity", "-Infinity"]


def test_same_rows_as_encoding_the_local_file(
    run_worker: RunWorker, file_server: str, parquet_dir: Path
) -> None:
    datasets = [{"url": f"{file_server}/types.parquet", "table_name": "types"}]
    result = succeeded(run_worker(query_request("SELECT * FROM types", datasets)))
    assert result["rows"] == to_rows(pl.read_parquet(parquet_dir / "types.parquet"))


def test_one_failing_dataset_fails_the_query_naming_it(run_worker: RunWorker, file_server: str) -> None:
    datasets = [
        {"url": f"{file_server}/simple.parquet", "table_name": "a"},
        {"url": f"{file_server}/status/404", "table_name": "b"},
    ]
    error = failed(run_worker(query_request("SELECT * FROM a, b", datasets)), "network")
    assert error["details"] == {"url": f"{file_server}/status/404", "status_code": 404}


# ---------------------------------------------------------------- the SQL guard, end to end


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELECT * FROM read_parquet('{local}')", "table functions are not allowed"),
        ("SELECT * FROM read_csv('{url}')", "table functions are not allowed"),
        (
            "SELECT * FROM table1 WHERE id IN (SELECT id FROM read_csv('{url}'))",
            "table functions are not allowed",
        ),
        ("CREATE TABLE stolen AS SELECT * FROM read_csv('{url}')", "refused: CREATE TABLE"),
        ("SHOW TABLES", "refused: SHOW TABLES"),
        ("DROP TABLE table1", "refused: DROP TABLE"),
        ("SELECT 1; SELECT * FROM read_csv('{url}')", "found 2 statements"),
        ("SELECT * FROM somewhere_else", "unknown table 'somewhere_else'; registered tables: table1"),
    ],
)
def test_forbidden_sql_is_refused_before_anything_is_read(
    run_worker: RunWorker, http_file_server: FileServer, parquet_dir: Path, sql: str, fragment: str
) -> None:
    probe, dataset_probe = unique_path(), unique_path()
    text = sql.format(local=parquet_dir / "simple.parquet", url=f"{http_file_server.url}/{probe}.csv")
    datasets = [{"url": f"{http_file_server.url}/simple.parquet?{dataset_probe}", "table_name": "table1"}]
    error = failed(run_worker(query_request(text, datasets)), "validation")
    assert fragment in error["message"]
    assert not http_file_server.requested(probe), "the SQL made the worker fetch a URL"
    assert not http_file_server.requested(dataset_probe), (
        "datasets were downloaded before the SQL was checked"
    )


def test_duplicate_table_names_are_refused(run_worker: RunWorker, file_server: str) -> None:
    datasets = [
        {"url": f"{file_server}/simple.parquet", "table_name": "T"},
        {"url": f"{file_server}/large.parquet", "table_name": "t"},
    ]
    error = failed(run_worker(query_request("SELECT * FROM t", datasets)), "validation")
    assert error["message"] == "table names must be unique ignoring case: 'T' and 't' clash"


# ---------------------------------------------------------------- protocol edges


def test_stray_stdout_is_not_mistaken_for_the_envelope(run_worker: RunWorker, file_server: str) -> None:
    noise = 'library chatter\nPODQ-RESULT-V1 17 0000 {"ok":true,"result":1}\nno newline at the end'
    request = {**inspect_request(f"{file_server}/simple.parquet"), "debug": {"stdout_noise": noise}}
    run = run_worker(request, env_extra=TEST_HOOKS_ON)
    assert succeeded(run)["row_count"] == 10
    assert run.stdout.startswith(noise)


def test_user_errors_leave_a_compact_termination_message(
    run_worker: RunWorker, sample_datasets: list[dict[str, str]], termination_log: Path
) -> None:
    huge_name = "x" * 10_000
    run = run_worker(
        query_request(f"SELECT * FROM {huge_name}", sample_datasets),
        env_extra={TERMINATION_MESSAGE_ENV: str(termination_log)},
    )
    error = failed(run, "validation")
    written = termination_log.read_bytes()
    assert len(written) <= TERMINATION_MESSAGE_LIMIT
    compact = json.loads(written)
    assert compact["error_type"] == "validation"
    assert error["message"].startswith(compact["message"])


def test_success_leaves_no_termination_message_and_no_temp_files(
    run_worker: RunWorker, sample_datasets: list[dict[str, str]], termination_log: Path, tmp_path: Path
) -> None:
    run = run_worker(
        query_request("SELECT 1 AS x", sample_datasets),
        env_extra={TERMINATION_MESSAGE_ENV: str(termination_log)},
    )
    assert succeeded(run)["rows"] == [[1]]
    assert not termination_log.exists()
    assert [p for p in tmp_path.glob("worker-*-tmp/**/*")] == []


@pytest.mark.parametrize(
    "request_text",
    ["not json", "[]", json.dumps({"operation": "delete", "fetch": {}}), json.dumps({"operation": "query"})],
)
def test_malformed_requests_are_validation_errors(run_worker: RunWorker, request_text: str) -> None:
    failed(run_worker(request_text), "validation")


def test_test_hooks_are_refused_unless_enabled(run_worker: RunWorker, file_server: str) -> None:
    request = {**inspect_request(f"{file_server}/simple.parquet"), "debug": {"crash": "exit"}}
    error = failed(run_worker(request), "validation")
    assert "test hooks are disabled" in error["message"]
    error = failed(run_worker(request, env_extra={"PODQ_ENABLE_TEST_HOOKS": "yes"}), "validation")
    assert "test hooks are disabled" in error["message"]


@pytest.mark.parametrize(("crash", "exit_code"), [("exit", 1), ("segv", -11), ("abort", -6)])
def test_crash_hooks_die_without_an_envelope(
    run_worker: RunWorker, file_server: str, crash: str, exit_code: int
) -> None:
    request = {**inspect_request(f"{file_server}/simple.parquet"), "debug": {"crash": crash}}
    run = run_worker(request, env_extra=TEST_HOOKS_ON)
    assert run.exit_code == exit_code
    assert run.envelope is None
    assert ENVELOPE_MARKER not in run.stdout


def test_unsatisfiable_allocation_is_a_memory_error(run_worker: RunWorker, file_server: str) -> None:
    request = {**inspect_request(f"{file_server}/simple.parquet"), "debug": {"allocate_mb": 1 << 30}}
    error = failed(run_worker(request, env_extra=TEST_HOOKS_ON), "memory")
    assert error["message"] == "the query ran out of memory"


def test_hooks_with_bad_values_are_validation_errors(run_worker: RunWorker, file_server: str) -> None:
    for debug, fragment in [
        ({"crash": "explode"}, "debug.crash must be one of"),
        ({"sleep_seconds": -1}, "debug.sleep_seconds"),
        ({"allocate_mb": 1.5}, "debug.allocate_mb"),
        ({"teleport": True}, "unknown debug hooks: teleport"),
    ]:
        request = {**inspect_request(f"{file_server}/simple.parquet"), "debug": debug}
        assert fragment in failed(run_worker(request, env_extra=TEST_HOOKS_ON), "validation")["message"]


# ---------------------------------------------------------------- signals and the memory watch

MiB = 2**20


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a live process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sigterm_ends_a_worker_inside_a_native_polars_query_at_once(
    start_worker: StartWorker, file_server: str
) -> None:
    """The kubelet's SIGTERM (deadline, cancel, deletion) must end a worker whatever polars is doing."""
    datasets = [{"url": f"{file_server}/large.parquet", "table_name": "table2"}]
    worker = start_worker(query_request(CPU_BOUND_SQL, datasets), env_extra={"POLARS_MAX_THREADS": "1"})
    # Importing and fetching take well under a second of CPU; two means the cross join is running.
    wait_until(lambda: worker.poll() is not None or cpu_seconds(worker.pid) >= 2, "2 s of CPU", within=60)
    assert worker.poll() is None, "the query ended before it could be signalled"
    signalled = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    wait_until(lambda: worker.poll() is not None, "the worker's exit after SIGTERM", within=10)
    assert time.monotonic() - signalled <= 2
    assert worker.returncode == 128 + signal.SIGTERM


@pytest.mark.parametrize("given_in", ["environment", "request"])
def test_the_memory_watch_stops_a_runaway_query_near_its_limit(
    run_worker: RunWorker, file_server: str, termination_log: Path, given_in: str
) -> None:
    """request: the request's limit wins over a larger one in the environment (a warm pod resized after
    its start has the pool's limit there; here the environment's is twice as large, and still a bound)."""
    datasets = [{"url": f"{file_server}/large.parquet", "table_name": "table2"}]
    limit = 512 * MiB
    request = query_request(RUNAWAY_SQL, datasets)
    env = {MEMORY_LIMIT_ENV: str(limit), TERMINATION_MESSAGE_ENV: str(termination_log)}
    if given_in == "request":
        request["limits"] = {"memory_bytes": limit}
        env[MEMORY_LIMIT_ENV] = str(2 * limit)
    run = run_worker(request, env_extra=env)

    error = failed(run, "memory")
    details = error["details"]
    assert details["limit_bytes"] == limit and details["threshold_bytes"] == threshold(limit)
    assert threshold(limit) <= details["peak_bytes"] < limit
    assert details["stopped_by"] == "worker"
    assert "512 MiB" in error["message"]
    # Stopped by the watch, not by time: without it, nothing here caps the query's memory.
    assert json.loads(termination_log.read_text()) == error
