"""The shared pytest plugin (loaded by tests/conftest.py): every fixture more than one test module uses.

Sections: fixture datasets and the file server; the worker as a subprocess; the controller.
Add new fixtures under a section of their own rather than copying one into a test module.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from itertools import count
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from controller.launchers.local.cgroups import CgroupUnavailable, JobCgroups
from controller.launchers.local.launcher import LocalLauncher
from controller.testing.fileserver import FileServer
from controller.testing.process import ControllerProcess, free_port
from tests.support.leaks import Proc, live_workers, live_zygotes, processes
from tests.support.parquet_files import generate
from tests.support.waiting import wait_until
from worker_image.protocol import (
    REQUEST_ENV,
    TERMINATION_MESSAGE_ENV,
    TEST_HOOKS_ENV,
    EnvelopeError,
    decode_envelope,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------- datasets and the file server


@pytest.fixture(scope="session")
def parquet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated fixture files (see tests/support/parquet_files.py)."""
    directory = tmp_path_factory.mktemp("parquet")
    generate(directory)
    return directory


@pytest.fixture(scope="session")
def http_file_server(parquet_dir: Path) -> Iterator[FileServer]:
    """The file server itself, for tests that check which paths were requested."""
    with FileServer(parquet_dir) as server:
        yield server


@pytest.fixture(scope="session")
def file_server(http_file_server: FileServer) -> str:
    """Base URL (no trailing slash) of a real HTTP server serving `parquet_dir`."""
    return http_file_server.url


# Materialises 2000 x 2000 x 100 groups over `sample_datasets`' table2: far beyond a few hundred MiB.
HUNGRY_SQL = (
    "SELECT a.id AS x, b.id AS y, c.id AS z, count(*) AS n "
    "FROM table2 a CROSS JOIN table2 b CROSS JOIN (SELECT id FROM table2 LIMIT 100) c GROUP BY 1, 2, 3"
)


# Issue 11's runaway query: 200 million distinct keys over table2, past 512 MiB of hash table within a
# second of starting (polars alone: 0.58 s).
RUNAWAY_SQL = (
    "SELECT DISTINCT a.id * 1000000 + b.id * 100 + c.id AS k "
    "FROM table2 a CROSS JOIN table2 b CROSS JOIN (SELECT * FROM table2 LIMIT 50) c"
)


def runaway_allowance(trivial_seconds: float) -> float:
    """How long a local worker may take from spawn to its memory verdict on the runaway query, given how
    long a trivial query over the same dataset took just before on the same machine: its start-up and
    download, three times over for a busy machine, plus 3 s for the query to reach its limit (0.6 s on
    its own). Measured on a quiet 2-core machine: 1.4-1.9 s against a trivial 0.5-0.8 s; with the load at
    20, 13-14 s against a trivial ~4 s. Before the worker watched its memory, cgroup mode took 16-60 s at
    the limit, which this bound fails on any machine."""
    return 3 * trivial_seconds + 3


# A top-k over an 8e9-row cross join: CPU-bound for minutes in constant memory (~80 MiB), and inside
# polars' native collect() all along. For deadline, cancel, deletion and signal tests with real SQL.
CPU_BOUND_SQL = (
    "SELECT a.id AS x, b.id AS y, c.id AS z FROM table2 a CROSS JOIN table2 b CROSS JOIN table2 c "
    "ORDER BY a.val + b.val * 3 + c.val * 7 DESC LIMIT 5"
)


@pytest.fixture
def sample_datasets(file_server: str) -> list[dict[str, str]]:
    return [
        {"url": f"{file_server}/simple.parquet", "table_name": "table1"},
        {"url": f"{file_server}/large.parquet", "table_name": "table2"},
    ]


# ---------------------------------------------------------------- the worker as a subprocess

TEST_HOOKS_ON = {TEST_HOOKS_ENV: "1"}
# The fixture servers listen on loopback, which the fetch policy refuses unless allowed.
LOOPBACK_ALLOWED = ["127.0.0.0/8"]


def fetch_options(**overrides: Any) -> dict[str, Any]:
    """Fetch options for a worker request: generous defaults, loopback allowed, tightened per test."""
    return {
        "connect_timeout_seconds": 5,
        "read_timeout_seconds": 10,
        "total_timeout_seconds": 30,
        "max_download_bytes": 64 * 1024 * 1024,
        "allowed_networks": LOOPBACK_ALLOWED,
        **overrides,
    }


