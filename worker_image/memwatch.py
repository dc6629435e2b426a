"""The worker's watch over its own memory: stop a query at its memory limit before the kernel has to.

Why the worker watches itself. At a cgroup's limit the kernel does not kill at once: it first reclaims
whatever it can, and what it can is the file-backed pages the process runs on (the interpreter's and
polars' code). The query faults them straight back in, so the process sits at its limit, thrashing,
for 15 to 60 seconds before the OOM killer acts (measured with the DISTINCT cross join of issue 11 at
512Mi, cgroup v1), holding its CPU and its concurrency slot all along. Under RLIMIT_AS nothing is killed,
an allocation fails, and polars may abort or deadlock. Both are late or unreliable; the anonymous memory
the query itself allocates is the part no reclaim can shrink, so the worker compares that with its limit.

The numbers. The limit is the request's ``limits.memory_bytes``, the limit the launcher enforces for this
query (`memory_limit`); a request without it falls back to `MEMORY_LIMIT_ENV` (bytes): the local
launcher sets the cap it enforces, a pod gets its own ``limits.memory`` through the downward API. The
request wins because a warm pod's environment is fixed when its container starts: a pod resized for its
query afterwards (`pods/resize`) still has the pool's smaller limit there.
The worker reads ``RssAnon`` from /proc/self/status every `POLL_SECONDS` (an open file read again from
offset 0: ~10 microseconds) and stops the query once it reaches `threshold(limit)`, which leaves
`headroom(limit)` for what the kernel charges besides: the code the process is running, page tables,
and one poll interval of growth (polars was measured to allocate ~1 GiB/s, ~20 MiB per 20 ms). The
headroom is 1/16 of the limit but at least 32 MiB, and never more than 1/8 of the limit, so a query that
peaks at 80% of its limit (or up to 87.5% of it) always runs to the end.

The kernel remains the authority: a query that outruns the watch is still OOM-killed, and a pod's
``OOMKilled`` is classified as ``memory`` before any envelope is read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from worker_image.protocol import MEMORY_LIMIT_ENV

__all__ = [
    "POLL_SECONDS",
    "MemoryWatch",
    "headroom",
    "memory_limit",
    "parse_limit",
    "rss_anon_bytes",
    "threshold",
]

POLL_SECONDS = 0.02
HEADROOM_MIN_BYTES = 32 * 2**20
HEADROOM_DIVISOR = 16
HEADROOM_MAX_DIVISOR = 8
STATUS_PATH = "/proc/self/status"
_STATUS_READ_BYTES = 16384


def headroom(limit_bytes: int) -> int:
    """Bytes of the limit left unused by the query: 1/16, at least 32 MiB, at most 1/8 of the limit."""
    return min(max(HEADROOM_MIN_BYTES, limit_bytes // HEADROOM_DIVISOR), limit_bytes // HEADROOM_MAX_DIVISOR)


def threshold(limit_bytes: int) -> int:
    """The anonymous resident memory at which the worker stops the query."""
    return limit_bytes - headroom(limit_bytes)


def parse_limit(text: str | None) -> int | None:
    """The memory limit in bytes from `MEMORY_LIMIT_ENV`; None (no watch) when absent or not a positive
    whole number of bytes."""
    if text is None:
        return None
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value > 0 else None


def memory_limit(request: Mapping[str, Any], environ: Mapping[str, str]) -> int | None:
    """The limit to watch: the (validated) request's ``limits.memory_bytes``, else `MEMORY_LIMIT_ENV`'s."""
    limits = request.get("limits") or {}
    from_request = limits.get("memory_bytes")
    return from_request if isinstance(from_request, int) else parse_limit(environ.get(MEMORY_LIMIT_ENV))


def rss_anon_bytes(status: str) -> int | None:
    """``RssAnon`` from the text of /proc/<pid>/status, in bytes; None if the line is absent or malformed."""
    for line in status.splitlines():
        if line.startswith("RssAnon:"):
            fields = line[len("RssAnon:") :].split()
            if len(fields) == 2 and fields[1] == "kB" and fields[0].isascii() and fields[0].isdigit():
                return int(fields[0]) * 1024
            return None
    return None


class MemoryWatch:
    """Reads the process's anonymous memory and says when it has reached the threshold."""

    def __init__(self, limit_bytes: int, status_path: str = STATUS_PATH) -> None:
        self.limit_bytes = limit_bytes
        self.threshold_bytes = threshold(limit_bytes)
        self.peak_bytes = 0
        self._fd = os.open(status_path, os.O_RDONLY | os.O_CLOEXEC)

    @classmethod
    def of(cls, limit: int | None) -> MemoryWatch | None:
        """A watch at `limit` (`memory_limit`); None: no limit, no watch."""
        if limit is None:
            return None
        try:
            return cls(limit)
        except OSError:
            # No procfs: no watch; the launcher's own cap still holds.
            return None

    def over(self) -> int | None:
        """The anonymous memory now, if it has reached the threshold; else None."""
        try:
            text = os.pread(self._fd, _STATUS_READ_BYTES, 0).decode("ascii", errors="replace")
        except OSError:
            return None
        current = rss_anon_bytes(text)
        if current is None:
            return None
        self.peak_bytes = max(self.peak_bytes, current)
        return current if current >= self.threshold_bytes else None
