"""Leak checks: which processes are still there, read from /proc (Linux).

A worker runs in a session of its own, so the session id of everything it started is the worker's pid,
even after its parent died and it was re-parented: `session_members(pid)` finds what a job left behind.
`live_descendants()` finds anything this test process started and did not reap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

WORKER_MODULE = "worker_image"
# A warm worker is forked from the zygote, so it has the zygote's command line (and /proc environ); it is
# a session leader, the zygote is not.
ZYGOTE_MODULE = "worker_image.zygote"


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    cmdline: tuple[str, ...]

    @property
    def is_worker(self) -> bool:
        """A cold worker (``python -m worker_image``) or a warm one (a child of the zygote)."""
        return WORKER_MODULE in self.cmdline or (ZYGOTE_MODULE in self.cmdline and self.sid == self.pid)

    @property
    def is_zygote(self) -> bool:
        return ZYGOTE_MODULE in self.cmdline and self.sid != self.pid

    def cwd(self) -> Path | None:
        """The process's working directory (a worker's is its job directory), None once it is gone."""
        try:
            return Path(os.readlink(f"/proc/{self.pid}/cwd"))
        except OSError:
            return None

    def scratch(self) -> Path:
        """A worker's scratch directory (its TMPDIR): ``tmp`` in its job directory, warm or cold."""
        cwd = self.cwd()
        assert cwd is not None, f"process {self.pid} is gone"
        return cwd / "tmp"

    def environ(self) -> dict[str, str]:
        """The process's environment as it was exec'd ({} once it is gone)."""
        try:
            raw = Path(f"/proc/{self.pid}/environ").read_bytes()
        except OSError:
            return {}
        pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # The command name in parentheses may itself hold spaces and parentheses.
    fields = stat.rsplit(")", 1)[1].split()
    return Proc(
        pid=pid,
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        sid=int(fields[3]),
        state=fields[0],
        cmdline=tuple(part.decode(errors="replace") for part in cmdline.split(b"\0") if part),
    )


def processes() -> list[Proc]:
    found = (read_proc(int(entry)) for entry in os.listdir("/proc") if entry.isdigit())
    return [proc for proc in found if proc is not None]


def live_descendants(root: int | None = None) -> list[Proc]:
    """Descendants of `root` (default: this process) that are not zombies."""
    table = processes()
    children: dict[int, list[Proc]] = {}
    for proc in table:
        children.setdefault(proc.ppid, []).append(proc)
    found: list[Proc] = []
    pending = [os.getpid() if root is None else root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child.pid)
    return [proc for proc in found if proc.state != "Z"]


def live_workers(root: int | None = None) -> list[Proc]:
    """Worker processes (``python -m worker_image``) among the live descendants of `root`."""
    return [proc for proc in live_descendants(root) if proc.is_worker]


def live_zygotes(root: int | None = None) -> list[Proc]:
    """Zygotes (``python -m worker_image.zygote``) among the live descendants of `root`."""
    return [proc for proc in live_descendants(root) if proc.is_zygote]


def session_members(sid: int) -> list[Proc]:
    """Every live process, anywhere, in session `sid`: what a worker with that pid left behind.

    Zombies do not count: they are dead, and reaping an orphan is its new parent's (init's) business.
    """
    return [proc for proc in processes() if proc.sid == sid and proc.state != "Z"]
