"""`podq serve` refuses a store it cannot use with one line on stderr and an exit code, not a traceback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from controller.queue.store.migrations import SQLITE
from controller.testing.process import REPO_ROOT, free_port

pytestmark = pytest.mark.integration


def serve(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PODQ_")}
    env.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "PODQ_DATA_DIR": str(tmp_path / "data"),
            "PODQ_PORT": str(free_port()),
            **{f"PODQ_{name.upper()}": value for name, value in settings.items()},
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "controller", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_a_database_url_that_is_not_postgresql_is_refused(tmp_path: Path) -> None:
    done = serve(tmp_path, database_url="mysql://podq@db/podq")
    assert done.returncode == 2
    assert one_line(done).startswith("podq: refusing to start: PODQ_DATABASE_URL: ")
    assert "must be a postgresql:// URL" in done.stderr


def test_an_unreachable_database_is_refused_at_start(tmp_path: Path) -> None:
    url = f"postgresql://podq:secret-password@127.0.0.1:{free_port()}/podq"
    done = serve(tmp_path, database_url=url, database_timeout_seconds="1")
    assert done.returncode == 3
    line = one_line(done)
    assert line.startswith("podq: refusing to start: cannot reach the database"), line
    assert "secret-password" not in done.stderr + done.stdout


def test_heartbeats_must_fit_the_staleness(tmp_path: Path) -> None:
    done = serve(tmp_path, heartbeat_seconds="5", replica_stale_seconds="10")
    assert done.returncode == 2
    assert "PODQ_REPLICA_STALE_SECONDS (10.0) must be at least 3 heartbeats" in one_line(done)


def test_a_store_migrated_by_a_newer_podq_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with closing(sqlite3.connect(tmp_path / "data" / "podq.db", isolation_level=None)) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (7)")
    done = serve(tmp_path)
    assert done.returncode == 3
    newest = len(SQLITE)
    assert f"the database schema is version 7, but this podq knows versions up to {newest}" in one_line(done)
