"""The few facts the local launcher reads from /proc about processes."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["session_members", "start_time"]


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if there is no such process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def session_members(sid: int) -> list[int]:
    """The live (not zombie) processes in session `sid`."""
    members = []
    for entry in os.listdir("/proc"):
        fields = _stat_fields(int(entry)) if entry.isdigit() else None
        if fields is not None and int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry))
    return members


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: field 3 (state) is index 0."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may itself hold spaces and parentheses.
    return stat.rsplit(")", 1)[1].split()
