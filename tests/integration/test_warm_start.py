"""Issue 14: the local launcher's warm start (workers forked from a zygote), and what holds warm or cold:
isolation between concurrent queries, the CPU limit, nothing left behind after many queries.

Tests taking `local_launcher` run in each memory enforcement mode, warm (the default); those marked
`BOTH_START_MODES` run cold as well, since a cold worker gets its request, its confinement and its CPU
cgroup through code of its own. The zygote's own scenarios (killed, wedged, failing to start) are warm
only, and include the fallback to a cold start.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from controller.launchers.base import Outcome
from controller.launchers.local.launcher import LocalLauncher
from tests.integration.test_local_launcher import (
    SIMPLE_ROWS,
    SIMPLE_SQL,
    MakeLauncher,
    error_of,
    make_job,
    rows_of,
    with_debug,
)
from tests.support.fixtures import BOTH_START_MODES, CPU_BOUND_SQL, query_request
from tests.support.leaks import live_descendants, live_workers, live_zygotes, processes
from tests.support.waiting import wait_until, wait_until_async

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_worker_leaks")]


def test_the_zygote_killed_mid_flight_fails_its_queries_as_retryable_crashes_and_is_replaced(
    local_launcher: MakeLauncher, sample_datasets: list[dict[str, str]]
) -> None:
    sleeper = make_job(with_debug(query_request(SIMPLE_SQL, sample_datasets), sleep_seconds=60))
    other = make_job(with_debug(query_request(SIMPLE_SQL, sample_datasets), sleep_seconds=60))

    async def scenario() -> tuple[list[Outcome], Outcome, int, int]:
        async with local_launcher() as launcher:
            tasks = [asyncio.create_task(launcher.run(job)) for job in (sleeper, other)]
            await wait_until_async(lambda: len(live_workers()) == 2, "two warm workers to run")
            [zygote] = live_zygotes()
            os.kill(zygote.pid, signal.SIGKILL)
            async with asyncio.timeout(30):
                outcomes = list(await asyncio.gather(*tasks))
            # Replaced at once, in the background; meanwhile queries start cold.
            [replacement] = await wait_until_async(live_zygotes, "a new zygote", within=60)
            await wait_until_async(lambda: launcher.zygote_status.startswith("ok"), "it to be up", within=60)
            after = await launcher.run(make_job(query_request(SIMPLE_SQL, sample_datasets)))
            return outcomes, after, zygote.pid, replacement.pid

    outcomes, after, killed, replacement = asyncio.run(scenario())

    for outcome in outcomes:
        error = error_of(outcome, "crash")
        assert error["retryable"] is True
        assert "zygote" in error["message"]
    assert rows_of(after) == SIMPLE_ROWS
    assert after.placement["start"] == "warm"
    assert replacement != killed


def test_a_wedged_zygote_is_killed_its_query_starts_cold_and_the_next_one_warm_again(
    local_launcher: MakeLauncher, sample_datasets: list[dict[str, str]]
) -> None:

    async def scenario() -> tuple[Outcome, Outcome, int, int]:
        async with local_launcher() as launcher:
            [zygote] = live_zygotes()
            os.kill(zygote.pid, signal.SIGSTOP)
            wedged = await launcher.run(make_job(query_request(SIMPLE_SQL, sample_datasets)))
            [replacement] = await wait_until_async(live_zygotes, "a new zygote", within=60)
            await wait_until_async(lambda: launcher.zygote_status.startswith("ok"), "it to be up", within=60)
            after = await launcher.run(make_job(query_request(SIMPLE_SQL, sample_datasets)))
            return wedged, after, zygote.pid, replacement.pid

    wedged, after, stopped, replacement = asyncio.run(scenario())

    assert rows_of(wedged) == SIMPLE_ROWS
    assert wedged.placement["start"] == "cold"
    assert rows_of(after) == SIMPLE_ROWS
    assert after.placement["start"] == "warm"
    assert replacement != stopped


@pytest.fixture
def python_failing_as_zygote(tmp_path: Path) -> str:
    """An interpreter that runs the worker but dies at once when asked to be a zygote."""
    script = tmp_path / "python-failing-as-zygote"
    lines = ["#!/bin/sh", '[ "$2" = worker_image.zygote ] && exit 3']
    lines.append(f'exec {shlex.quote(sys.executable)} "$@"')
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return str(script)


def test_with_no_zygote_queries_start_cold_and_readiness_says_so(
    local_launcher: MakeLauncher, python_failing_as_zygote: str, sample_datasets: list[dict[str, str]]
) -> None:
    async def scenario() -> tuple[str, Outcome, list[Any]]:
        async with local_launcher(python=python_failing_as_zygote) as launcher:
            status = launcher.zygote_status
            outcome = await launcher.run(make_job(query_request(SIMPLE_SQL, sample_datasets)))
            return status, outcome, live_zygotes()

    status, outcome, zygotes = asyncio.run(scenario())

    assert status == "none (queries start cold)"
    assert rows_of(outcome) == SIMPLE_ROWS
    assert outcome.placement["start"] == "cold"
    assert zygotes == []


def test_a_query_of_a_thread_count_without_a_zygote_starts_cold_and_starts_one(
    local_launcher: MakeLauncher, sample_datasets: list[dict[str, str]]
) -> None:
    """The launcher starts the zygote of the default thread count (2 in these tests); a query at 1 core is
    the first of its thread count: it starts cold, and the zygote for it starts in the background."""
    request = query_request(SIMPLE_SQL, sample_datasets)

    async def scenario() -> tuple[Outcome, Outcome, str]:
        async with local_launcher() as launcher:
            first = await launcher.run(make_job(request, cpu_millicores=1000))
            await wait_until_async(
                lambda: "1 threads" in launcher.zygote_status, "a zygote for one thread up", within=60
            )
            second = await launcher.run(make_job(request, cpu_millicores=1000))
            return first, second, launcher.zygote_status

    first, second, status = asyncio.run(scenario())

    assert rows_of(first) == SIMPLE_ROWS
    assert first.placement["start"] == "cold"
    assert rows_of(second) == SIMPLE_ROWS
    assert second.placement["start"] == "warm"
    assert "1 threads" in status and "2 threads" in status, status


@BOTH_START_MODES
def test_concurrent_workers_cannot_see_each_others_requests_or_results(
    local_launcher: MakeLauncher, start_mode: str, sample_datasets: list[dict[str, str]]
) -> None:
    """Each query carries a secret (in its SQL, hence its request and its result) and looks for the other's
    in its own environment and in every process's /proc environ and command line (the `snoop` hook) while
    both run."""
    secrets = [f"secret-{uuid.uuid4().hex}" for _ in range(2)]

    def job(mine: str, theirs: str) -> Any:
        request = query_request(f"SELECT '{mine}' AS s FROM table1 LIMIT 1", sample_datasets)
        return make_job(with_debug(request, sleep_seconds=1.5, snoop=[theirs]))

    async def scenario() -> list[Outcome]:
        async with local_launcher() as launcher:
            first, second = job(secrets[0], secrets[1]), job(secrets[1], secrets[0])
            return list(await asyncio.gather(launcher.run(first), launcher.run(second)))

    outcomes = asyncio.run(scenario())

    assert [rows_of(outcome) for outcome in outcomes] == [[[secrets[0]]], [[secrets[1]]]]
    assert [outcome.placement["start"] for outcome in outcomes] == [start_mode] * 2


def _cpuacct_usage(launcher: LocalLauncher, query_id: str) -> int:
    cpu = launcher.cpu_cgroups
    assert cpu is not None
    [path] = [path for path in cpu.cpuacct_parent.iterdir() if query_id in path.name]
    return int((path / "cpuacct.usage").read_text())


@BOTH_START_MODES
def test_a_busy_query_at_500m_uses_at_most_half_a_core(
    local_launcher: MakeLauncher, start_mode: str, sample_datasets: list[dict[str, str]]
) -> None:
    job = make_job(query_request(CPU_BOUND_SQL, sample_datasets), cpu_millicores=500, timeout=60)

    async def scenario() -> float:
        async with local_launcher() as launcher:
            if launcher.cpu_cgroups is None:
                pytest.skip("no writable cpu cgroup here: the CPU limit is not enforced")
            task = asyncio.create_task(launcher.run(job))
            await wait_until_async(live_workers, "the worker to start")
            # Past start-up and the download: the job has used a second of CPU, so polars is in collect().
            await wait_until_async(
                lambda: _cpuacct_usage(launcher, job.query_id) >= 1e9, "a second of the job's CPU", within=60
            )
            started, used_before = time.monotonic(), _cpuacct_usage(launcher, job.query_id)
            await asyncio.sleep(1.0)  # sleep-ok: the window the CPU use is measured over
            used = _cpuacct_usage(launcher, job.query_id) - used_before
            cores = used / 1e9 / (time.monotonic() - started)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return cores

    cores = asyncio.run(scenario())

    assert 0.05 < cores <= 0.55, cores


QUERIES = 200
CONCURRENCY = 4


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _zombies_of(pids: set[int]) -> list[int]:
    return [proc.pid for proc in processes() if proc.ppid in pids and proc.state == "Z"]


def test_no_zombie_cgroup_or_descriptor_is_left_after_200_queries(
    local_launcher: MakeLauncher, start_mode: str
) -> None:
    request = query_request("SELECT 1 AS x", [])

    async def scenario() -> None:
        async with local_launcher() as launcher:
            assert rows_of(await launcher.run(make_job(request))) == [[1]]
            zygotes = {proc.pid for proc in live_zygotes()}
            assert len(zygotes) == (1 if start_mode == "warm" else 0)
            fds_before = {pid: _fds(pid) for pid in {os.getpid(), *zygotes}}
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one() -> Outcome:
                async with gate:
                    return await launcher.run(make_job(request))

            outcomes = await asyncio.gather(*(one() for _ in range(QUERIES)))
            assert [rows_of(outcome) for outcome in outcomes] == [[[1]]] * QUERIES
            assert {outcome.placement["start"] for outcome in outcomes} == {start_mode}
            assert {proc.pid for proc in live_zygotes()} == zygotes
            assert [proc for proc in live_descendants() if not proc.is_zygote] == []
            wait_until(lambda: not _zombies_of({os.getpid(), *zygotes}), "no zombie child")
            assert {pid: _fds(pid) for pid in fds_before} == fds_before
            assert list(launcher.work_dir.iterdir()) == []
            parents = [launcher.cgroup_parent]
            if launcher.cpu_cgroups is not None:
                parents += [launcher.cpu_cgroups.cpu_parent, launcher.cpu_cgroups.cpuacct_parent]
            for parent in filter(None, parents):
                assert [
                    path.name for path in parent.iterdir() if path.is_dir() and "test-" in path.name
                ] == []

    asyncio.run(scenario())
