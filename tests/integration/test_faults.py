"""Faults in local mode (issue 6, item 5): the controller killed at each point of a query's life, the store
on a full disk, a worker killed by hand. Real `podq serve` subprocesses, real workers, a real filesystem."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.testing.process import ControllerProcess, wait_finished, wait_status
from tests.support.api import submit
from tests.support.fixtures import workers_under
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

StartController = Callable[..., ControllerProcess]

QUERIES, CAP = 24, 4
# Test-hook sleeps of the queries that run first: the first one ends well after all 24 are accepted, the
# other three well after it, so at its end three still run and twenty wait.
FIRST_SLEEP, OTHERS_SLEEP = 3, 7


def workload(datasets: list[dict[str, str]], *, with_sleeps: bool) -> list[dict[str, Any]]:
    """24 distinct queries over the fixture datasets; with sleeps, the first four hold their slots."""
    bodies: list[dict[str, Any]] = []
    for i in range(QUERIES):
        if i % 2:
            sql = f"SELECT name, value * {i} AS v FROM table1 WHERE id >= {i % 10} ORDER BY id"
        else:
            sql = f"SELECT id, val FROM table2 WHERE id % {QUERIES} = {i} ORDER BY id"
        body: dict[str, Any] = {"sql": sql, "datasets": datasets}
        if with_sleeps and i < CAP:
            body["debug"] = {"sleep_seconds": FIRST_SLEEP if i == 0 else OTHERS_SLEEP}
        bodies.append(body)
    return bodies


@pytest.fixture(scope="module")
def fault_free_results(running_controller: ControllerProcess, file_server: str) -> list[dict[str, Any]]:
    """The workload's results from a controller nothing happens to."""
    datasets = [
        {"url": f"{file_server}/simple.parquet", "table_name": "table1"},
        {"url": f"{file_server}/large.parquet", "table_name": "table2"},
    ]
    with running_controller.client() as client:
        locations = [submit(client, body) for body in workload(datasets, with_sleeps=False)]
        records = [wait_finished(client, location, timeout=120) for location in locations]
    assert [r["status"] for r in records] == ["succeeded"] * QUERIES, records
    return [r["result"] for r in records]


