"""The local launcher with real `python -m worker_image` subprocesses against the real file server.

Tests taking `local_launcher` run once per memory enforcement mode (cgroup where writable, and rlimit), in
the default start mode (warm); those marked `BOTH_START_MODES` run cold as well: one per failure kind of the
seed scenarios (deadline, memory, crash, the controller killed) and the worker's confinement, whose code
differs between a fork from the zygote and a new interpreter. Those wrapping the interpreter a cold start
execs (``python=``) run cold only (`COLD_START`).
After every job: no process of its session is alive, its scratch directory and its cgroup are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from controller.launchers.base import Job, Limits, Outcome
from controller.launchers.local.cgroups import CgroupUnavailable
from controller.launchers.local.child import DEFAULT_INHERITED_ENV, address_space_limit
from controller.launchers.local.launcher import LocalLauncher, MemoryEnforcement
from controller.launchers.worker_io import polars_threads
from tests.support.fixtures import (
    BOTH_START_MODES,
    COLD_START,
    HUNGRY_SQL,
    REPO_ROOT,
    RUNAWAY_SQL,
    query_request,
    runaway_allowance,
)
from tests.support.leaks import (
    ZYGOTE_MODULE,
    Proc,
    live_workers,
    live_zygotes,
    read_proc,
    session_members,
)
from tests.support.waiting import wait_until, wait_until_async
from worker_image.protocol import EXIT_USER_ERROR, WorkerRequest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_worker_leaks")]

MakeLauncher = Callable[..., LocalLauncher]
MIB = 2**20

SIMPLE_SQL = "SELECT name FROM table1 WHERE id > 5 ORDER BY id"
# The runaway query's dataset, counted: its start-up and download without the work.
COUNT_SQL = "SELECT count(*) AS n FROM table2"
SIMPLE_ROWS = [["item_6"], ["item_7"], ["item_8"], ["item_9"]]
# 8e9 rows through a filter: a minute of CPU on two threads, in constant memory (streamed).
SLOW_SQL = (
    "SELECT count(*) AS n FROM table2 a CROSS JOIN table2 b CROSS JOIN table2 c "
    "WHERE a.id + b.val + c.id = -1"
)
# 400 million distinct groups: gigabytes of hash table, reached within a second.


def make_job(
    request: dict[str, Any], *, memory_mib: int = 512, timeout: float = 30, cpu_millicores: int = 2000
) -> Job:
    limits = Limits(cpu_millicores=cpu_millicores, memory_bytes=memory_mib * MIB, timeout_seconds=timeout)
    query_id = f"test-{uuid.uuid4().hex[:12]}"
    return Job(query_id=query_id, attempt=1, request=cast(WorkerRequest, request), limits=limits)


def with_debug(request: dict[str, Any], **debug: Any) -> dict[str, Any]:
    return {**request, "debug": debug}


def error_of(outcome: Outcome, error_type: str) -> dict[str, Any]:
    assert outcome.error is not None, outcome
    assert outcome.error["error_type"] == error_type, outcome.error
    return dict(outcome.error)


def rows_of(outcome: Outcome) -> list[list[Any]]:
    assert outcome.error is None, outcome.error
    assert outcome.result is not None
    rows: list[list[Any]] = outcome.result["rows"]
    return rows


def assert_left_nothing(launcher: LocalLauncher, job: Job, worker_pid: int, work_dir: Path) -> None:
    assert session_members(worker_pid) == []
    worker = read_proc(worker_pid)
    assert worker is None or worker.sid != worker_pid
    assert listing(work_dir) == []
    if launcher.cgroup_parent is not None:
        assert [path for path in launcher.cgroup_parent.iterdir() if job.query_id in path.name] == []


def listing(directory: Path) -> list[str] | None:
    """The names in `directory`, or None if there is no such directory."""
    return sorted(path.name for path in directory.iterdir()) if directory.is_dir() else None


def cgroup_of(launcher: LocalLauncher, job: Job) -> tuple[int, int]:
    """The one process in `job`'s cgroup, and the cgroup's memory limit."""
    assert launcher.cgroup_parent is not None
    [path] = [path for path in launcher.cgroup_parent.iterdir() if job.query_id in path.name]
    [pid] = (path / "cgroup.procs").read_text().split()
    limit = path / "memory.max" if (path / "memory.max").exists() else path / "memory.limit_in_bytes"
    return int(pid), int(limit.read_text())


def open_files(pid: int) -> dict[int, str]:
    """The process's file descriptors and what they point to (readlink of /proc/<pid>/fd/<n>)."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            found[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return found


