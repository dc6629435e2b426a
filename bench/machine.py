"""The machine a run was taken on, as printed at the top of every report."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import polars as pl


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def _duckdb_version() -> str:
    try:
        return version("duckdb")
    except PackageNotFoundError:
        return "not installed"


def describe() -> str:
    return "\n".join(
        [
            f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            f"- cpu: {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {_cpu_model()}",
            f"- memory: {_memory_gib():.1f} GiB",
            f"- kernel: {platform.system()} {platform.release()}",
            f"- python {sys.version.split()[0]}, polars {pl.__version__}, duckdb {_duckdb_version()}",
        ]
    )
