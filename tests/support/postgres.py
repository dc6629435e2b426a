"""A real PostgreSQL server for the tests: started once per session by the test tooling itself (initdb into
a directory of its own, on a free loopback port, as an unprivileged user when run as root), stopped and
removed at the end. Each test gets a database of its own on it.

The binaries: `initdb` on PATH, else Debian's /usr/lib/postgresql/<version>/bin (`tests/run.sh` installs
the `postgresql` package when neither is there). Without them the PostgreSQL variants are skipped, loudly,
unless PODQ_POSTGRES=required.

With PODQ_TEST_POSTGRES_PORT set, the tests use the server already listening on that loopback port instead
(tests/mutation.sh starts one for all its test processes; a server per process cost seconds per mutant).
Each process then names its databases after its pid and drops them at its end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import psycopg
import pytest

from controller.testing.process import free_port


def binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _unprivileged_user() -> str | None:
    """PostgreSQL refuses to run as root: then the `postgres` account if there is one, else `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root, and neither a postgres nor a nobody account exists")


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.user = _unprivileged_user()
        self.root = Path(tempfile.mkdtemp(prefix="podq-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._names = count()
        self._prefix = "t"
        # Databases no test uses any more, emptied before the next takes one: creating one copies and
        # later deletes hundreds of files, which a slow disk makes a fraction of a second each way.
        self._free: list[str] = []
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            user=self.user,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr}{done.stdout}\n{log}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "podq", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self, *, durable: bool = False, also_listen_on: str | None = None) -> None:
        """`also_listen_on`: an address of this machine that pods reach it at (the e2e tier), where any
        client is let in without a password, as on loopback."""
        # fsync off: the tests restart the server cleanly or not at all, never lose the host under it.
        # Benchmarks ask for a durable server: a commit is on disk before it is acknowledged.
        addresses = "127.0.0.1"
        if also_listen_on is not None:
            addresses += f",{also_listen_on}"
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write("host all all 0.0.0.0/0 trust\n")
        options = f"-p {self.port} -k {self.data} -c listen_addresses={addresses} -c max_connections=300"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, database: str = "postgres", host: str = "127.0.0.1") -> str:
        return f"postgresql://podq@{host}:{self.port}/{database}"

    def take_database(self) -> str:
        """An empty database of its own (no tables, no schema version) for a test."""
        if self._free:
            url = self._free.pop()
            self._empty(url)
            return url
        return self._new_database()

    def _new_database(self) -> str:
        name = f"{self._prefix}{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}".encode())
        return self.url(name)

    def _empty(self, url: str) -> None:
        self.execute(url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")

    def give_back(self, url: str) -> None:
        """Every connection to the database is closed: the next test may take it."""
        self._free.append(url)

    def execute(self, url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """SQL from a test, for what the store offers no way to do (age a heartbeat, fake a newer schema)."""
        with psycopg.connect(url, autocommit=True) as db:
            cursor = db.execute(sql.encode(), params)
            return cursor.fetchall() if cursor.description else []

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# The databases tests/tools/shared_postgres.py creates with the shared server. A test process takes one
# for as long as it runs, holding an advisory lock (in the `postgres` database) of this class and the
# database's number: the lock goes with the process's connection, however the process ends.
POOL = tuple(f"pool{number}" for number in range(8))
_POOL_LOCKS = 0x706F6471  # "podq"


class SharedPostgresServer(PostgresServer):
    """A server another process started and stops: this process takes databases of its pool, or, when all
    are taken, creates databases of its own and drops them at its end."""

    def __init__(self, bin_dir: Path, port: int) -> None:
        super().__init__(bin_dir)
        self.port = port
        self._prefix = f"p{os.getpid()}db"  # no LIKE wildcard in it
        self._locks: psycopg.Connection[Any] | None = None
        self._held: set[int] = set()

    def _new_database(self) -> str:
        for number, name in enumerate(POOL):
            # A session takes an advisory lock again as often as it asks: skip what this one holds.
            if number not in self._held and self._lock(number):
                self._held.add(number)
                # A process killed while it held the database (mutmut's timeout) may have left connections.
                self.execute(
                    self.url(),
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
                url = self.url(name)
                self._empty(url)
                return url
        return super()._new_database()

    def _lock(self, number: int) -> bool:
        """Whether this process now holds the pool's database `number` (until its connection goes)."""
        if self._locks is None:
            self._locks = psycopg.connect(self.url(), autocommit=True)
        taken = self._locks.execute("SELECT pg_try_advisory_lock(%s, %s)", (_POOL_LOCKS, number)).fetchone()
        return taken is not None and bool(taken[0])

    def start(self, *, durable: bool = False, also_listen_on: str | None = None) -> None:
        raise RuntimeError(f"the shared server ({SHARED_PORT_ENV}) is not this process's to start")

    def stop(self, mode: str = "fast") -> None:
        raise RuntimeError(f"the shared server ({SHARED_PORT_ENV}) is not this process's to stop")

    def remove(self) -> None:
        if self._locks is not None:
            self._locks.close()
        with psycopg.connect(self.url(), autocommit=True) as db:
            for (name,) in db.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{self._prefix}%",)
            ).fetchall():
                db.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())
        shutil.rmtree(self.root, ignore_errors=True)


SHARED_PORT_ENV = "PODQ_TEST_POSTGRES_PORT"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (or the shared one); skipped (loudly) without the binaries."""
    bin_dir = binaries()
    if bin_dir is None:
        reason = "no PostgreSQL binaries (initdb): apt-get install postgresql, or run tests/run.sh"
        if os.environ.get("PODQ_POSTGRES") == "required":
            pytest.fail(f"PODQ_POSTGRES=required, but {reason}")
        pytest.skip(reason)
    shared = os.environ.get(SHARED_PORT_ENV)
    server = SharedPostgresServer(bin_dir, int(shared)) if shared else PostgresServer(bin_dir)
    try:
        if not shared:
            server.init()
            server.start()
        yield server
    finally:
        server.remove()
