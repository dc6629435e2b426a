"""What the worker measures of its own run, for the envelope's ``usage`` (the record's `usage`).

- ``peak_memory_bytes``: the most anonymous resident memory (``RssAnon``) seen: the figure a memory limit
  is about (worker_image/memwatch.py says why), read at every phase's start and end, at the report, and
  every 20 ms by the memory watch when there is one. Without procfs, the resident high-water mark.
- ``peak_resident_bytes``: the resident high-water mark as the kernel keeps it (``getrusage``
  ``ru_maxrss``, of the worker and of any child it waited for): never misses a peak, but counts the
  mapped code too (~90 MiB of interpreter, polars and pyarrow), which is shared and, in a local warm
  worker, charged to the zygote's cgroup rather than the job's.
- ``cpu_seconds``: user and system time of the worker and its children.
- ``phases``: wall seconds spent fetching (downloads and the parquet checks), executing (polars) and
  encoding (the result's JSON, Arrow and Parquet forms); a phase never reached is absent.
- ``datasets``: per table, the bytes downloaded, and the rows and uncompressed bytes its parquet footer
  declares.

A phase still running when the report is made (a memory stop) counts up to that moment. The report is
read by the main thread while the operation's thread writes: both only swap whole values.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

from worker_image.memwatch import STATUS_PATH, rss_anon_bytes

__all__ = ["Meter", "Phase"]

Phase = Literal["fetch", "execute", "encode"]


class Meter:
    def __init__(self, clock: Callable[[], float] = time.monotonic, status_path: str = STATUS_PATH) -> None:
        self._clock = clock
        self._phases: dict[str, float] = {}
        self._current: tuple[str, float] | None = None
        self._datasets: list[dict[str, Any]] = []
        self._anon_peak: int | None = None
        try:
            self._status: int | None = os.open(status_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._status = None
        self._sample()

    def _sample(self) -> None:
        if self._status is None:
            return
        try:
            current = rss_anon_bytes(os.pread(self._status, 16384, 0).decode("ascii", errors="replace"))
        except OSError:
            return
        if current is not None:
            self._anon_peak = max(self._anon_peak or 0, current)

    @contextlib.contextmanager
    def phase(self, name: Phase) -> Iterator[None]:
        self._sample()
        started = self._clock()
        self._current = (name, started)
        try:
            yield
        finally:
            self._current = None
            self._phases = {**self._phases, name: self._phases.get(name, 0.0) + self._clock() - started}
            self._sample()

    def dataset(self, table_name: str, *, bytes_fetched: int, rows: int, uncompressed_bytes: int) -> None:
        entry = {
            "table_name": table_name,
            "bytes_fetched": bytes_fetched,
            "rows": rows,
            "uncompressed_bytes": uncompressed_bytes,
        }
        self._datasets = [*self._datasets, entry]

    def report(self, watched_peak_bytes: int = 0) -> dict[str, Any]:
        """The usage so far; `watched_peak_bytes`: the memory watch's peak of the same figure."""
        self._sample()
        phases = dict(self._phases)
        current = self._current
        if current is not None:
            name, started = current
            phases[name] = phases.get(name, 0.0) + self._clock() - started
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        # ru_maxrss is in KiB on Linux.
        resident = max(own.ru_maxrss, children.ru_maxrss) * 1024
        anon = None if self._anon_peak is None else max(self._anon_peak, watched_peak_bytes)
        cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
        return {
            "peak_memory_bytes": resident if anon is None else anon,
            "peak_resident_bytes": resident,
            "cpu_seconds": round(cpu, 3),
            "phases": {name: round(seconds, 4) for name, seconds in phases.items()},
            "datasets": list(self._datasets),
        }