def query_request(
    sql: str, datasets: list[dict[str, str]], max_rows: int = 1000, **fetch: Any
) -> dict[str, Any]:
    return {
        "operation": "query",
        "sql": sql,
        "datasets": datasets,
        "max_rows": max_rows,
        "fetch": fetch_options(**fetch),
    }


def inspect_request(url: str, **fetch: Any) -> dict[str, Any]:
    return {"operation": "inspect", "url": url, "fetch": fetch_options(**fetch)}


class WorkerRun(NamedTuple):
    exit_code: int
    envelope: dict[str, Any] | None
    stdout: str
    stderr: str


RunWorker = Callable[..., WorkerRun]


def _worker_env(
    request: Any, tmp_path: Path, index: int, env_extra: Mapping[str, str] | None
) -> dict[str, str]:
    worker_tmp = tmp_path / f"worker-{index}-tmp"
    worker_tmp.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PODQ_")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            REQUEST_ENV: request if isinstance(request, str) else json.dumps(request),
            TERMINATION_MESSAGE_ENV: str(tmp_path / f"worker-{index}-termination-log"),
            "TMPDIR": str(worker_tmp),
            **(env_extra or {}),
        }
    )
    return env


@pytest.fixture
def run_worker(tmp_path: Path) -> RunWorker:
    """`run_worker(request, env_extra=None, timeout=60)` runs ``python -m worker_image`` as a real subprocess.

    The request goes in as ``PODQ_REQUEST`` (a str is passed verbatim, anything else as JSON). Each run
    gets its own TMPDIR and termination-message path under tmp_path (`env_extra` may override either);
    test hooks are off unless `env_extra` turns them on. A run over `timeout` seconds fails the test.
    """
    runs = count()

    def run(request: Any, env_extra: Mapping[str, str] | None = None, timeout: float = 60) -> WorkerRun:
        done = subprocess.run(
            [sys.executable, "-m", "worker_image"],
            check=False,
            env=_worker_env(request, tmp_path, next(runs), env_extra),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        try:
            envelope: dict[str, Any] | None = decode_envelope(done.stdout)
        except EnvelopeError:
            envelope = None
        return WorkerRun(done.returncode, envelope, done.stdout, done.stderr)

    return run


StartWorker = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    """`start_worker(request, env_extra=None)`: ``python -m worker_image`` started as `run_worker` runs it,
    for a test that acts on the running process (a signal); output discarded. Killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []
    runs = count()

    def start(request: Any, env_extra: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker_image"],
            env=_worker_env(request, tmp_path, next(runs), env_extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture
def termination_log(tmp_path: Path) -> Path:
    """A termination-message path to pass as ``env_extra={TERMINATION_MESSAGE_ENV: str(path)}``."""
    return tmp_path / "termination-log"


# ---------------------------------------------------------------- the controller (`podq serve`)

# Settings every test controller gets unless a test overrides them: test hooks on (crash, sleep,
# allocate), a small SQL cap so the size check is cheap to hit, the default concurrency of 2, and
# loopback allowed for the fixture file server.
CONTROLLER_DEFAULTS = {
    "enable_test_hooks": "true",
    "max_sql_bytes": "1000",
    "max_body_bytes": "65536",
    "fetch_allowed_networks": json.dumps(LOOPBACK_ALLOWED),
}


def _env(settings: Mapping[str, object]) -> dict[str, str]:
    return {f"PODQ_{name.upper()}": str(value) for name, value in settings.items()}


def workers_under(directory: Path) -> list[Proc]:
    """Live worker processes, warm or cold, whose job directory (their working directory) is in
    `directory`."""
    return [
        proc
        for proc in processes()
        if proc.is_worker and proc.state != "Z" and _is_within(proc.cwd(), directory)
    ]


def _is_within(path: Path | None, directory: Path) -> bool:
    return path is not None and path.is_relative_to(directory)


@pytest.fixture
def worker_leak_check(tmp_path: Path) -> Callable[[], None]:
    """Call to assert that no worker started under this test's tmp_path is still alive."""

    def check() -> None:
        wait_until(lambda: not workers_under(tmp_path), "every worker of this test to be gone")

    return check


# How local workers start (`PODQ_LOCAL_WARM_START`, the local launcher's `warm_start`): every test runs in
# the default, warm (forked from a zygote). A test whose behaviour is cold-specific, or whose scenario runs
# through code of the cold path's own (spawn, exec, preexec confinement, its reaping), says so by
# parametrising `start_mode` itself: `BOTH_START_MODES` to run cold as well, `COLD_START` to run cold only.
BOTH_START_MODES = pytest.mark.parametrize("start_mode", ["warm", "cold"])
COLD_START = pytest.mark.parametrize("start_mode", ["cold"])


@pytest.fixture
def start_mode() -> str:
    """How the local launchers and controllers a test starts start their workers: "warm" (the default),
    unless the test parametrises `start_mode` (`BOTH_START_MODES`, `COLD_START`)."""
    return "warm"


def _warm_setting(start_mode: str) -> dict[str, str]:
    return {"local_warm_start": str(start_mode == "warm").lower()}


@pytest.fixture
def start_controller(
    tmp_path: Path, worker_leak_check: Callable[[], None], start_mode: str
) -> Iterator[Callable[..., ControllerProcess]]:
    """Start `podq serve` subprocesses; each is stopped (SIGTERM) at teardown, leaving no worker behind.
    Workers start as `start_mode` says unless a test sets ``local_warm_start`` itself."""
    started: list[ControllerProcess] = []
    warm = _warm_setting(start_mode)

    def start(data_dir: Path | None = None, **settings: object) -> ControllerProcess:
        controller = ControllerProcess(
            data_dir or tmp_path / "data",
            _env({**CONTROLLER_DEFAULTS, **warm, **settings}),
            tmp_path / f"controller-{len(started)}.log",
        )
        controller.start()
        started.append(controller)
        return controller

    yield start
    for controller in started:
        controller.stop()
    worker_leak_check()


@pytest.fixture(scope="module")
def running_controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    """One controller (warm start) shared by a module's tests that only read or submit cheap queries."""
    directory = tmp_path_factory.mktemp("controller")
    controller = ControllerProcess(
        directory / "data",
        _env({**CONTROLLER_DEFAULTS, **_warm_setting("warm")}),
        directory / "controller.log",
    )
    controller.start()
    yield controller
    controller.stop()


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL on which nothing listens: connecting is refused at once."""
    return f"http://127.0.0.1:{free_port()}"


# ---------------------------------------------------------------- the local launcher
# (section owned by the local launcher's tests; see also tests/support/leaks.py and waiting.py)


@functools.cache
def _cgroups_unavailable() -> str | None:
    try:
        JobCgroups.discover()
    except CgroupUnavailable as exc:
        return str(exc)
    return None


@pytest.fixture(params=["cgroup", "rlimit"])
def memory_enforcement(request: pytest.FixtureRequest) -> str:
    """Each way the local launcher caps memory; "cgroup" is skipped where no memory cgroup is writable."""
    mode: str = request.param
    if mode == "cgroup" and (reason := _cgroups_unavailable()) is not None:
        pytest.skip(f"no writable memory cgroup here: {reason}")
    return mode


# The polars thread count of the tests' default job (2 cores): its zygote starts with the launcher.
TEST_WARM_THREADS = (2,)


@pytest.fixture
def local_launcher(tmp_path: Path, memory_enforcement: str, start_mode: str) -> Callable[..., LocalLauncher]:
    """`local_launcher(**overrides)`: a LocalLauncher (not yet started; use ``async with``) with test hooks
    on, `memory_enforcement`'s mode, `start_mode`'s, and ``tmp_path / "scratch"`` as its work directory.

    A test that swaps the interpreter (``python=``, a wrapper script around the worker) is about what a cold
    start execs, so it runs cold (`COLD_START`); under warm start the wrapper would run the zygote instead."""

    def make(**overrides: Any) -> LocalLauncher:
        options: dict[str, Any] = {
            "work_dir": tmp_path / "scratch",
            "enable_test_hooks": True,
            "memory_enforcement": memory_enforcement,
            "warm_start": start_mode == "warm",
            "warm_threads": TEST_WARM_THREADS,
            "wait_for_zygotes": True,
            **overrides,
        }
        return LocalLauncher(**options)

    return make


@pytest.fixture
def no_worker_leaks() -> Iterator[None]:
    """Fails the test if a worker process it started is still alive when it ends."""
    yield
    assert live_workers() == []
    assert live_zygotes() == []
