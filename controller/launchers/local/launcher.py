"""The embedded launcher: each job is one ``python -m worker_image`` subprocess on this host.

Per job: a session of its own (so everything the worker starts can be found and killed, see
`process`), a death signal that takes the worker down with the controller, a memory cap (a cgroup
of its own, or RLIMIT_AS where no cgroup hierarchy is writable, see `child`), a scratch directory
as TMPDIR and HOME, and a wall-clock deadline from spawn after which all of it is killed. How the end is
read is `outcome`; the dispatcher gets an `Outcome`, never an exception for a query's failure.

Scratch directories and cgroups are named ``<owner>-<seq>-<query id>-<attempt>``, the owner being the
controller's pid and start time: on start, a controller removes what one no longer alive left behind.

Warm start (`warm_start`, ``PODQ_LOCAL_WARM_START``): the worker is forked from a zygote that has already
imported it (see `warm` and worker_image/zygote.py) instead of started as a new interpreter. It is
confined the same way (session, death signal, cgroup or RLIMIT_AS, scratch directory, environment) before
it reads its request, which it gets through a pipe of its own, and it ends the same way. A query whose
zygote dies under it is a retryable ``crash``; with no zygote available a query starts cold.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from controller.launchers.aio import shielded
from controller.launchers.base import Job, Limits, Outcome, PoolStats
from controller.launchers.local.cgroups import CgroupUnavailable, JobCgroup, JobCgroups, MemoryCounters
from controller.launchers.local.child import (
    DEFAULT_INHERITED_ENV,
    MAX_ENV_STRING_BYTES,
    address_space_limit,
    child_setup,
    request_env_bytes,
    worker_env,
    zygote_env,
)
from controller.launchers.local.cpu import CpuCgroups, JobCpu
from controller.launchers.local.outcome import Enforcement, KillReason, MemoryEvidence, WorkerEnd, classify
from controller.launchers.local.process import WorkerProcess
from controller.launchers.local.procfs import start_time
from controller.launchers.local.start import start_worker
from controller.launchers.local.warm import ZygotePool
from controller.launchers.local.zygote import Zygote
from controller.launchers.worker_io import encode_request, polars_threads, with_limits
from controller.quantity import parse_cpu_millicores
from controller.settings import Settings
from worker_image.protocol import TERMINATION_MESSAGE_LIMIT, ErrorType, error_info

__all__ = ["LocalLauncher", "MemoryEnforcement"]

log = logging.getLogger(__name__)

MemoryEnforcement = Literal["auto", "cgroup", "rlimit"]

# The longest envelope line kept from a worker's stdout: a result at its byte cap plus the JSON around it.
MAX_ENVELOPE_BYTES = 64 * 2**20
_OWNER = re.compile(r"^(\d+)\.(\d+)-")


@dataclass(eq=False)
class _Running:
    job: Job
    worker: WorkerProcess | None = None
    zygote: Zygote | None = None
    cpu: JobCpu | None = None
    killed_for: KillReason | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def kill(self, reason: KillReason) -> None:
        if self.killed_for is None:
            self.killed_for = reason
        if self.worker is not None:
            self.worker.kill()


class LocalLauncher:
    name = "local"

    def __init__(
        self,
        *,
        work_dir: Path,
        python: str = sys.executable,
        enable_test_hooks: bool = False,
        memory_enforcement: MemoryEnforcement = "auto",
        cgroup_parent: Path | None = None,
        kill_grace_seconds: float = 5.0,
        max_envelope_bytes: int = MAX_ENVELOPE_BYTES,
        inherited_env: Sequence[str] = DEFAULT_INHERITED_ENV,
        warm_start: bool = True,
        warm_threads: Sequence[int] = (),
        cpu_limit: bool = True,
        wait_for_zygotes: bool = False,
    ) -> None:
        """
        `warm_start` forks workers from zygotes; `warm_threads` are the polars thread counts whose zygotes
        start with the launcher (others at their first query, which starts cold); `start` waits for them
        only with `wait_for_zygotes` (the controller does not: its first queries may start cold).
        `cgroup_parent` names the directory job cgroups are created in, instead of discovering one.
        `kill_grace_seconds` bounds how long, after a SIGKILL, the launcher waits for a worker's pipes
        to close and its cgroup to empty before it logs a leak and moves on.
        """
        self._work_dir = work_dir
        self._python = python
        self._test_hooks = enable_test_hooks
        self._requested_enforcement = memory_enforcement
        self._cgroup_parent = cgroup_parent
        self._kill_grace = kill_grace_seconds
        self._max_envelope_bytes = max_envelope_bytes
        self._inherited_env = tuple(inherited_env)
        self._owner = _owner_tag(os.getpid())
        self._sequence = itertools.count(1)
        self._cgroups: JobCgroups | None = None
        self._enforcement: Enforcement | None = None
        self._running: set[_Running] = set()
        self._closed = False
        self._warm_start = warm_start
        self._warm_threads = tuple(warm_threads)
        self._zygotes: ZygotePool | None = None
        self._cpu_limit = cpu_limit
        self._wait_for_zygotes = wait_for_zygotes
        self._cpu: CpuCgroups | None = None

    @property
    def memory_enforcement(self) -> Enforcement:
        if self._enforcement is None:
            raise RuntimeError("the local launcher is not started")
        return self._enforcement

    @property
    def cgroup_parent(self) -> Path | None:
        """Where job cgroups are created, once started in cgroup mode."""
        return self._cgroups.parent if self._cgroups is not None else None

    @property
    def work_dir(self) -> Path:
        """Where job directories are created."""
        return self._work_dir

    @property
    def cpu_cgroups(self) -> CpuCgroups | None:
        """Where job CPU cgroups are created, if CPU limits are enforced."""
        return self._cpu

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalLauncher:
        return cls(
            python=settings.worker_python,
            work_dir=settings.data_dir / "scratch",
            enable_test_hooks=settings.enable_test_hooks,
            memory_enforcement=settings.memory_enforcement,
            warm_start=settings.local_warm_start,
            warm_threads=(polars_threads(parse_cpu_millicores(settings.default_cpu)),),
        )

    async def __aenter__(self) -> LocalLauncher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        if self._requested_enforcement != "rlimit":
            try:
                self._cgroups = JobCgroups.discover(self._cgroup_parent)
            except CgroupUnavailable as exc:
                if self._requested_enforcement == "cgroup":
                    raise
                log.warning("no writable memory cgroup (%s); capping memory with RLIMIT_AS instead", exc)
        self._enforcement = "cgroup" if self._cgroups is not None else "rlimit"
        if self._cpu_limit:
            try:
                self._cpu = CpuCgroups.discover()
            except (CgroupUnavailable, OSError) as exc:
                log.warning("no writable cpu cgroup (%s): CPU limits are not enforced", exc)
        await self._remove_stale()
        if self._warm_start:
            rlimit = self._enforcement == "rlimit"
            self._zygotes = ZygotePool(
                self._python,
                env=lambda threads: zygote_env(threads=threads, rlimit=rlimit, inherited=self._inherited_env),
                setup=lambda: child_setup(cgroup_procs=(), address_space_bytes=None),
            )
            for threads in self._warm_threads:
                if self._wait_for_zygotes:
                    await self._zygotes.wait_ready(threads)
                else:
                    self._zygotes.prestart(threads)
        where = f" in {self.cgroup_parent}" if self.cgroup_parent is not None else ""
        warm = f"; warm start: {self.zygote_status}" if self._warm_start else "; cold starts"
        log.info("local launcher ready: memory enforced by %s%s%s", self._enforcement, where, warm)

    @property
    def zygote_status(self) -> str:
        """Readiness of warm start: the live zygotes, or why queries start cold."""
        return self._zygotes.status() if self._zygotes is not None else "off (cold starts)"

    def refusal(self, limits: Limits) -> str | None:
        return None

    async def reconcile(self, active: Callable[[], Collection[str]]) -> None:
        """Nothing to do: a worker process never outlives the controller that started it."""

    async def release(self, query_id: str) -> None:
        """Nothing to do: `run` cleans up before it returns."""

    async def discard(self, query_id: str) -> bool:
        """Nothing to do: `run` cleans up before it returns."""
        return True

    def pool_stats(self) -> PoolStats | None:
        """None: the zygotes fork a child per query, so there is no pool to run dry (see /readyz)."""
        return None

    def detach(self) -> None:
        """Nothing to do: worker processes die with the controller, so every job is stopped."""

    async def ready(self) -> bool:
        return self._enforcement is not None and not self._closed

    async def close(self) -> None:
        self._closed = True
        zygotes, self._zygotes = self._zygotes, None
        running = list(self._running)
        for entry in running:
            entry.kill("shutdown")
        for entry in running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._kill_grace):
                    await entry.done.wait()
        if zygotes is not None:
            await zygotes.close()
        if self._running:
            log.error("local launcher closed with %d jobs not cleaned up", len(self._running))

    async def run(self, job: Job) -> Outcome:
        if self._enforcement is None or self._closed:
            raise RuntimeError("the local launcher is not running")
        request_json = encode_request(with_limits(job.request, job.limits))
        if (size := request_env_bytes(request_json)) > MAX_ENV_STRING_BYTES:
            message = (
                f"the request is too large to hand to a worker: {size} bytes, at most {MAX_ENV_STRING_BYTES}"
            )
            details = {"request_bytes": size, "limit_bytes": MAX_ENV_STRING_BYTES}
            error = error_info(ErrorType.VALIDATION, message, details, retryable=False)
            return Outcome(error=error, placement={"kind": "local", "memory_enforcement": self._enforcement})
        name = f"{self._owner}-{next(self._sequence)}-{_safe(job.query_id)}-{job.attempt}"
        job_dir = self._work_dir / name
        (job_dir / "tmp").mkdir(parents=True)
        entry = _Running(job)
        self._running.add(entry)
        cgroup: JobCgroup | None = None
        try:
            if self._cgroups is not None:
                cgroup = self._cgroups.create(name, job.limits.memory_bytes)
            if self._cpu is not None:
                entry.cpu = self._cpu.create(name, job.limits.cpu_millicores)
            end = await self._execute(entry, request_json, job_dir, cgroup)
        finally:
            await shielded(self._clean_up(entry, job_dir, cgroup))
        outcome = classify(end)
        status = "succeeded" if outcome.error is None else outcome.error["error_type"]
        log.info("query %s: worker pid %d ended: %s %s", job.query_id, end.pid, status, outcome.placement)
        return outcome

    async def _execute(
        self, entry: _Running, request_json: str, job_dir: Path, cgroup: JobCgroup | None
    ) -> WorkerEnd:
        job = entry.job
        threads = polars_threads(job.limits.cpu_millicores)
        rlimit = cgroup is None
        env = worker_env(
            request_json=request_json,
            scratch=job_dir / "tmp",
            termination_log=job_dir / "termination-log",
            threads=threads,
            memory_bytes=job.limits.memory_bytes,
            test_hooks=self._test_hooks,
            rlimit=rlimit,
            inherited=self._inherited_env,
        )
        procs = [cgroup.procs_file] if cgroup is not None else []
        procs += entry.cpu.procs_files if entry.cpu is not None else []
        zygote = self._zygotes.get(threads) if self._zygotes is not None else None
        starting = time.monotonic()
        # Shielded: a spawn cancelled halfway would leave asyncio waiting for the worker's pipes to close.
        worker, entry.zygote = await shielded(
            start_worker(
                zygote,
                python=self._python,
                env=env,
                job_dir=job_dir,
                cgroup_procs=procs,
                rlimit_as=address_space_limit(job.limits.memory_bytes, threads) if rlimit else None,
                query_id=job.query_id,
                max_envelope_bytes=self._max_envelope_bytes,
            )
        )
        entry.worker = worker
        starting_seconds = time.monotonic() - starting
        start: Literal["warm", "cold"] = "warm" if entry.zygote is not None else "cold"
        log.info(
            "query %s: worker pid %d started %s (attempt %d, %d threads, memory %d bytes by %s, "
            "deadline %gs)",
            job.query_id,
            worker.pid,
            start,
            job.attempt,
            threads,
            job.limits.memory_bytes,
            self.memory_enforcement,
            job.limits.timeout_seconds,
        )
        if self._closed:
            entry.kill("shutdown")
        try:
            async with asyncio.timeout(job.limits.timeout_seconds):
                await worker.exited()
        except TimeoutError:
            log.info("query %s: deadline reached, killing worker %d", job.query_id, worker.pid)
            entry.kill("deadline")
        finally:
            # Cancelled or not, nothing the job started may outlive this point.
            if cgroup is not None:
                cgroup.kill()
            returncode = await shielded(worker.reap(self._kill_grace))
        counters = cgroup.counters() if cgroup is not None else MemoryCounters(0, 0, None)
        cpu_ns = entry.cpu.usage_ns() if entry.cpu is not None else None
        killed_for = entry.killed_for
        if returncode is None:
            # A warm worker whose zygote died, or never reported it: its exit status is lost.
            if entry.zygote is not None and entry.zygote.alive:
                log.error("zygote %d lost worker %d's exit status: killing it", entry.zygote.pid, worker.pid)
                entry.zygote.kill()
            killed_for = killed_for or "zygote_lost"
            returncode = -signal.SIGKILL
        return WorkerEnd(
            pid=worker.pid,
            start=start,
            returncode=returncode,
            killed_for=killed_for,
            timeout_seconds=job.limits.timeout_seconds,
            envelope_line=worker.stdout.envelope.decode(errors="replace") if worker.stdout.envelope else None,
            envelope_oversized=worker.stdout.oversized,
            stderr_tail=worker.stderr.text(),
            termination_message=_read_limited(job_dir / "termination-log", TERMINATION_MESSAGE_LIMIT),
            memory=MemoryEvidence(
                self.memory_enforcement,
                job.limits.memory_bytes,
                oom_kills=counters.oom_kills,
                failcnt=counters.failcnt,
                peak_bytes=counters.peak_bytes,
            ),
            cpu_seconds=None if cpu_ns is None else cpu_ns / 1e9,
            starting_seconds=starting_seconds,
        )

    async def _clean_up(self, entry: _Running, job_dir: Path, cgroup: JobCgroup | None) -> None:
        query_id = entry.job.query_id
        if cgroup is not None:
            await self._remove_cgroup(cgroup, query_id)
        if entry.cpu is not None:
            for problem in entry.cpu.remove():
                log.error("query %s: cpu cgroup not removed: %s", query_id, problem)
        self._remove_dir(job_dir, query_id)
        self._running.discard(entry)
        entry.done.set()

    def _remove_dir(self, path: Path, query_id: str) -> None:
        try:
            shutil.rmtree(path)
        except OSError as exc:
            log.error("query %s: scratch directory %s not removed: %s", query_id, path, exc)

    async def _remove_cgroup(self, cgroup: JobCgroup, query_id: str) -> None:
        try:
            async with asyncio.timeout(self._kill_grace):
                await cgroup.remove()
        except (TimeoutError, OSError) as exc:
            log.error("query %s: cgroup %s not removed: %r", query_id, cgroup.path, exc)

    async def _remove_stale(self) -> None:
        for path in self._work_dir.iterdir():
            if _is_stale(path.name):
                log.warning("removing scratch directory %s left by a previous controller", path)
                self._remove_dir(path, path.name)
        if self._cgroups is not None:
            for cgroup in self._cgroups.stale(_is_stale):
                log.warning("removing cgroup %s left by a previous controller", cgroup.path)
                await self._remove_cgroup(cgroup, cgroup.path.name)
        if self._cpu is not None:
            self._cpu.remove_stale(_is_stale)


def _owner_tag(pid: int) -> str:
    return f"{pid}.{start_time(pid)}"


def _is_stale(name: str) -> bool:
    """Whether a scratch directory or cgroup name belongs to a controller that is no longer running."""
    match = _OWNER.match(name)
    return match is not None and start_time(int(match[1])) != int(match[2])


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64]


def _read_limited(path: Path, limit: int) -> str | None:
    try:
        with path.open("rb") as handle:
            return handle.read(limit).decode(errors="replace")
    except OSError:
        return None
