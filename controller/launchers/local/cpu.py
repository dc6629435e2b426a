"""Per-job CPU cgroups for the local launcher: the query's CPU limit as a CFS quota, and its CPU time.

cgroup v1 only: the ``cpu`` controller (``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``) and ``cpuacct``
(``cpuacct.usage``), mounted together or apart. Each job gets ``<parent>/<name>`` in each, the parent
being ``podq`` inside this process's own cgroup of that controller, else at the hierarchy's root. Where
none is writable (not root, cgroup v2 without a delegated cpu controller) the launcher runs without a CPU
cap, as before: polars' thread count alone follows the limit.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controller.launchers.local.cgroups import PARENT_NAME, CgroupUnavailable

__all__ = ["CFS_PERIOD_US", "CpuCgroups", "JobCpu"]

log = logging.getLogger(__name__)

CFS_PERIOD_US = 100_000
# Group scheduling weighs a cgroup as one task: the `podq` parent at the default 1024 shares would get, all
# queries together, what one busy thread at the root gets, far less than workers as separate processes had
# on a busy host. Its shares are those of 16 busy threads (each job's CFS quota still caps what it uses);
# each job weighs 1024 per core of its limit.
PARENT_SHARES = 16 * 1024


@dataclass(frozen=True)
class JobCpu:
    # The job's directory in each hierarchy (one when cpu and cpuacct are mounted together).
    paths: tuple[Path, ...]
    quota_path: Path
    usage_path: Path

    @property
    def procs_files(self) -> list[Path]:
        return [path / "cgroup.procs" for path in self.paths]

    def usage_ns(self) -> int | None:
        """CPU time the job has used, in nanoseconds."""
        try:
            return int(self.usage_path.read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> list[str]:
        """Remove the job's directories (its processes are gone by now); what could not be removed."""
        problems = []
        for path in self.paths:
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(f"{path}: {exc}")
        return problems


class CpuCgroups:
    def __init__(self, cpu_parent: Path, cpuacct_parent: Path) -> None:
        self.cpu_parent = cpu_parent
        self.cpuacct_parent = cpuacct_parent

    @classmethod
    def discover(cls) -> CpuCgroups:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        own = _own_v1(Path("/proc/self/cgroup").read_text())
        mounts: dict[str, Path] = {}
        for line in mountinfo.splitlines():
            fields = line.split()
            separator = fields.index("-")
            if fields[separator + 1] != "cgroup":
                continue
            for controller in ("cpu", "cpuacct"):
                if controller in fields[separator + 3].split(","):
                    mounts[controller] = Path(fields[4])
        if "cpu" not in mounts or "cpuacct" not in mounts:
            raise CgroupUnavailable("no cgroup v1 cpu and cpuacct controllers mounted")
        problems = []
        for where in ("own", "root"):
            parents = []
            for controller in ("cpu", "cpuacct"):
                relative = own.get(controller, "/").lstrip("/") if where == "own" else ""
                parents.append(mounts[controller] / relative / PARENT_NAME)
            tree = cls(parents[0], parents[1])
            try:
                tree._probe()
            except OSError as exc:
                problems.append(f"{parents[0]}: {exc}")
                continue
            return tree
        raise CgroupUnavailable("; ".join(problems))

    def create(self, name: str, millicores: int) -> JobCpu:
        cpu = self.cpu_parent / name
        acct = self.cpuacct_parent / name
        paths = (cpu,) if cpu == acct else (cpu, acct)
        job = JobCpu(paths, cpu / "cpu.cfs_quota_us", acct / "cpuacct.usage")
        try:
            for path in paths:
                path.mkdir()
            _write(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(job.quota_path, str(max(1000, millicores * CFS_PERIOD_US // 1000)))
            _write(cpu / "cpu.shares", str(max(2, millicores * 1024 // 1000)))
        except OSError:
            job.remove()
            raise
        return job

    def remove_stale(self, is_stale: Callable[[str], bool]) -> None:
        """Remove the job cgroups a controller no longer running left behind."""
        for cpu in self.stale(is_stale):
            log.warning("removing cpu cgroup %s left by a previous controller", cpu.paths[0])
            for problem in cpu.remove():
                log.error("cpu cgroup not removed: %s", problem)

    def stale(self, is_stale: Callable[[str], bool]) -> list[JobCpu]:
        found = []
        for entry in self.cpu_parent.iterdir():
            if entry.is_dir() and is_stale(entry.name):
                acct = self.cpuacct_parent / entry.name
                paths = (entry,) if entry == acct else (entry, acct)
                found.append(JobCpu(paths, entry / "cpu.cfs_quota_us", acct / "cpuacct.usage"))
        return found

    def _probe(self) -> None:
        for parent in {self.cpu_parent, self.cpuacct_parent}:
            parent.mkdir(exist_ok=True)
        _write(self.cpu_parent / "cpu.shares", str(PARENT_SHARES))
        name = f"probe-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            for parent in (self.cpu_parent, self.cpuacct_parent):
                (parent / name).rmdir()
        self.create(name, 1000).remove()


def _own_v1(proc_cgroup: str) -> dict[str, str]:
    own = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            own[controller] = path
    return own


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise OSError(exc.errno, f"{path} refused {value!r}") from exc
        raise
    finally:
        os.close(fd)
