"""The controller as a user meets it: `podq serve` on uvicorn, real HTTP, real worker subprocesses."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from controller.testing.process import ControllerProcess, wait_finished, wait_status
from tests.support.api import (
    assert_each_failed_as_its_kind,
    run,
    simple_query,
    simple_rows,
    sleeper,
    submit,
)

pytestmark = pytest.mark.integration

StartController = Callable[..., ControllerProcess]


def test_query_over_http_returns_rows_and_placement(
    start_controller: StartController, file_server: str, parquet_dir: Any
) -> None:
    controller = start_controller()
    with controller.client() as client:
        record = run(client, simple_query(file_server))
    assert record["status"] == "succeeded", record
    assert record["result"]["rows"] == simple_rows(parquet_dir)
    assert record["result"]["columns"] == [
        {"name": "name", "type": "String"},
        {"name": "value", "type": "Float64"},
    ]
    assert record["placement"]["kind"] == "local"
    (attempt,) = record["attempts"]
    assert attempt["number"] == 1 and attempt["status"] == "succeeded" and attempt["error"] is None
    assert (attempt["limits"], attempt["placement"]) == (record["limits"], record["placement"])
    assert record["submitted_at"] <= record["started_at"] <= record["finished_at"]
    assert record["started_at"] == attempt["started_at"] and attempt["finished_at"] == record["finished_at"]


def test_SQL_3_truncation_over_http(start_controller: StartController, file_server: str) -> None:
    controller = start_controller()
    with controller.client() as client:
        record = run(
            client,
            {
                "sql": "SELECT * FROM big",
                "datasets": [{"url": f"{file_server}/large.parquet", "table_name": "big"}],
            },
        )
    assert record["max_rows"] == 1000
    assert len(record["result"]["rows"]) == 1000
    assert record["result"]["total_rows"] == 2000
    assert record["result"]["truncated"] is True


def test_inspection_runs_in_a_worker(start_controller: StartController, file_server: str) -> None:
    controller = start_controller()
    with controller.client() as client:
        response = client.post("/v1/inspections", json={"url": f"{file_server}/simple.parquet"})
        assert response.status_code == 202, response.text
        record = wait_finished(client, response.headers["location"])
        assert client.get(f"/v1/queries/{record['id']}").status_code == 404
    assert record["result"] == {
        "valid": True,
        "row_count": 10,
        "columns": [
            {"name": "id", "type": "Int64"},
            {"name": "name", "type": "String"},
            {"name": "value", "type": "Float64"},
        ],
    }


def test_ERR_1_every_error_reaches_the_user_in_one_shape(
    start_controller: StartController, file_server: str, closed_port_url: str
) -> None:
    """validation, network, sql, timeout, memory, crash: each with error_type, message, details, retryable."""
    controller = start_controller()
    table = {"url": f"{file_server}/simple.parquet", "table_name": "t"}
    cases = {
        "validation": {
            "sql": "SELECT * FROM t",
            "datasets": [{**table, "url": f"{file_server}/fake.parquet"}],
        },
        "network": {"sql": "SELECT * FROM t", "datasets": [{**table, "url": f"{closed_port_url}/x.parquet"}]},
        "sql": {"sql": "SELEC * FROM t", "datasets": [table]},
        "timeout": {**sleeper(), "limits": {"timeout_seconds": 1}},
        "memory": {"sql": "SELECT 1", "debug": {"allocate_mb": 1024}, "limits": {"memory": "200Mi"}},
        "crash": {"sql": "SELECT 1", "debug": {"crash": "segv"}},
    }
    with controller.client() as client:
        locations = {kind: submit(client, body) for kind, body in cases.items()}
        records = {kind: wait_finished(client, location) for kind, location in locations.items()}
    assert_each_failed_as_its_kind(records)


def test_ERR_2_a_failed_query_leaves_the_service_working(
    start_controller: StartController, file_server: str
) -> None:
    controller = start_controller()
    datasets = [{"url": f"{file_server}/simple.parquet", "table_name": "t"}]
    with controller.client() as client:
        failed = run(client, {"sql": "SELECT nonexistent FROM t", "datasets": datasets})
        ok = run(client, {"sql": "SELECT count(*) AS n FROM t", "datasets": datasets})
    assert failed["error"]["error_type"] == "sql"
    assert "nonexistent" in failed["error"]["message"]
    assert ok["result"]["rows"] == [[10]]


def test_POOL_1_2_and_QUEUE_1_cap_holds_and_starts_are_fifo(start_controller: StartController) -> None:
    """Cap 2, four queries: two run, two wait; order of starting follows submission."""
    controller = start_controller(max_concurrent=2)
    with controller.client() as client:
        locations = [submit(client, sleeper(60)) for _ in range(4)]
        wait_status(client, locations[0], "running")
        wait_status(client, locations[1], "running")
        assert [client.get(loc).json()["status"] for loc in locations[2:]] == ["queued", "queued"]
        assert client.get("/v1/queries", params={"status": "running"}).json()["items"].__len__() == 2

        client.delete(locations[1]).raise_for_status()
        third = wait_status(client, locations[2], "running")
        assert client.get(locations[3]).json()["status"] == "queued"
        client.delete(locations[0]).raise_for_status()
        fourth = wait_status(client, locations[3], "running")
        assert third["started_at"] <= fourth["started_at"]
        for location in locations[2:]:
            client.delete(location).raise_for_status()
        records = [wait_finished(client, loc) for loc in locations]
    assert [r["status"] for r in records] == ["cancelled"] * 4
    assert all(r["error"]["error_type"] == "cancelled" for r in records)


def test_cancel_queued_never_starts_and_cancel_running_kills_the_worker(
    start_controller: StartController, worker_leak_check: Callable[[], None]
) -> None:
    controller = start_controller(max_concurrent=1)
    with controller.client() as client:
        running = submit(client, sleeper(60))
        queued = submit(client, sleeper(60))
        wait_status(client, running, "running")
        cancelled = client.delete(queued)
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["started_at"] is None
        assert client.delete(running).json()["status"] == "cancelled"
        again = client.delete(running)
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        assert client.get(queued).json()["attempts"] == [], "a query that never started has no attempt"
    worker_leak_check()


def test_cancel_of_a_finished_query_is_a_conflict(start_controller: StartController) -> None:
    controller = start_controller()
    with controller.client() as client:
        location = submit(client, {"sql": "SELECT 1 AS x"})
        assert wait_finished(client, location)["status"] == "succeeded"
        response = client.delete(location)
    assert response.status_code == 409
    assert response.json()["error_type"] == "validation"
    assert "already finished as succeeded" in response.json()["message"]


def test_list_is_newest_first_filtered_and_paginated(start_controller: StartController) -> None:
    controller = start_controller()
    with controller.client() as client:
        ids = [client.post("/v1/queries", json={"sql": f"SELECT {i} AS x"}).json()["id"] for i in range(5)]
        for query_id in ids:
            wait_finished(client, f"/v1/queries/{query_id}")
        first = client.get("/v1/queries", params={"limit": 3}).json()
        second = client.get("/v1/queries", params={"limit": 3, "cursor": first["next_cursor"]}).json()
        succeeded = client.get("/v1/queries", params={"status": "succeeded"}).json()
        bad_status = client.get("/v1/queries", params={"status": "exploded"})
    assert [r["id"] for r in first["items"] + second["items"]] == ids[::-1]
    assert second["next_cursor"] is None
    assert len(succeeded["items"]) == 5
    assert bad_status.status_code == 422


def test_restart_after_kill_9_runs_every_queued_query_exactly_once(
    start_controller: StartController, tmp_path: Any, worker_leak_check: Callable[[], None]
) -> None:
    data_dir = tmp_path / "restart-data"
    first = start_controller(data_dir=data_dir, max_concurrent=1)
    with first.client() as client:
        blocker = submit(client, sleeper(60))
        wait_status(client, blocker, "running")
        queued = [submit(client, {"sql": f"SELECT {i} AS n"}) for i in range(5)]
    first.kill()
    worker_leak_check()  # the running worker died with its controller (PR_SET_PDEATHSIG)

    second = start_controller(data_dir=data_dir, max_concurrent=2)
    with second.client() as client:
        records = [wait_finished(client, loc) for loc in queued]
        blocker_record = client.get(blocker).json()
        client.delete(blocker)
        listed = client.get("/v1/queries", params={"limit": 100}).json()["items"]
    assert [r["result"]["rows"] for r in records] == [[[i]] for i in range(5)]
    assert all(len(r["attempts"]) == 1 for r in records)
    # The query running at the kill is started again, once; its first attempt stays on the record.
    first_attempt, second_attempt = blocker_record["attempts"]
    assert (first_attempt["status"], second_attempt["status"]) == ("interrupted", "running")
    assert first_attempt["error"]["error_type"] == "internal" and first_attempt["finished_at"] is not None
    assert len(listed) == 6


def test_graceful_stop_requeues_running_queries(start_controller: StartController, tmp_path: Any) -> None:
    data_dir = tmp_path / "graceful-data"
    first = start_controller(data_dir=data_dir, max_concurrent=1)
    with first.client() as client:
        location = submit(client, {**sleeper(3), "limits": {"timeout_seconds": 30}})
        wait_status(client, location, "running")
    # uvicorn re-raises SIGTERM once its graceful shutdown is done, so the exit status is the signal's.
    assert first.stop() in (0, -15)
    assert "podq stopped" in first.log()
    second = start_controller(data_dir=data_dir)
    with second.client() as client:
        record = wait_finished(client, location)
    assert record["status"] == "succeeded"
    # A graceful stop does not use up an attempt, but it is on the record.
    handed_back, ran = record["attempts"]
    assert (handed_back["status"], ran["status"], ran["number"]) == ("interrupted", "succeeded", 2)
    assert "stopped gracefully" in handed_back["error"]["message"]


def one_dataset(url: str, table_name: str = "a") -> dict[str, Any]:
    """`SELECT 1` with one dataset."""
    return {"sql": "SELECT 1", "datasets": [{"url": url, "table_name": table_name}]}


def limited(**limits: Any) -> dict[str, Any]:
    """`SELECT 1` with these limits."""
    return {"sql": "SELECT 1", "limits": limits}


BAD_REQUESTS: list[tuple[str, dict[str, Any] | bytes, int, str]] = [
    ("malformed JSON", b'{"sql": "SELECT 1",', 400, "not valid JSON"),
    ("missing sql", {"datasets": []}, 422, "sql: Field required"),
    ("empty sql", {"sql": ""}, 422, "sql"),
    ("blank sql", {"sql": "  \n "}, 422, "sql is empty"),
    ("sql over the size cap", {"sql": "SELECT " + "1" * 2000}, 422, "sql: sql is"),
    (
        "duplicate table names",
        {
            "sql": "SELECT 1",
            "datasets": [
                {"url": "http://h/a.parquet", "table_name": "a"},
                {"url": "http://h/b.parquet", "table_name": "a"},
            ],
        },
        422,
        "duplicate table_name",
    ),
    (
        "table_name not an identifier",
        one_dataset("http://h/a.parquet", "a; DROP"),
        422,
        "datasets.0.table_name",
    ),
    ("file:// URL", one_dataset("file:///etc/passwd"), 422, "only http and https"),
    ("cpu above the maximum", limited(cpu="64"), 422, "limits.cpu"),
    ("memory above the maximum", limited(memory="1Ti"), 422, "limits.memory"),
    ("timeout above the maximum", limited(timeout_seconds=10**6), 422, "limits.timeout_seconds"),
    ("zero timeout", limited(timeout_seconds=0), 422, "limits.timeout_seconds"),
    ("negative timeout", limited(timeout_seconds=-1), 422, "limits.timeout_seconds"),
    ("zero queue timeout", limited(queue_timeout_seconds=0), 422, "limits.queue_timeout_seconds"),
    ("negative queue timeout", limited(queue_timeout_seconds=-2), 422, "limits.queue_timeout_seconds"),
    ("queue timeout no number", limited(queue_timeout_seconds="soon"), 422, "limits.queue_timeout_seconds"),
    (
        "queue timeout above the maximum",
        limited(queue_timeout_seconds=10**6),
        422,
        "limits.queue_timeout_seconds: queue_timeout_seconds 1e+06 is above the maximum 86400",
    ),
    (
        "metadata address spelled as one number",
        one_dataset("http://2852039166/latest"),
        422,
        "datasets[0].url: refused to fetch from 2852039166 (169.254.169.254): link-local (cloud metadata)",
    ),
    (
        "IPv4-mapped metadata address",
        one_dataset("http://[::ffff:169.254.169.254]/"),
        422,
        "datasets[0].url: refused to fetch from ::ffff:169.254.169.254",
    ),
    (
        "private address",
        one_dataset("http://10.0.0.1/x.parquet"),
        422,
        "datasets[0].url: refused to fetch from 10.0.0.1: private",
    ),
    (
        "credentials in the URL",
        one_dataset("http://u:p@example.test/x.parquet"),
        422,
        "datasets[0].url: dataset URLs must not carry a user name or password",
    ),
    ("max_rows zero", {"sql": "SELECT 1", "max_rows": 0}, 422, "max_rows"),
    ("max_rows above the cap", {"sql": "SELECT 1", "max_rows": 10**9}, 422, "max_rows"),
    ("unknown field", {"sql": "SELECT 1", "priority": "high"}, 422, "priority"),
    ("body over the size cap", {"sql": "SELECT 1", "pad": "x" * 70_000}, 413, "larger than"),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "message"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_requests_get_a_typed_4xx_and_lose_nothing(
    running_controller: ControllerProcess, case: str, body: dict[str, Any] | bytes, status: int, message: str
) -> None:
    with running_controller.client() as client:
        before = client.get("/v1/queries", params={"limit": 500}).json()["items"]
        if isinstance(body, bytes):
            response = client.post("/v1/queries", content=body, headers={"content-type": "application/json"})
        else:
            response = client.post("/v1/queries", json=body)
        after = client.get("/v1/queries", params={"limit": 500}).json()["items"]
        healthy = client.get("/healthz").status_code
    assert response.status_code == status, response.text
    error = response.json()
    assert error["error_type"] == "validation"
    assert message in error["message"], error
    assert error["retryable"] is False
    assert "Traceback" not in response.text
    assert after == before, "a refused request must not create or change a query"
    assert healthy == 200


def test_a_chunked_body_over_the_cap_is_413_too(running_controller: ControllerProcess) -> None:
    """No Content-Length to check up front: the cap is counted while the body streams in."""

    def chunks() -> Iterator[bytes]:
        yield b'{"sql": "SELECT 1", "pad": "'
        for _ in range(10):
            yield b"x" * 10_000
        yield b'"}'

    with running_controller.client() as client:
        response = client.post("/v1/queries", content=chunks(), headers={"content-type": "application/json"})
        small = client.post(
            "/v1/queries",
            content=iter([b'{"sql": ', b'"SELECT 1 AS x"}']),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 413, response.text
    assert response.json()["error_type"] == "validation"
    assert small.status_code == 202, small.text


def test_unknown_query_id_is_404(running_controller: ControllerProcess) -> None:
    with running_controller.client() as client:
        for response in (
            client.get("/v1/queries/nope"),
            client.delete("/v1/queries/nope"),
            client.get("/v1/inspections/nope"),
        ):
            assert response.status_code == 404
            assert response.json()["error_type"] == "validation"


def test_debug_hooks_are_refused_when_disabled(start_controller: StartController) -> None:
    controller = start_controller(enable_test_hooks="false")
    with controller.client() as client:
        response = client.post("/v1/queries", json=sleeper(1))
    assert response.status_code == 422
    assert response.json()["message"].startswith("debug:")


def test_health_readiness_metrics_and_openapi(running_controller: ControllerProcess) -> None:
    with running_controller.client() as client:
        wait_finished(client, submit(client, {"sql": "SELECT 1 AS x"}))
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        metrics = client.get("/metrics").text
        openapi = client.get("/openapi.json").json()
    assert ready.status_code == 200 and ready.json()["checks"] == {"store": "ok", "launcher": "ok"}
    zygote = ready.json()["zygote"]
    assert zygote.startswith(("ok (1 threads: pid ", "starting")) or zygote == "off (cold starts)"
    assert "podq_queue_depth" in metrics
    assert 'podq_queries_finished_total{error_type="",operation="query",status="succeeded"}' in metrics
    assert {"/v1/queries", "/v1/queries/{query_id}", "/v1/inspections", "/healthz"} <= set(openapi["paths"])
    queue_timeout = openapi["components"]["schemas"]["LimitsIn"]["properties"]["queue_timeout_seconds"]
    assert "Queue deadline" in queue_timeout["description"]
    schemas = openapi["components"]["schemas"]
    assert "usage" in schemas["AttemptOut"]["properties"] and "usage" in schemas["RecordOut"]["properties"]
    documented = {name: prop.get("description") for name, prop in schemas["UsageOut"]["properties"].items()}
    assert set(documented) == {
        "peak_memory_bytes",
        "peak_memory_source",
        "peak_resident_bytes",
        "cgroup_peak_memory_bytes",
        "cpu_seconds",
        "phases",
        "datasets",
    }
    assert all(documented.values()), documented
    assert set(schemas["PhasesOut"]["properties"]) == {"queued", "starting", "fetch", "execute", "encode"}
    assert all(prop.get("description") for prop in schemas["PhasesOut"]["properties"].values())
    json.dumps(openapi)


HOSTILE_SQL = [
    (
        "table function reading a local file",
        "SELECT * FROM read_csv('{secret}')",
        "table functions are not allowed",
    ),
    (
        "table function reading a URL",
        "SELECT * FROM read_parquet('{server}/x.parquet')",
        "table functions are not",
    ),
    ("CREATE TABLE", "CREATE TABLE x AS SELECT 1 AS a", "CREATE"),
    ("DROP TABLE", "DROP TABLE t", "DROP"),
    ("SHOW TABLES", "SHOW TABLES", "SHOW"),
    ("two statements", "SELECT 1; SELECT 2", "statement"),
    ("a table without datasets", "SELECT * FROM t", "unknown table 't'; registered tables: none"),
]


@pytest.mark.parametrize(("sql", "message"), [c[1:] for c in HOSTILE_SQL], ids=[c[0] for c in HOSTILE_SQL])
def test_hostile_sql_fails_as_validation_and_reads_nothing(
    running_controller: ControllerProcess,
    http_file_server: Any,
    tmp_path: Any,
    sql: str,
    message: str,
) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    before = len(http_file_server.requests)
    with running_controller.client() as client:
        record = run(client, {"sql": sql.format(secret=secret, server=http_file_server.url)})
        assert client.get("/healthz").status_code == 200
    assert record["status"] == "failed"
    assert record["error"]["error_type"] == "validation", record["error"]
    assert message in record["error"]["message"]
    assert "hunter2" not in json.dumps(record)
    assert len(http_file_server.requests) == before, "the worker fetched something it was not given"