def stored(database: Path) -> dict[str, dict[str, Any]]:
    """The store's rows as a dead controller left them, read without writing (no checkpoint, no recovery)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT id, status, attempts, finished_at, result FROM queries ORDER BY seq")
        return {row["id"]: dict(row) for row in rows}


def log_count(log: str, query_id: str, event: str) -> int:
    return len(re.findall(rf"query {query_id}: {event}", log))


# Where the controller dies, and the statuses of the first four queries in the store at that moment (the
# other twenty are queued at every point).
KILL_POINTS = {
    # kill -9 from outside right after the 24th 202: the last query accepted, nothing more done.
    "after_accept": ["running"] * 4,
    # kill -9 from outside once the four workers are processes.
    "workers_running": ["running"] * 4,
    # PODQ_TEST_CRASH_AT: the first worker has ended, its outcome is not stored.
    "before_finish": ["running"] * 4,
    # PODQ_TEST_CRASH_AT: the first query's terminal state has just been committed.
    "after_finish": ["succeeded", "running", "running", "running"],
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_FAULT_1_kill_9_with_20_queued_and_4_running_every_query_ends_once(
    point: str,
    start_controller: StartController,
    tmp_path: Path,
    sample_datasets: list[dict[str, str]],
    fault_free_results: list[dict[str, Any]],
) -> None:
    data_dir = tmp_path / "data"
    crash_point = point in ("before_finish", "after_finish")
    first = start_controller(
        data_dir=data_dir, max_concurrent=CAP, **({"test_crash_at": point} if crash_point else {})
    )
    process = first.process
    assert process is not None
    with first.client() as client:
        ids = [submit(client, body).rsplit("/", 1)[1] for body in workload(sample_datasets, with_sleeps=True)]
        if point == "workers_running":
            wait_until(lambda: len(workers_under(tmp_path)) == CAP, "four workers to run", within=30)
        if crash_point:
            wait_until(lambda: process.poll() is not None, "the controller to reach its crash point", 60)
        else:
            first.kill()
    if crash_point:
        assert f"test crash point {point} reached" in first.log_path.read_text()
    # The workers died with their controller (PR_SET_PDEATHSIG).
    wait_until(lambda: not workers_under(tmp_path), "the killed controller's workers to be gone")

    at_crash = stored(data_dir / "podq.db")
    assert list(at_crash) == ids, "every 202 was durable"
    assert [at_crash[i]["status"] for i in ids] == KILL_POINTS[point] + ["queued"] * (QUERIES - CAP)

    second = start_controller(data_dir=data_dir, max_concurrent=CAP)
    with second.client() as client:
        records = [wait_finished(client, f"/v1/queries/{i}", timeout=180) for i in ids]
    assert [r["status"] for r in records] == ["succeeded"] * QUERIES
    assert [r["result"] for r in records] == fault_free_results

    first_log, second_log = first.log_path.read_text(), second.log_path.read_text()
    for query_id, record in zip(ids, records, strict=True):
        before = at_crash[query_id]
        if before["status"] == "succeeded":
            # Decided before the crash: kept as it was, never run or decided again.
            assert (len(record["attempts"]), record["finished_at"]) == (1, before["finished_at"])
            assert log_count(second_log, query_id, r"worker pid \d+ started") == 0
            assert log_count(second_log, query_id, "succeeded") == 0
            continue
        # As README "Restarts" says: a query running at the crash is started again (attempt 2), a queued
        # one runs once; either way it is decided exactly once, by the second controller.
        statuses = [attempt["status"] for attempt in record["attempts"]]
        assert statuses == (
            ["interrupted", "succeeded"] if before["status"] == "running" else ["succeeded"]
        ), (
            query_id,
            record,
        )
        assert log_count(first_log, query_id, r"worker pid \d+ started") <= before["attempts"]
        assert log_count(first_log, query_id, "succeeded") == 0
        assert log_count(second_log, query_id, r"worker pid \d+ started") == 1
        assert log_count(second_log, query_id, "succeeded") == 1
    assert list((data_dir / "scratch").iterdir()) == [], "no scratch directory outlives its job"


# ---------------------------------------------------------------- the store on a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB filesystem (tmpfs) mounted under tmp_path, unmounted at teardown.

    Request it before `start_controller`, so the controller is stopped before the unmount.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem to fill needs root")
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "podq-test", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            holders = subprocess.run(
                ["fuser", "-vm", str(mount_point)], check=False, capture_output=True, text=True
            )
            subprocess.run(["umount", "--lazy", str(mount_point)], check=True)
            pytest.fail(f"the small disk was still in use at teardown: {holders.stdout}{holders.stderr}")


def fill(disk: Path) -> Path:
    """Write a ballast file until the filesystem has no byte left; returns it."""
    ballast = disk / "ballast"
    with ballast.open("wb", buffering=0) as handle:
        for block in (bytes(2**20), bytes(4096), bytes(1)):
            try:
                while True:
                    handle.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    assert os.statvfs(disk).f_bavail == 0
    return ballast


def integrity(database: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        (result,) = db.execute("PRAGMA integrity_check").fetchone()
    return str(result)


def test_FAULT_2_store_on_a_full_disk_refuses_with_503_loses_nothing_and_recovers(
    small_disk: Path, start_controller: StartController, tmp_path: Path, file_server: str
) -> None:
    data_dir = small_disk / "data"
    controller = start_controller(data_dir=data_dir, max_concurrent=1)
    datasets = [{"url": f"{file_server}/simple.parquet", "table_name": "t"}]
    with controller.client() as client:
        earlier = wait_finished(
            client, submit(client, {"sql": "SELECT count(*) AS n FROM t", "datasets": datasets})
        )
        assert earlier["status"] == "succeeded"
        # Running while the disk fills: its worker ends while the store cannot record the outcome.
        held = submit(client, {"sql": "SELECT 41 + 1 AS answer", "debug": {"sleep_seconds": 5}})
        waiting = submit(client, {"sql": "SELECT 7 AS seven"})
        wait_status(client, held, "running")
        wait_until(lambda: workers_under(tmp_path), "the held query's worker to start")
        ballast = fill(small_disk)
        assert workers_under(tmp_path), "the held query was still running when the disk filled"

        refused = client.post("/v1/queries", json={"sql": "SELECT 1"})
        keyed = client.post("/v1/queries", json={"sql": "SELECT 2"}, headers={"Idempotency-Key": "disk-full"})
        for response in (refused, keyed):
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "5"
            error = response.json()
            assert set(error) == {"error_type", "message", "details", "retryable"}
            assert (error["error_type"], error["retryable"]) == ("internal", True)
            assert "database or disk is full" in error["message"]

        # Reads go on; nothing of the refused submissions is in the store.
        assert client.get(f"/v1/queries/{earlier['id']}").json() == earlier
        listed = client.get("/v1/queries").json()["items"]
        assert [r["id"] for r in listed] == [waiting.rsplit("/")[-1], held.rsplit("/")[-1], earlier["id"]]

        # The held worker ends: its outcome is kept and retried, the queue is not claimed from meanwhile.
        wait_until(lambda: not workers_under(tmp_path), "the held query's worker to end", within=30)
        held_id = held.rsplit("/")[-1]
        log = controller.log_path.read_text
        wait_until(lambda: f"query {held_id}: outcome not stored yet" in log(), "a retried write")
        wait_until(lambda: "could not claim the next query" in log(), "a retried claim")
        assert client.get(held).json()["status"] == "running"
        assert client.get(waiting).json()["status"] == "queued"

        ballast.unlink()
        held_record = wait_finished(client, held)
        waiting_record = wait_finished(client, waiting)
        after = wait_finished(client, submit(client, {"sql": "SELECT 3 AS three"}))
        rekeyed = client.post(
            "/v1/queries", json={"sql": "SELECT 2"}, headers={"Idempotency-Key": "disk-full"}
        )
        assert rekeyed.status_code == 202
        assert "idempotent-replayed" not in rekeyed.headers, "the refused submission left no key behind"
        assert wait_finished(client, rekeyed.headers["location"])["status"] == "succeeded"
        total = len(client.get("/v1/queries").json()["items"])

    assert (held_record["status"], held_record["result"]["rows"], len(held_record["attempts"])) == (
        "succeeded",
        [[42]],
        1,
    )
    assert (waiting_record["status"], len(waiting_record["attempts"])) == ("succeeded", 1)
    assert after["result"]["rows"] == [[3]]
    assert total == 5
    assert integrity(data_dir / "podq.db") == "ok"


# ---------------------------------------------------------------- a worker killed by hand


def test_FAULT_3_a_worker_killed_by_hand_fails_as_crash_naming_the_signal(
    start_controller: StartController, tmp_path: Path
) -> None:
    controller = start_controller()
    with controller.client() as client:
        location = submit(client, {"sql": "SELECT 1 AS x", "debug": {"sleep_seconds": 60}})
        wait_status(client, location, "running")
        (worker,) = wait_until(lambda: workers_under(tmp_path), "the worker to start")
        os.kill(worker.pid, signal.SIGKILL)
        record = wait_finished(client, location)
        after = wait_finished(client, submit(client, {"sql": "SELECT 2 AS y"}))
    assert record["status"] == "failed"
    error = record["error"]
    assert error["error_type"] == "crash"
    assert error["message"] == "the worker was killed by SIGKILL without a usable result"
    assert error["details"]["signal"] == "SIGKILL"
    assert error["retryable"] is True
    (attempt,) = record["attempts"]
    assert (attempt["status"], attempt["placement"]["pid"], attempt["error"]) == ("failed", worker.pid, error)
    assert after["result"]["rows"] == [[2]]
