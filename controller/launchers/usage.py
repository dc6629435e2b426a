"""An attempt's usage, as the record shows it: what the worker reported of itself (its envelope's
``usage``, worker_image/usage.py), checked, and completed by what its launcher saw. Pure functions.

The worker is not trusted: `from_worker` keeps each field only when it is of the right type and range and
drops the others (a bad usage block never costs a good result). An envelope without one (an older worker
image) gives an empty usage.

The shape (every field null when unknown)::

    peak_memory_bytes         the attempt's peak memory
    peak_memory_source        "worker" (its own peak of anonymous memory), "cgroup" (the local job
                              cgroup's, the worker's being unknown) or "limit" (it failed as `memory` with
                              no measured peak, e.g. OOM-killed on Kubernetes: it reached its limit)
    peak_resident_bytes       the worker's resident high-water mark (mapped code included)
    cgroup_peak_memory_bytes  the local job cgroup's peak (local launcher with cgroup enforcement)
    cpu_seconds               user + system CPU time: the local job cgroup's cpuacct when there is one,
                              else the worker's own
    phases                    wall seconds: queued, starting (worker start; on Kubernetes pod creation to
                              container start: scheduling, image, sandbox), fetch, execute, encode
    datasets                  [{table_name, bytes_fetched, rows, uncompressed_bytes}]
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_DATASETS", "PHASES", "WORKER_PHASES", "empty", "from_worker", "memory_ratio", "settle"]

PHASES = ("queued", "starting", "fetch", "execute", "encode")
WORKER_PHASES = ("fetch", "execute", "encode")
# More than a request can name (a request body is capped); anything beyond is not a real report.
MAX_DATASETS = 1000
_MAX_INT = 2**63 - 1
_MAX_SECONDS = 10.0**7
_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def empty() -> dict[str, Any]:
    return {
        "peak_memory_bytes": None,
        "peak_memory_source": None,
        "peak_resident_bytes": None,
        "cgroup_peak_memory_bytes": None,
        "cpu_seconds": None,
        "phases": dict.fromkeys(PHASES),
        "datasets": [],
    }


def from_worker(value: object) -> tuple[dict[str, Any], list[str]]:
    """The usage a worker reported, checked: what is kept, and the names of the fields dropped."""
    usage = empty()
    if value is None:
        return usage, []
    if not isinstance(value, Mapping):
        return usage, ["usage"]
    dropped: list[str] = []
    peak = _count(value.get("peak_memory_bytes"))
    if peak is not None:
        usage["peak_memory_bytes"], usage["peak_memory_source"] = peak, "worker"
    elif "peak_memory_bytes" in value:
        dropped.append("peak_memory_bytes")
    usage["peak_resident_bytes"] = _count(value.get("peak_resident_bytes"))
    if usage["peak_resident_bytes"] is None and "peak_resident_bytes" in value:
        dropped.append("peak_resident_bytes")
    usage["cpu_seconds"] = _seconds(value.get("cpu_seconds"))
    if usage["cpu_seconds"] is None and "cpu_seconds" in value:
        dropped.append("cpu_seconds")
    phases = value.get("phases", {})
    if isinstance(phases, Mapping):
        for name in WORKER_PHASES:
            usage["phases"][name] = _seconds(phases.get(name))
            if usage["phases"][name] is None and name in phases:
                dropped.append(f"phases.{name}")
    else:
        dropped.append("phases")
    datasets = _datasets(value.get("datasets", []))
    if datasets is None:
        dropped.append("datasets")
    else:
        usage["datasets"] = datasets
    return usage, dropped


def settle(
    usage: Mapping[str, Any],
    *,
    cgroup_peak_bytes: int | None = None,
    cgroup_cpu_seconds: float | None = None,
    starting_seconds: float | None = None,
    oom_limit_bytes: int | None = None,
) -> dict[str, Any]:
    """`usage` completed by the launcher's own figures. `oom_limit_bytes`: the attempt failed as `memory`
    at this limit, which is then its peak unless a measured one is known."""
    settled = {**empty(), **usage, "phases": {**empty()["phases"], **usage.get("phases", {})}}
    if cgroup_peak_bytes is not None:
        settled["cgroup_peak_memory_bytes"] = cgroup_peak_bytes
        if settled["peak_memory_bytes"] is None:
            settled["peak_memory_bytes"], settled["peak_memory_source"] = cgroup_peak_bytes, "cgroup"
    if cgroup_cpu_seconds is not None:
        settled["cpu_seconds"] = round(cgroup_cpu_seconds, 3)
    if starting_seconds is not None:
        settled["phases"]["starting"] = round(max(0.0, starting_seconds), 4)
    if oom_limit_bytes is not None and settled["peak_memory_bytes"] is None:
        settled["peak_memory_bytes"], settled["peak_memory_source"] = oom_limit_bytes, "limit"
    return settled


def memory_ratio(usage: Mapping[str, Any] | None, limit_bytes: int) -> float | None:
    """Peak memory as a share of the limit, None when either is unknown."""
    peak = (usage or {}).get("peak_memory_bytes")
    if not isinstance(peak, int) or limit_bytes <= 0:
        return None
    return peak / limit_bytes


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
        return None
    return value


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or not 0 <= value <= _MAX_SECONDS:
        return None
    return float(value)


def _datasets(value: object) -> list[dict[str, Any]] | None:
    if not isinstance(value, list) or len(value) > MAX_DATASETS:
        return None
    checked = []
    for item in value:
        if not isinstance(item, Mapping):
            return None
        name = item.get("table_name")
        counts = {key: _count(item.get(key)) for key in ("bytes_fetched", "rows", "uncompressed_bytes")}
        if not isinstance(name, str) or not _TABLE.fullmatch(name) or None in counts.values():
            return None
        checked.append({"table_name": name, **counts})
    return checked
