"""Issue 6, item 4: hostile SQL and hostile data, each through a real worker subprocess.

SQL that reaches for files or the environment, SQL nested past what polars survives, results of huge
cells, parquet whose footer lies, a file that makes polars abort, a decompression bomb and a cross
join. Worker-level tests run ``python -m worker_image`` (`run_worker`); the memory and crash tests run
it under the local launcher's real limits; the cross join goes through `podq serve`.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from controller.launchers.base import Outcome
from controller.testing.fileserver import FileServer
from controller.testing.process import wait_finished, wait_status
from tests.integration.test_local_launcher import MakeLauncher, error_of, make_job, rows_of
from tests.integration.test_worker import failed, succeeded
from tests.support.fixtures import HUNGRY_SQL, RunWorker, inspect_request, query_request
from tests.support.hostile_parquet import (
    BINARY_VALUES,
    HUGE_CELL_CHARS,
    HUGE_CELL_ROWS,
    WIDE_COLUMNS,
    ZEROS_ROWS,
    generate_hostile,
)
from worker_image.encode import json_bytes
from worker_image.protocol import ENVELOPE_MARKER
from worker_image.sqlguard import MAX_DEPTH

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hostile")
    generate_hostile(directory)
    (directory / "secret.csv").write_text("SECRET_MARKER\n42\n")
    return directory


@pytest.fixture(scope="module")
def hostile_server(hostile_dir: Path) -> Iterator[FileServer]:
    with FileServer(hostile_dir) as server:
        yield server


def dataset(server: FileServer, name: str, table: str = "t") -> list[dict[str, str]]:
    return [{"url": f"{server.url}/{name}.parquet", "table_name": table}]


# ---------------------------------------------------------------- SQL reaching for files or the environment

# The table functions of polars 2.1's SQL that read: each takes a local path, a glob, an http(s) URL or
# a cloud URL (with credentials from the environment). Its other table functions, generate_series and
# range, make numbers (the guard refuses them too: no table functions at all). No scalar function of polars'
# SQL touches files or the environment: getenv, current_setting, version or pg_read_file are
# "unsupported function" errors.
POLARS_FILE_FUNCTIONS = ["read_csv", "read_parquet", "read_ipc", "read_json", "read_ndjson"]
_CANDIDATES = [
    f"{verb}_{kind}"
    for verb in ("read", "scan")
    for kind in ("csv", "parquet", "ipc", "json", "ndjson", "delta", "iceberg", "avro", "excel", "database")
] + ["read_file", "read_text", "read_blob", "glob", "getenv", "env", "generate_series", "range"]


def test_the_file_functions_are_all_the_table_functions_polars_sql_has(tmp_path: Path) -> None:
    """Keeps `POLARS_FILE_FUNCTIONS` honest when polars changes: probe polars itself, without the guard."""
    known = []
    for name in _CANDIDATES:
        try:
            pl.SQLContext().execute(f"SELECT * FROM {name}('{tmp_path}/absent')").collect()
        except Exception as exc:  # any other error means polars knows the function
            if "is not a supported table function" in str(exc):
                continue
        known.append(name)
    assert sorted(known) == sorted([*POLARS_FILE_FUNCTIONS, "generate_series", "range"])


@pytest.mark.parametrize("function", POLARS_FILE_FUNCTIONS)
@pytest.mark.parametrize(
    "case",
    [
        ("SELECT * FROM {f}('{target}')", "local"),
        ("SELECT * FROM t WHERE id IN (SELECT * FROM {f}('{target}'))", "url"),
        ("SELECT {f}('{target}') AS x FROM t", "local"),
        ("SELECT * FROM \"{f}\"('{target}')", "url"),
        ("SELECT * FROM {f}('s3://bucket/{target_name}', storage_options => 'env')", "cloud"),
    ],
    ids=["from-local", "subquery-url", "scalar-local", "quoted-url", "cloud-credentials"],
)
def test_every_polars_file_function_is_refused_and_reads_nothing(
    run_worker: RunWorker,
    hostile_server: FileServer,
    hostile_dir: Path,
    function: str,
    case: tuple[str, str],
) -> None:
    template, target = case
    probe = f"secret.csv?{uuid.uuid4().hex}"
    path = {"local": str(hostile_dir / "secret.csv"), "url": f"{hostile_server.url}/{probe}", "cloud": probe}
    sql = template.format(f=function, target=path[target], target_name=probe)
    run = run_worker(query_request(sql, dataset(hostile_server, "binary")))
    error = failed(run, "validation")
    assert "not allowed" in error["message"]
    assert "SECRET_MARKER" not in run.stdout + run.stderr
    assert not hostile_server.requested(probe.split("?")[1])
    assert not hostile_server.requested("binary.parquet"), "datasets were fetched before the SQL was checked"


# ---------------------------------------------------------------- deeply nested SQL

NESTED = {
    "10k parentheses": "SELECT " + "(" * 10_000 + "1" + ")" * 10_000 + " AS x",
    # 3k: 63 KB, the most the controller's 64 KiB SQL cap admits.
    "3k subqueries": "SELECT * FROM " + "(SELECT * FROM " * 3_000 + "t" + ") AS s" * 3_000,
    "10k nested calls": "SELECT " + "abs(" * 10_000 + "1" + ")" * 10_000 + " AS x",
    "10k NOT": "SELECT * FROM t WHERE " + "NOT " * 10_000 + "true",
    # Accepted by the parser but crash polars 2.1 (SIGSEGV) or stall its planner: refused by depth.
    "30k chained +": "SELECT " + "+".join(["1"] * 30_000) + " AS x",
    "8k chained AND": "SELECT * FROM t WHERE " + " AND ".join(["id = 1"] * 8_000),
    "1k UNION ALL": " UNION ALL ".join(["SELECT id FROM t"] * 1_000),
}


@pytest.mark.parametrize("sql", list(NESTED.values()), ids=list(NESTED))
def test_deeply_nested_sql_is_a_clean_error_not_a_crash(
    run_worker: RunWorker, hostile_server: FileServer, sql: str
) -> None:
    run = run_worker(query_request(sql, dataset(hostile_server, "binary")))
    assert run.envelope is not None, f"the worker died: exit {run.exit_code}\n{run.stderr[-2000:]}"
    error = run.envelope["error"]
    assert error["error_type"] in ("sql", "validation"), error
    assert "nested too deeply" in error["message"]
    assert "RecursionError" not in run.stderr


def test_a_chain_just_under_the_depth_limit_runs(run_worker: RunWorker, hostile_server: FileServer) -> None:
    terms = MAX_DEPTH - 10  # the SELECT, WHERE and count(*) take a few levels of their own
    sql = "SELECT count(*) AS n FROM t WHERE " + " OR ".join(f"n = {i}" for i in range(terms))
    result = succeeded(run_worker(query_request(sql, dataset(hostile_server, "huge_cells"))))
    assert result["rows"] == [[HUGE_CELL_ROWS]]


# ---------------------------------------------------------------- huge cells and bytes that are not UTF-8

CELL_BYTES = len(json_bytes(["é" * HUGE_CELL_CHARS]))


@pytest.mark.parametrize(
    ("max_rows", "max_result_bytes", "expected"),
    [
        (1000, 64 * 2**20, (HUGE_CELL_ROWS, None)),
        (1, 64 * 2**20, (1, "rows")),
        # The slack holds the Arrow stream of the two rows too (its schema, the compressed cells).
        (1000, 2 * CELL_BYTES + 4000, (2, "bytes")),
        (1000, CELL_BYTES // 2, (0, "bytes")),
    ],
    ids=["no cap hit", "max_rows", "bytes after two rows", "one cell over the cap"],
)
def test_results_are_capped_by_bytes_as_well_as_rows(
    run_worker: RunWorker,
    hostile_server: FileServer,
    max_rows: int,
    max_result_bytes: int,
    expected: tuple[int, str | None],
) -> None:
    returned, truncated_by = expected
    request = query_request(
        "SELECT n, cell FROM t ORDER BY n", dataset(hostile_server, "huge_cells"), max_rows
    )
    run = run_worker({**request, "max_result_bytes": max_result_bytes})
    result = succeeded(run)
    assert result["rows"] == [[n, "é" * HUGE_CELL_CHARS] for n in range(returned)]
    assert result["total_rows"] == HUGE_CELL_ROWS
    assert (result["truncated"], result["truncated_by"]) == (truncated_by is not None, truncated_by)
    assert len(json_bytes(result)) <= max_result_bytes


def test_the_byte_cap_defaults_below_kubelets_log_rotation(
    run_worker: RunWorker, hostile_server: FileServer
) -> None:
    # 4 MB per cell: the whole result would be 16 MB.
    sql = "SELECT " + " || ".join(["cell"] * 20) + " AS cell FROM t"
    result = succeeded(run_worker(query_request(sql, dataset(hostile_server, "huge_cells"))))
    assert (len(result["rows"]), result["truncated_by"]) == (2, "bytes")
    assert len(json_bytes(result)) <= 8 * 2**20


def test_binary_that_is_not_utf8_comes_back_as_base64(
    run_worker: RunWorker, hostile_server: FileServer
) -> None:
    result = succeeded(run_worker(query_request("SELECT b FROM t", dataset(hostile_server, "binary"))))
    assert result["rows"] == [[base64.b64encode(value).decode()] for value in BINARY_VALUES]
    assert result["columns"] == [{"name": "b", "type": "Binary"}]


def test_a_string_column_that_is_not_utf8_is_a_validation_error(
    run_worker: RunWorker, hostile_server: FileServer
) -> None:
    error = failed(
        run_worker(query_request("SELECT s FROM t", dataset(hostile_server, "bad_utf8"))), "validation"
    )
    assert error["message"].startswith("Not a valid parquet file")
    assert "invalid UTF-8" in error["message"]


# ---------------------------------------------------------------- parquet that lies, is cut short or is wide

LIES = {
    "lying_rows": "its footer claims 4611686018427387904 rows but its row groups hold 10",
    "lying_chunk": "its footer places column 'id' in row group 0 at bytes 4..1099511627780, outside",
    "footer_too_long": "its footer claims 4294967280 bytes, more than the file holds",
    "garbage_footer": "its footer cannot be read",
}


@pytest.mark.parametrize("operation", ["query", "inspect"])
@pytest.mark.parametrize(("name", "reason"), list(LIES.items()), ids=list(LIES))
def test_a_footer_that_lies_is_refused_before_polars_reads_it(
    run_worker: RunWorker, hostile_server: FileServer, name: str, reason: str, operation: str
) -> None:
    url = f"{hostile_server.url}/{name}.parquet"
    request = (
        inspect_request(url)
        if operation == "inspect"
        else query_request("SELECT * FROM t", dataset(hostile_server, name))
    )
    error = failed(run_worker(request), "validation")
    assert error["message"].startswith(f"Not a valid parquet file: {url}: {reason}")
    assert error["details"] == {"url": url}
    assert error["retryable"] is False


def test_a_footer_overstating_uncompressed_sizes_is_harmless(
    run_worker: RunWorker, hostile_server: FileServer
) -> None:
    # 1 TiB claimed: polars sizes its buffers from the pages it decodes, not from this claim.
    result = succeeded(
        run_worker(query_request("SELECT * FROM t", dataset(hostile_server, "lying_uncompressed")))
    )
    assert result["rows"] == [[i] for i in range(10)]


def test_thousands_of_columns_work(run_worker: RunWorker, hostile_server: FileServer) -> None:
    url = f"{hostile_server.url}/wide_5000.parquet"
    inspected = succeeded(run_worker(inspect_request(url)))
    assert len(inspected["columns"]) == WIDE_COLUMNS
    result = succeeded(run_worker(query_request("SELECT * FROM t", dataset(hostile_server, "wide_5000"))))
    assert result["rows"] == [list(range(WIDE_COLUMNS))]


# ---------------------------------------------------------------- a file that makes polars abort; a bomb


def test_a_file_that_makes_polars_abort_dies_without_an_envelope(
    run_worker: RunWorker, hostile_server: FileServer
) -> None:
    run = run_worker(query_request("SELECT * FROM t", dataset(hostile_server, "negative_page")))
    assert run.exit_code == -6  # SIGABRT: Rust aborts on a failed 2**61-byte allocation
    assert ENVELOPE_MARKER not in run.stdout
    assert "memory allocation of" in run.stderr


@pytest.mark.usefixtures("no_worker_leaks")
def test_a_worker_polars_kills_is_typed_and_the_next_query_runs(
    local_launcher: MakeLauncher, memory_enforcement: str, hostile_server: FileServer
) -> None:
    async def scenario() -> tuple[Outcome, Outcome]:
        async with local_launcher() as launcher:
            aborted = await launcher.run(
                make_job(query_request("SELECT * FROM t", dataset(hostile_server, "negative_page")))
            )
            after = await launcher.run(
                make_job(query_request("SELECT * FROM t", dataset(hostile_server, "lying_uncompressed")))
            )
            return aborted, after

    aborted, after = asyncio.run(scenario())
    # Under RLIMIT_AS the launcher reads polars' "memory allocation of N bytes failed" as running out of
    # memory (the allocation was refused); with a cgroup nothing was OOM-killed, so it is a crash.
    if memory_enforcement == "rlimit":
        error_of(aborted, "memory")
    else:
        assert "SIGABRT" in error_of(aborted, "crash")["message"]
    assert rows_of(after) == [[i] for i in range(10)]


@pytest.mark.usefixtures("no_worker_leaks")
def test_a_decompression_bomb_is_bounded_by_the_memory_limit(
    local_launcher: MakeLauncher, hostile_server: FileServer, hostile_dir: Path
) -> None:
    assert (hostile_dir / "zeros.parquet").stat().st_size < 2**20 < ZEROS_ROWS * 8 // 1000
    bomb = dataset(hostile_server, "zeros")
    # A window over every row must hold them all: 1 GiB of decoded int64 against a 256 MiB limit.
    window = "SELECT x, sum(x) OVER (PARTITION BY x) AS s FROM t"

    async def scenario() -> tuple[Outcome, Outcome]:
        async with local_launcher() as launcher:
            counted = await launcher.run(
                make_job(query_request("SELECT count(*) AS n FROM t", bomb), memory_mib=256)
            )
            exploded = await launcher.run(make_job(query_request(window, bomb), memory_mib=256, timeout=60))
            return counted, exploded

    counted, exploded = asyncio.run(scenario())
    assert rows_of(counted) == [[ZEROS_ROWS]]  # streamed: the bomb is only a bomb when held
    error_of(exploded, "memory")


# ---------------------------------------------------------------- a cross join through the controller


def test_a_cross_join_ends_as_memory_or_timeout_and_the_controller_carries_on(
    start_controller: Any, sample_datasets: list[dict[str, str]]
) -> None:
    controller = start_controller()
    with controller.client() as client:
        body = {
            "sql": HUNGRY_SQL,
            "datasets": sample_datasets,
            "limits": {"memory": "256Mi", "timeout_seconds": 20},
        }
        response = client.post("/v1/queries", json=body)
        assert response.status_code == 202, response.text
        location = response.headers["location"]
        wait_status(client, location, "running")
        assert client.get("/healthz").status_code == 200
        record = wait_finished(client, location)
        assert record["status"] == "failed"
        assert record["error"]["error_type"] in ("memory", "timeout"), record["error"]
        assert record["error"]["retryable"] is False
        after = client.post(
            "/v1/queries", json={"sql": "SELECT count(*) AS n FROM table2", "datasets": sample_datasets}
        )
        assert wait_finished(client, after.headers["location"])["result"]["rows"] == [[2000]]