def address_space_cap(pid: int) -> int:
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    return int(next(line for line in limits if line.startswith("Max address space")).split()[3])


def run_timed(local_launcher: MakeLauncher, job: Job, tmp_path: Path) -> tuple[Outcome, float]:
    """Run one job on a fresh launcher: its outcome and seconds from spawn to outcome; it left nothing."""

    async def scenario() -> tuple[Outcome, float]:
        async with local_launcher() as launcher:
            started = time.monotonic()
            outcome = await launcher.run(job)
            elapsed = time.monotonic() - started
            assert_left_nothing(launcher, job, outcome.placement["pid"], tmp_path / "scratch")
            return outcome, elapsed

    return asyncio.run(scenario())


async def first_worker() -> Proc:
    """The first worker, once it is in its job directory: a warm child is visible from its fork on, before
    it has moved into its job (its working directory is still the zygote's)."""

    def in_its_job() -> Proc | None:
        for worker in live_workers():
            cwd = worker.cwd()
            if cwd is not None and cwd.parent.name == "scratch":
                return worker
        return None

    return await wait_until_async(in_its_job, "a worker process in its job directory")


# ---------------------------------------------------------------- TIMEOUT


@BOTH_START_MODES
def test_TIMEOUT_1_slow_query_is_killed_at_its_deadline(
    local_launcher: MakeLauncher, sample_datasets: list[dict[str, str]], tmp_path: Path
) -> None:
    job = make_job(query_request(SLOW_SQL, sample_datasets), memory_mib=1024, timeout=2)

    outcome, elapsed = run_timed(local_launcher, job, tmp_path)

    error = error_of(outcome, "timeout")
    assert error["details"] == {"phase": "run", "timeout_seconds": 2}
    assert error["retryable"] is False
    assert outcome.placement["signal"] == "SIGKILL"
    # Not cut short. That it was killed at the deadline is what `timeout` and SIGKILL above say; an upper
    # bound on wall time would only make the test flaky on a busy machine.
    assert elapsed >= 2


def test_TIMEOUT_2_simple_query_succeeds_right_after_a_timeout(
    local_launcher: MakeLauncher, sample_datasets: list[dict[str, str]]
) -> None:
    async def scenario() -> tuple[Outcome, Outcome]:
        async with local_launcher() as launcher:
            slow = await launcher.run(
                make_job(query_request(SLOW_SQL, sample_datasets), memory_mib=1024, timeout=2)
            )
            simple = await launcher.run(make_job(query_request(SIMPLE_SQL, sample_datasets), timeout=30))
            return slow, simple

    slow, simple = asyncio.run(scenario())

    error_of(slow, "timeout")
    assert rows_of(simple) == SIMPLE_ROWS
    assert simple.placement["exit_code"] == 0


# ---------------------------------------------------------------- MEM


@BOTH_START_MODES
def test_MEM_1_query_materialising_beyond_its_limit_fails_with_memory(
    local_launcher: MakeLauncher,
    memory_enforcement: str,
    sample_datasets: list[dict[str, str]],
    tmp_path: Path,
) -> None:
    job = make_job(query_request(HUNGRY_SQL, sample_datasets), memory_mib=256, timeout=30)

    async def scenario() -> Outcome:
        async with local_launcher() as launcher:
            outcome = await launcher.run(job)
            assert_left_nothing(launcher, job, outcome.placement["pid"], tmp_path / "scratch")
            return outcome

    outcome = asyncio.run(scenario())

    error = error_of(outcome, "memory")
    assert error["details"]["limit_bytes"] == 256 * MIB
    assert error["details"]["enforcement"] == memory_enforcement
    assert error["retryable"] is False
    assert outcome.placement["memory_enforcement"] == memory_enforcement


