"""Two real controllers (`podq serve`) on one real PostgreSQL database: they share the queue and the cap,
one killed with -9 loses nothing, and a database restart under load loses nothing either."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from controller.testing.process import ControllerProcess, wait_finished
from tests.support.api import submit
from tests.support.postgres import PostgresServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

StartController = Callable[..., ControllerProcess]
# Quick heartbeats, so a killed replica is taken for dead within seconds.
REPLICA_SETTINGS = {"heartbeat_seconds": "0.5", "replica_stale_seconds": "3", "database_timeout_seconds": "1"}


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> str:
    # Not handed back: the controllers outlive this fixture's teardown; the session's server goes whole.
    return postgres_server.take_database()


class RunningSampler:
    """Counts running queries in the store every few milliseconds, from a connection of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=1) as db:
                    while not self._stop.wait(0.005):
                        row = db.execute("SELECT count(*) FROM queries WHERE status = 'running'").fetchone()
                        self.peak = max(self.peak, row[0] if row else 0)
                        self.samples += 1
            except psycopg.Error:
                self._stop.wait(0.1)

    def __enter__(self) -> RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def rows_of(url: str) -> dict[str, tuple[str, int]]:
    with psycopg.connect(url, autocommit=True) as db:
        return {
            r[0]: (r[1], r[2]) for r in db.execute("SELECT id, status, attempts FROM queries ORDER BY seq")
        }


def count_in_logs(controllers: list[ControllerProcess], pattern: str) -> int:
    return sum(len(re.findall(pattern, c.log_path.read_text())) for c in controllers)


def numbered(i: int, sleep: float = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"sql": f"SELECT {i} AS n"}
    if sleep:
        body["debug"] = {"sleep_seconds": sleep}
    return body


def test_two_controllers_share_40_queries_at_cap_4_each_run_once(
    start_controller: StartController, database_url: str, tmp_path: Any
) -> None:
    settings = {**REPLICA_SETTINGS, "database_url": database_url, "max_concurrent": 4}
    controllers = [start_controller(data_dir=tmp_path / name, **settings) for name in ("a", "b")]
    with RunningSampler(database_url) as sampler:
        clients = [c.client() for c in controllers]
        locations = [submit(clients[i % 2], numbered(i, sleep=0.3)) for i in range(40)]
        records = [wait_finished(clients[(i + 1) % 2], loc, timeout=180) for i, loc in enumerate(locations)]
        for client in clients:
            client.close()
    assert [r["status"] for r in records] == ["succeeded"] * 40, records
    assert [r["result"]["rows"] for r in records] == [[[i]] for i in range(40)]
    assert all(len(r["attempts"]) == 1 for r in records)
    assert sampler.samples > 100 and sampler.peak == 4, (sampler.samples, sampler.peak)
    started = [count_in_logs([c], r"query \w+: starting attempt") for c in controllers]
    assert sum(started) == 40 and min(started) > 0, f"both replicas ran queries, 40 in all: {started}"


def test_kill_9_of_one_of_two_controllers_with_8_running_and_20_queued(
    start_controller: StartController, database_url: str, tmp_path: Any
) -> None:
    settings = {**REPLICA_SETTINGS, "database_url": database_url, "max_concurrent": 8}
    doomed, survivor = (start_controller(data_dir=tmp_path / name, **settings) for name in ("a", "b"))
    with doomed.client() as to_doomed, survivor.client() as to_survivor:
        ids = [
            submit(to_doomed if i % 2 else to_survivor, numbered(i, sleep=4 if i < 8 else 0)).rsplit("/", 1)[
                1
            ]
            for i in range(28)
        ]
        wait_until(lambda: list(rows_of(database_url).values()).count(("running", 1)) == 8, "8 running", 30)
        with psycopg.connect(database_url, autocommit=True) as db:
            owners = dict(
                db.execute("SELECT owner, count(*) FROM queries WHERE status = 'running' GROUP BY 1")
            )
        assert len(owners) == 2, f"both replicas run some: {owners}"
        at_kill = rows_of(database_url)
        assert [s for s, _ in at_kill.values()].count("queued") == 20
        doomed.kill()
        records = [wait_finished(to_survivor, f"/v1/queries/{i}", timeout=120) for i in ids]
    assert [r["status"] for r in records] == ["succeeded"] * 28, records
    assert [r["result"]["rows"] for r in records] == [[[i]] for i in range(28)], "the fault-free results"
    for query_id in ids:
        assert count_in_logs([doomed, survivor], rf"query {query_id}: succeeded") == 1, query_id
    assert "took over from a controller gone silent" in survivor.log_path.read_text()


