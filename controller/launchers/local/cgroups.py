"""Per-job memory cgroups for the local launcher, on cgroup v1 (memory controller) or v2 (unified).

Each job runs in ``<parent>/<name>``. The parent is ``podq`` inside this process's own memory cgroup
when podq may create cgroups there, else ``podq`` at the hierarchy's root, else whatever directory the
operator names. Under v2 the own cgroup is rarely usable: a cgroup holding processes cannot hand the
memory controller to its children, so the root is where it usually works.

Everything here is file I/O on cgroupfs; deciding what the numbers mean is `outcome`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar

__all__ = [
    "CgroupUnavailable",
    "Hierarchy",
    "JobCgroup",
    "JobCgroups",
    "MemoryCounters",
    "find_memory_hierarchy",
]

log = logging.getLogger(__name__)

Version = Literal[1, 2]
PARENT_NAME = "podq"
_REMOVE_POLL_SECONDS = 0.01


class CgroupUnavailable(Exception):
    """No memory cgroup hierarchy podq can create job cgroups in."""


class Probed(Protocol):
    def _probe(self) -> None: ...


P = TypeVar("P", bound=Probed)


def first_usable(candidates: Iterable[tuple[str, P]]) -> P:
    """The first candidate whose probe succeeds; else `CgroupUnavailable` naming each one and its error."""
    problems = []
    for where, tree in candidates:
        try:
            tree._probe()
        except OSError as exc:
            problems.append(f"{where}: {exc}")
            continue
        return tree
    raise CgroupUnavailable("; ".join(problems))


@dataclass(frozen=True)
class MemoryCounters:
    oom_kills: int
    # v1 memory.failcnt, v2 the "max" event: how often usage hit the limit.
    failcnt: int
    peak_bytes: int | None


@dataclass(frozen=True)
class Hierarchy:
    version: Version
    mount: Path
    # This process's cgroup, relative to the mount.
    own: str


def find_memory_hierarchy(mountinfo: str, proc_cgroup: str) -> Hierarchy | None:
    """The memory hierarchy from /proc/self/mountinfo and /proc/self/cgroup; v1 wins when both exist.

    A v2 hierarchy may still lack the memory controller; trying to enable it tells.
    """
    own_v1 = own_v2 = None
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            own_v2 = path
        elif "memory" in controllers.split(","):
            own_v1 = path
    mount_v1 = mount_v2 = None
    for line in mountinfo.splitlines():
        fields = line.split()
        separator = fields.index("-")
        mount_point, fstype, options = fields[4], fields[separator + 1], fields[separator + 3]
        if fstype == "cgroup" and "memory" in options.split(","):
            mount_v1 = Path(mount_point)
        elif fstype == "cgroup2" and mount_v2 is None:
            mount_v2 = Path(mount_point)
    if mount_v1 is not None and own_v1 is not None:
        return Hierarchy(1, mount_v1, own_v1)
    if mount_v2 is not None and own_v2 is not None:
        return Hierarchy(2, mount_v2, own_v2)
    return None


@dataclass(frozen=True)
class JobCgroup:
    path: Path
    version: Version

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def set_memory_limit(self, limit_bytes: int) -> None:
        if self.version == 1:
            _write(self.path / "memory.limit_in_bytes", str(limit_bytes))
            # With swap accounting on, the memory+swap cap too, or the job could swap past its limit.
            _write_if_present(self.path / "memory.memsw.limit_in_bytes", str(limit_bytes))
        else:
            _write(self.path / "memory.max", str(limit_bytes))
            _write_if_present(self.path / "memory.swap.max", "0")
            # An OOM kills the whole job, not just its largest process.
            _write_if_present(self.path / "memory.oom.group", "1")

    def counters(self) -> MemoryCounters:
        if self.version == 1:
            oom = _keyed(_read(self.path / "memory.oom_control", ""))
            return MemoryCounters(
                oom_kills=oom.get("oom_kill", 0),
                failcnt=int(_read(self.path / "memory.failcnt", "0")),
                peak_bytes=_int_or_none(_read(self.path / "memory.max_usage_in_bytes", "")),
            )
        events = _keyed(_read(self.path / "memory.events", ""))
        return MemoryCounters(
            oom_kills=events.get("oom_kill", 0),
            failcnt=events.get("max", 0),
            peak_bytes=_int_or_none(_read(self.path / "memory.peak", "")),
        )

    def pids(self) -> list[int]:
        return [int(pid) for pid in _read(self.procs_file, "").split()]

    def kill(self) -> None:
        """SIGKILL everything in the cgroup."""
        if self.version == 2 and (self.path / "cgroup.kill").exists():
            _write_if_present(self.path / "cgroup.kill", "1")
            return
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def remove(self) -> None:
        """Kill what is left and remove the cgroup, waiting as long as it takes the processes to exit.

        Callers bound the wait with `asyncio.timeout`.
        """
        while True:
            self.kill()
            try:
                self.path.rmdir()
            except FileNotFoundError:
                return
            except OSError as exc:
                # EBUSY until the killed processes have fully exited.
                if exc.errno != errno.EBUSY:
                    raise
            else:
                return
            await asyncio.sleep(_REMOVE_POLL_SECONDS)


class JobCgroups:
    """Creates job cgroups under one parent directory."""

    def __init__(self, parent: Path, version: Version) -> None:
        self.parent = parent
        self.version = version

    @classmethod
    def discover(cls, parent_override: Path | None = None) -> JobCgroups:
        """The first usable parent; raises `CgroupUnavailable` with what was tried."""
        if parent_override is not None:
            candidates = [parent_override]
            version: Version = 2 if (parent_override.parent / "cgroup.controllers").exists() else 1
        else:
            mountinfo, proc_cgroup = (_read(Path("/proc/self", name), "") for name in ("mountinfo", "cgroup"))
            hierarchy = find_memory_hierarchy(mountinfo, proc_cgroup)
            if hierarchy is None:
                raise CgroupUnavailable("no cgroup v1 memory controller or cgroup v2 with memory mounted")
            version = hierarchy.version
            own = hierarchy.mount / hierarchy.own.lstrip("/")
            candidates = list(dict.fromkeys([own / PARENT_NAME, hierarchy.mount / PARENT_NAME]))
        return first_usable((str(parent), cls(parent, version)) for parent in candidates)

    def create(self, name: str, limit_bytes: int) -> JobCgroup:
        cgroup = JobCgroup(self.parent / name, self.version)
        cgroup.path.mkdir()
        try:
            cgroup.set_memory_limit(limit_bytes)
        except OSError:
            cgroup.path.rmdir()
            raise
        return cgroup

    def stale(self, is_stale: Callable[[str], bool]) -> list[JobCgroup]:
        """Job cgroups a previous controller left behind."""
        return [
            JobCgroup(entry, self.version)
            for entry in self.parent.iterdir()
            if entry.is_dir() and is_stale(entry.name)
        ]

    def _probe(self) -> None:
        if self.version == 2:
            # The memory controller has to be handed down: to the parent, then to the job cgroups.
            _write(self.parent.parent / "cgroup.subtree_control", "+memory")
        self.parent.mkdir(exist_ok=True)
        if self.version == 2:
            _write(self.parent / "cgroup.subtree_control", "+memory")
        probe = self.parent / f"probe-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            probe.rmdir()
        self.create(probe.name, 64 * 2**20).path.rmdir()


def _read(path: Path, default: str) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def _write(path: Path, value: str) -> None:
    """Write an existing cgroup file; never create one (a missing file means this is no cgroup)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _write_if_present(path: Path, value: str) -> None:
    if path.exists():
        _write(path, value)


def _keyed(text: str) -> dict[str, int]:
    pairs = (line.split() for line in text.splitlines())
    return {pair[0]: int(pair[1]) for pair in pairs if len(pair) == 2 and pair[1].isdigit()}


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None