def test_MEM_1_allocation_beyond_the_limit_fails_with_memory(
    local_launcher: MakeLauncher, memory_enforcement: str, sample_datasets: list[dict[str, str]]
) -> None:
    # Beyond the limit under either mode: the rlimit mode adds the interpreter's reservations to it.
    job = make_job(with_debug(query_request(SIMPLE_SQL, sample_datasets), allocate_mb=1024), memory_mib=256)

    async def scenario() -> Outcome:
        async with local_launcher() as launcher:
            return await launcher.run(job)

    outcome = asyncio.run(scenario())

    error_of(outcome, "memory")
    assert outcome.placement["memory_enforcement"] == memory_enforcement


def test_MEM_1_a_runaway_query_ends_as_memory_within_seconds(
    local_launcher: MakeLauncher,
    memory_enforcement: str,
    sample_datasets: list[dict[str, str]],
    tmp_path: Path,
) -> None:
    """Issue 11: at the cgroup's limit the kernel thrashed for 16-60 s before its OOM kill; the worker's own
    watch ends the query near the limit instead, in either enforcement mode."""
    count = make_job(query_request(COUNT_SQL, sample_datasets), memory_mib=512, timeout=60)
    job = make_job(query_request(RUNAWAY_SQL, sample_datasets), memory_mib=512, timeout=60)

    counted, trivial = run_timed(local_launcher, count, tmp_path)
    outcome, elapsed = run_timed(local_launcher, job, tmp_path)

    error = error_of(outcome, "memory")
    details = error["details"]
    assert details["limit_bytes"] == 512 * MIB
    assert details["enforcement"] == memory_enforcement
    assert details["stopped_by"] == "worker"
    assert 0 < details["peak_bytes"] < 512 * MIB
    assert "512 MiB" in error["message"]
    assert outcome.placement["exit_code"] == EXIT_USER_ERROR
    # From spawn to outcome: start-up and download included, so bounded by a trivial query's run.
    assert counted.error is None, counted.error
    assert elapsed <= runaway_allowance(trivial), (elapsed, trivial)