def test_a_submission_is_answered_from_what_it_stored_alone(
    start_controller: StartController, database_url: str, tmp_path: Any
) -> None:
    """A 202 must not hang on any read after the insert commits: if that read failed, the client would be
    told 503 ("nothing was stored") for a stored query and submit it again. Another session holding the
    attempts table locked stands in for a database that stops answering right after the commit."""
    controller = start_controller(data_dir=tmp_path / "a", **REPLICA_SETTINGS, database_url=database_url)
    with psycopg.connect(database_url) as locker, controller.client() as client:
        locker.execute("LOCK TABLE attempts IN ACCESS EXCLUSIVE MODE")
        response = client.post("/v1/queries", json=numbered(7), timeout=20)
        assert response.status_code == 202, response.text
        assert response.json()["attempts"] == []
        assert response.json()["id"] in rows_of(database_url)
        locker.rollback()
        record = wait_finished(client, response.headers["location"], timeout=60)
    assert record["status"] == "succeeded" and record["result"]["rows"] == [[7]], record


def test_a_database_restart_under_load_loses_nothing(
    start_controller: StartController, database_url: str, postgres_server: PostgresServer, tmp_path: Any
) -> None:
    settings = {**REPLICA_SETTINGS, "replica_stale_seconds": "20", "database_url": database_url}
    controllers = [start_controller(data_dir=tmp_path / name, max_concurrent=2, **settings) for name in "ab"]
    answers: list[tuple[int, str | None, str | None]] = []  # (status code, Location, Retry-After)
    stop = threading.Event()

    def client_loop(controller: ControllerProcess, offset: int) -> None:
        with httpx.Client(base_url=controller.url, timeout=30) as client:
            n = offset
            while not stop.is_set():
                try:
                    response = client.post("/v1/queries", json=numbered(n, sleep=0.2))
                except httpx.TransportError as exc:
                    answers.append((0, None, repr(exc)))
                    continue
                answers.append(
                    (
                        response.status_code,
                        response.headers.get("location"),
                        response.headers.get("retry-after"),
                    )
                )
                n += 2
                stop.wait(0.05)

    threads = [threading.Thread(target=client_loop, args=(c, i)) for i, c in enumerate(controllers)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: sum(a[0] == 202 for a in answers) >= 10, "submissions before the restart", 30)
        postgres_server.stop("fast")
        wait_until(lambda: sum(a[0] == 503 for a in answers) >= 2, "503s while the database is down", 30)
        time.sleep(2)  # sleep-ok: the outage lasts a while under a steady stream of submissions
        postgres_server.start()
        seen = len(answers)
        wait_until(
            lambda: sum(a[0] == 202 for a in answers[seen:]) >= 10, "submissions after the restart", 60
        )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    codes = {code for code, _, _ in answers}
    assert codes <= {202, 503}, [a for a in answers if a[0] not in (202, 503)]
    assert all(retry is not None and int(retry) > 0 for code, _, retry in answers if code == 503)
    accepted = [location for code, location, _ in answers if code == 202]
    with controllers[0].client() as client:
        records = [wait_finished(client, str(location), timeout=180) for location in accepted]
    assert [r["status"] for r in records] == ["succeeded"] * len(accepted), records
    stored = rows_of(database_url)
    assert sorted(stored) == sorted(r["id"] for r in records), "every 202 stored, nothing else"
    assert "listening to the database again" in controllers[0].log_path.read_text()
