"""What the store and dispatcher tests queue: one set of limits, one request, one fresh store per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.launchers.base import QueryLimits
from controller.queue.store import Store

LIMITS = QueryLimits(cpu="1", memory="1Gi", timeout_seconds=5, cpu_millicores=1000, memory_bytes=2**30)
REQUEST: dict[str, Any] = {"operation": "query", "sql": "SELECT 1"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "podq.db")
    yield opened
    opened.close()