@BOTH_START_MODES
def test_polars_spills_nothing_to_disk_before_the_watch_stops_a_runaway_query(
    local_launcher: MakeLauncher,
    memory_enforcement: str,
    sample_datasets: list[dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """polars 2 spills to disk once what it holds passes 80% of the memory it detects (a cgroup's limit).
    Issue 11: in a pod that meant panics in a loop over the read-only /var/tmp while the query sat just under
    the worker's threshold; here, files outside the job's scratch directory. The worker's environment gives
    polars the whole limit as its budget, so the watch stops the query before polars writes anything."""
    spill_dir = tmp_path / "spill"
    monkeypatch.setenv("POLARS_OOC_SPILL_DIR", str(spill_dir))
    job = make_job(query_request(RUNAWAY_SQL, sample_datasets), memory_mib=512, timeout=60)

    async def scenario() -> Outcome:
        async with local_launcher(inherited_env=(*DEFAULT_INHERITED_ENV, "POLARS_OOC_SPILL_DIR")) as launcher:
            return await launcher.run(job)

    assert error_of(asyncio.run(scenario()), "memory")["details"]["stopped_by"] == "worker"
    assert not spill_dir.exists(), sorted(spill_dir.rglob("*"))


# 4 million distinct keys: a few hundred MiB at its peak, a second or two of work.
DISTINCT_4M_SQL = (
    "SELECT count(*) AS n FROM (SELECT DISTINCT a.id * 10000 + b.id AS k FROM table2 a CROSS JOIN table2 b)"
)


@pytest.fixture
def python_recording_peak(tmp_path: Path) -> tuple[str, Path]:
    """An interpreter that runs the worker, then writes its peak resident memory (VmHWM, bytes) to a file.

    Returns the interpreter to give the launcher and the file.
    """
    peak_file = tmp_path / "peak-bytes"
    probe = (
        "import sys\n"
        "from worker_image.__main__ import main\n"
        "code = main()\n"
        "kib = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
        f"open({str(peak_file)!r}, 'w').write(str(int(kib) * 1024))\n"
        "sys.exit(code)\n"
    )
    script = tmp_path / "python-recording-peak"
    script.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(probe)}\n")
    script.chmod(0o755)
    return str(script), peak_file


def test_MEM_3_a_query_peaking_at_80_percent_of_its_limit_succeeds(
    local_launcher: MakeLauncher,
    python_recording_peak: tuple[str, Path],
    sample_datasets: list[dict[str, str]],
) -> None:
    """The worker's watch must never fail a query that fits: measure a real query's peak under a generous
    limit (a cold start, through the wrapper), then run it again with the peak at 80% of its limit (in the
    default start mode, warm)."""
    python, peak_file = python_recording_peak
    request = query_request(DISTINCT_4M_SQL, sample_datasets)

    async def scenario() -> tuple[int, Outcome]:
        async with local_launcher(python=python, warm_start=False) as launcher:
            assert rows_of(await launcher.run(make_job(request, memory_mib=2048))) == [[4_000_000]]
            peak = int(peak_file.read_text())
        async with local_launcher() as launcher:
            return peak, await launcher.run(make_job(request, memory_mib=math.ceil(peak / 0.8 / MIB)))

    peak, outcome = asyncio.run(scenario())

    # A real test of the watch: the query's own memory, not the interpreter's, makes most of the peak.
    assert peak >= 200 * MIB, peak
    assert rows_of(outcome) == [[4_000_000]]


def test_MEM_2_simple_query_succeeds_after_running_out_of_memory(
    local_launcher: MakeLauncher, sample_datasets: list[dict[str, str]]
) -> None:
    async def scenario() -> tuple[Outcome, Outcome]:
        async with local_launcher() as launcher:
            hungry = await launcher.run(make_job(query_request(HUNGRY_SQL, sample_datasets), memory_mib=256))
            simple = await launcher.run(make_job(query_request(SIMPLE_SQL, sample_datasets), memory_mib=256))
            return hungry, simple

    hungry, simple = asyncio.run(scenario())

    error_of(hungry, "memory")
    assert rows_of(simple) == SIMPLE_ROWS


# ---------------------------------------------------------------- CRASH


@BOTH_START_MODES
@pytest.mark.parametrize(
    ("crash", "how"),
    [("exit", {"exit_code": 1}), ("segv", {"signal": "SIGSEGV"}), ("abort", {"signal": "SIGABRT"})],
)
def test_CRASH_1_worker_death_is_a_crash_then_the_next_query_succeeds(
    local_launcher: MakeLauncher, sample_datasets: list[dict[str, str]], crash: str, how: dict[str, Any]
) -> None:
    async def scenario() -> tuple[Outcome, Outcome]:
        async with local_launcher() as launcher:
            crashed = await launcher.run(
                make_job(with_debug(query_request(SIMPLE_SQL, sample_datasets), crash=crash))
            )
            simple = await launcher.run(make_job(query_request(SIMPLE_SQL, sample_datasets)))
            return crashed, simple

    crashed, simple = asyncio.run(scenario())

    error = error_of(crashed, "crash")
    assert how.items() <= error["details"].items()
    assert how.items() <= crashed.placement.items()
    assert error["details"]["envelope_problem"] == "no result envelope in the worker output"
    assert error["retryable"] is True
    assert rows_of(simple) == SIMPLE_ROWS


def test_CRASH_2_nothing_of_a_crashed_job_reaches_the_next(
    local_launcher: MakeLauncher, sample_datasets: list[dict[str, str]], tmp_path: Path
) -> None:
    sleeper = with_debug(query_request(SIMPLE_SQL, sample_datasets), sleep_seconds=60)

    async def scenario() -> None:
        async with local_launcher() as launcher:
            # The first worker leaves something in its scratch directory, then dies of a real SIGSEGV.
            first = asyncio.create_task(launcher.run(make_job(sleeper)))
            worker = await first_worker()
            first_tmp = worker.scratch()
            (first_tmp / "half-downloaded.parquet").write_bytes(b"PAR1")
            os.kill(worker.pid, signal.SIGSEGV)
            crashed = await first
            assert error_of(crashed, "crash")["details"]["signal"] == "SIGSEGV"
            assert listing(first_tmp) is None

            second = asyncio.create_task(launcher.run(make_job(sleeper)))
            worker = await first_worker()
            second_tmp = worker.scratch()
            assert second_tmp != first_tmp
            assert listing(second_tmp) == []
            assert listing(tmp_path / "scratch") == [second_tmp.parent.name]
            second.cancel()
            with pytest.raises(asyncio.CancelledError):
                await second

            assert (
                rows_of(await launcher.run(make_job(query_request(SIMPLE_SQL, sample_datasets))))
                == SIMPLE_ROWS
            )

    asyncio.run(scenario())


# ---------------------------------------------------------------- POOL


@pytest.fixture
def python_with_grandchild(tmp_path: Path) -> tuple[str, Path]:
    """An interpreter that leaves a process behind: it starts a `sleep` in its session, then execs Python.

    Returns the interpreter to give the launcher and the file the grandchild's pid is written to.
    """
    pid_file = tmp_path / "grandchild.pid"
    script = tmp_path / "python-with-grandchild"
    lines = ["#!/bin/sh", "sleep 300 &", f"echo $! > {shlex.quote(str(pid_file))}"]
    lines.append(f'exec {shlex.quote(sys.executable)} "$@"')
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return str(script), pid_file


def is_alive(proc: Proc) -> bool:
    """Whether `proc` is still running (its pid, not a zombie, with the same command line)."""
    now = read_proc(proc.pid)
    return now is not None and now.state != "Z" and now.cmdline == proc.cmdline


def recorded_pid(path: Path) -> int | None:
    """The pid the wrapper wrote, once it has written all of it."""
    with contextlib.suppress(FileNotFoundError):
        text = path.read_text().strip()
        return int(text) if text.isdigit() else None
    return None


ENDINGS: dict[str, tuple[dict[str, Any], dict[str, Any], str | None]] = {
    # ending: (debug hooks, limits, expected error_type)
    "success": ({}, {}, None),
    "timeout": ({"sleep_seconds": 60}, {"timeout": 1}, "timeout"),
    "crash": ({"crash": "segv"}, {}, "crash"),
    "memory": ({"allocate_mb": 1024}, {"memory_mib": 256}, "memory"),
    "cancel": ({"sleep_seconds": 60}, {}, None),
}


@COLD_START
@pytest.mark.parametrize("ending", list(ENDINGS))
def test_POOL_3_no_process_cgroup_or_scratch_outlives_a_job(
    local_launcher: MakeLauncher,
    python_with_grandchild: tuple[str, Path],
    sample_datasets: list[dict[str, str]],
    tmp_path: Path,
    ending: str,
) -> None:
    python, grandchild_pid_file = python_with_grandchild
    debug, limits, error_type = ENDINGS[ending]
    request = query_request(SIMPLE_SQL, sample_datasets)
    job = make_job(with_debug(request, **debug) if debug else request, **limits)

    async def scenario() -> None:
        async with local_launcher(python=python) as launcher:
            if ending == "cancel":
                task = asyncio.create_task(launcher.run(job))
                worker_pid = (await first_worker()).pid
                # Cancel only once the wrapper has left its grandchild behind (and said which it is).
                await wait_until_async(lambda: recorded_pid(grandchild_pid_file), "the grandchild to start")
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                outcome = await launcher.run(job)
                if error_type is None:
                    assert rows_of(outcome) == SIMPLE_ROWS
                else:
                    error_of(outcome, error_type)
                worker_pid = outcome.placement["pid"]
            assert_left_nothing(launcher, job, worker_pid, tmp_path / "scratch")

    asyncio.run(scenario())

    grandchild = read_proc(int(grandchild_pid_file.read_text()))
    assert grandchild is None or grandchild.state == "Z"


CONTROLLER_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from controller.launchers.base import Job, Limits
from controller.launchers.local.launcher import LocalLauncher, MemoryEnforcement

async def main():
    work_dir, mode, warm = Path(sys.argv[1]), sys.argv[2], sys.argv[4] == "warm"
    launcher = LocalLauncher(
        work_dir=work_dir, enable_test_hooks=True, memory_enforcement=mode, warm_start=warm,
        warm_threads=(int(sys.argv[5]),), wait_for_zygotes=True,
    )
    await launcher.start()
    await launcher.run(Job("orphan-check", 1, json.loads(sys.argv[3]), Limits(1000, 256 * 2**20, 600)))

asyncio.run(main())
"""


@BOTH_START_MODES
def test_POOL_3_killing_the_controller_kills_its_workers_and_the_next_one_cleans_up(
    memory_enforcement: str, start_mode: str, sample_datasets: list[dict[str, str]], tmp_path: Path
) -> None:
    """kill -9 of the controller: its workers die with it (their death signal; a warm worker's fires when
    its zygote dies of its own, with the controller), and so does the zygote."""
    work_dir = tmp_path / "scratch"
    request = with_debug(query_request(SIMPLE_SQL, sample_datasets), sleep_seconds=300)
    with (tmp_path / "controller.log").open("wb") as log:
        controller = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CONTROLLER_SCRIPT,
                str(work_dir),
                memory_enforcement,
                json.dumps(request),
                start_mode,
                str(polars_threads(1000)),
            ],
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        worker = wait_until(
            lambda: live_workers(controller.pid), "the controller's worker to start", within=30
        )[0]
        assert (ZYGOTE_MODULE in worker.cmdline) == (start_mode == "warm"), worker
        zygotes = live_zygotes(controller.pid)
        assert len(zygotes) == (1 if start_mode == "warm" else 0), zygotes
        controller.kill()
        controller.wait()
        wait_until(lambda: not session_members(worker.pid), "the orphaned worker to die")
        wait_until(lambda: not any(map(is_alive, zygotes)), "the orphaned zygote to die")
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()
    left_behind = [path.name for path in work_dir.iterdir()]
    assert len(left_behind) == 1 and "orphan-check" in left_behind[0]

    async def next_controller() -> Path | None:
        mode = cast(MemoryEnforcement, memory_enforcement)
        async with LocalLauncher(work_dir=work_dir, memory_enforcement=mode) as launcher:
            return launcher.cgroup_parent

    cgroup_parent = asyncio.run(next_controller())

    assert list(work_dir.iterdir()) == []
    if cgroup_parent is not None:
        assert [path for path in cgroup_parent.iterdir() if "orphan-check" in path.name] == []


def test_POOL_3_close_kills_running_jobs(
    local_launcher: MakeLauncher, sample_datasets: list[dict[str, str]], tmp_path: Path
) -> None:
    job = make_job(with_debug(query_request(SIMPLE_SQL, sample_datasets), sleep_seconds=60))

    async def scenario() -> None:
        launcher = local_launcher()
        await launcher.start()
        task = asyncio.create_task(launcher.run(job))
        worker = await first_worker()
        await launcher.close()
        outcome = await task
        error = error_of(outcome, "internal")
        assert error["retryable"] is True
        assert not await launcher.ready()
        assert_left_nothing(launcher, job, worker.pid, tmp_path / "scratch")

    asyncio.run(scenario())


# ---------------------------------------------------------------- how a worker is set up


@BOTH_START_MODES
def test_the_worker_runs_in_its_own_session_with_an_explicit_environment_and_its_memory_cap(
    local_launcher: MakeLauncher,
    memory_enforcement: str,
    start_mode: str,
    sample_datasets: list[dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cold worker's environment is what it was exec'd with; a warm worker's /proc environ is the
    zygote's (which holds no request and nothing of the controller's), its own environment is checked from
    inside it (`test_concurrent_workers_cannot_see_each_others_requests`)."""
    monkeypatch.setenv("PODQ_TEST_CONTROLLER_SECRET", "must not reach the worker")
    job = make_job(
        with_debug(query_request(SIMPLE_SQL, sample_datasets), sleep_seconds=60),
        memory_mib=300,
        cpu_millicores=1500,
    )

    async def scenario() -> tuple[Proc, dict[str, str], Path | None, Path]:
        async with local_launcher() as launcher:
            scratch = launcher.work_dir
            task = asyncio.create_task(launcher.run(job))
            worker = await first_worker()
            environ = worker.environ()
            cwd = worker.cwd()
            fds = open_files(worker.pid)
            # Only what it needs: no socket (a warm worker never keeps the zygote's control socket), no
            # descriptor of the controller's or of another job's.
            assert not [target for target in fds.values() if target.startswith("socket:")], fds
            assert fds[0] in ("/dev/null", *[t for t in fds.values() if t.startswith("pipe:")]), fds
            assert fds[1].startswith("pipe:") and fds[2].startswith("pipe:"), fds
            if launcher.cgroup_parent is not None:
                assert cgroup_of(launcher, job) == (worker.pid, 300 * MIB)
            else:
                assert address_space_cap(worker.pid) == address_space_limit(300 * MIB, 2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return worker, environ, cwd, scratch

    worker, environ, cwd, scratch = asyncio.run(scenario())

    assert worker.sid == worker.pid == worker.pgid
    assert cwd is not None and cwd.is_relative_to(scratch)
    assert "PODQ_TEST_CONTROLLER_SECRET" not in environ
    if start_mode == "warm":
        assert worker.cmdline[1:3] == ("-m", "worker_image.zygote")
        assert {"PODQ_REQUEST", "PODQ_ENABLE_TEST_HOOKS", "HOME", "TMPDIR"}.isdisjoint(environ)
        assert environ["POLARS_MAX_THREADS"] == "2"
        assert environ["POLARS_OOC_MEMORY_BUDGET_FRACTION"] == "1000"
        return
    assert worker.cmdline[1:] == ("-m", "worker_image")
    expected_names = {
        *DEFAULT_INHERITED_ENV,
        "PYTHONPATH",
        "PYTHONUTF8",
        "HOME",
        "TMPDIR",
        "POLARS_MAX_THREADS",
        "POLARS_OOC_MEMORY_BUDGET_FRACTION",
        "PODQ_REQUEST_FD",
        "PODQ_TERMINATION_MESSAGE_PATH",
        "PODQ_ENABLE_TEST_HOOKS",
        "PODQ_MEMORY_LIMIT_BYTES",
    }
    if memory_enforcement == "rlimit":
        expected_names.add("MALLOC_ARENA_MAX")
    assert set(environ) <= expected_names
    assert environ["POLARS_MAX_THREADS"] == "2"
    # polars does not spill (to /var/tmp, outside the scratch directory) before the memory watch stops it.
    assert environ["POLARS_OOC_MEMORY_BUDGET_FRACTION"] == "1000"
    assert environ["PODQ_ENABLE_TEST_HOOKS"] == "1"
    # The limit the worker watches its own memory against, in either mode.
    assert environ["PODQ_MEMORY_LIMIT_BYTES"] == str(300 * MIB)
    # The request comes on stdin: no other process can read it from /proc/<pid>/environ.
    assert environ["PODQ_REQUEST_FD"] == "0"
    assert Path(environ["TMPDIR"]).is_relative_to(scratch)
    assert Path(environ["PODQ_TERMINATION_MESSAGE_PATH"]).is_relative_to(scratch)


def test_test_hooks_are_off_unless_enabled(
    local_launcher: MakeLauncher, sample_datasets: list[dict[str, str]]
) -> None:
    async def scenario() -> Outcome:
        async with local_launcher(enable_test_hooks=False) as launcher:
            return await launcher.run(
                make_job(with_debug(query_request(SIMPLE_SQL, sample_datasets), crash="segv"))
            )

    error = error_of(asyncio.run(scenario()), "validation")
    assert "test hooks are disabled" in error["message"]


def test_stray_stdout_and_a_truncated_result_come_through(
    local_launcher: MakeLauncher, sample_datasets: list[dict[str, str]]
) -> None:
    # Several pipe reads' worth, within what one environment variable (the request) may hold.
    noise = "PODQ-RESULT-V1 not an envelope " + "x" * 100_000
    request = with_debug(
        query_request("SELECT id, val FROM table2 ORDER BY id", sample_datasets), stdout_noise=noise
    )

    async def scenario() -> Outcome:
        async with local_launcher() as launcher:
            return await launcher.run(make_job(request))

    outcome = asyncio.run(scenario())

    rows = rows_of(outcome)
    assert outcome.result is not None
    assert (len(rows), outcome.result["total_rows"], outcome.result["truncated"]) == (1000, 2000, True)
    assert rows[-1] == [999, 1998]


@COLD_START
def test_a_worker_flooding_stderr_neither_stalls_nor_bloats_the_launcher(
    local_launcher: MakeLauncher, sample_datasets: list[dict[str, str]], tmp_path: Path
) -> None:
    # 8 MiB of stderr before the worker even starts: far beyond a pipe's buffer.
    script = tmp_path / "python-flooding-stderr"
    lines = ["#!/bin/sh", "head -c 8388608 /dev/zero | tr '\\0' e >&2", "echo >&2; echo last words >&2"]
    lines.append(f'exec {shlex.quote(sys.executable)} "$@"')
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    request = query_request(SIMPLE_SQL, sample_datasets)

    async def scenario() -> tuple[Outcome, Outcome]:
        async with local_launcher(python=str(script)) as launcher:
            ok = await launcher.run(make_job(request))
            crashed = await launcher.run(make_job(with_debug(request, crash="exit")))
            return ok, crashed

    ok, crashed = asyncio.run(scenario())

    assert rows_of(ok) == SIMPLE_ROWS
    tail = error_of(crashed, "crash")["details"]["stderr_tail"]
    assert tail.endswith("\nlast words")
    assert len(tail) <= 2000


def test_a_request_too_large_for_the_environment_is_refused_without_a_worker(
    local_launcher: MakeLauncher, sample_datasets: list[dict[str, str]], tmp_path: Path
) -> None:
    sql = "SELECT 1 AS x -- " + "padding " * 20_000

    async def scenario() -> Outcome:
        async with local_launcher() as launcher:
            return await launcher.run(make_job(query_request(sql, sample_datasets)))

    error = error_of(asyncio.run(scenario()), "validation")
    assert error["details"]["limit_bytes"] == 128 * 1024
    assert error["details"]["request_bytes"] > 128 * 1024
    assert listing(tmp_path / "scratch") == []


def test_cgroup_mode_refuses_to_start_without_a_cgroup_and_auto_falls_back_to_rlimit(tmp_path: Path) -> None:
    not_a_cgroup = tmp_path / "not-a-cgroup"

    async def scenario() -> str:
        with pytest.raises(CgroupUnavailable):
            await LocalLauncher(
                work_dir=tmp_path / "a", memory_enforcement="cgroup", cgroup_parent=not_a_cgroup
            ).start()
        async with LocalLauncher(
            work_dir=tmp_path / "b", memory_enforcement="auto", cgroup_parent=not_a_cgroup
        ) as auto:
            return auto.memory_enforcement

    assert asyncio.run(scenario()) == "rlimit"
