"""/metrics shows the launcher's warm pool as it is at the scrape: its size, the idle workers ready, claims
and misses by reason, with every reason's series present from the start (zero), and zeros without a pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.launchers.base import POOL_MISSES, PoolStats
from controller.queue.metrics import Metrics
from controller.queue.store import SqliteStore
from tests.support.pool_series import pool_series

pytestmark = pytest.mark.unit


def samples(tmp_path: Path, stats: PoolStats | None) -> dict[tuple[str, str], float]:
    """The pool's samples by (name, reason) after one scrape, `stats` being what the launcher says."""
    store = SqliteStore(tmp_path / "podq.db")
    try:
        text = Metrics(store, lambda: stats).render().decode()
    finally:
        store.close()
    return pool_series(text)


def test_the_pool_is_read_at_each_scrape(tmp_path: Path) -> None:
    stats = PoolStats(size=4, idle=3, claims=17, misses={"empty": 2, "size": 5, "resize_refused": 1})
    assert samples(tmp_path, stats) == {
        ("podq_warm_pool_size", ""): 4,
        ("podq_warm_pool_idle", ""): 3,
        ("podq_warm_pool_claims_total", ""): 17,
        ("podq_warm_pool_misses_total", "empty"): 2,
        ("podq_warm_pool_misses_total", "size"): 5,
        ("podq_warm_pool_misses_total", "error"): 0,
        ("podq_warm_pool_misses_total", "resize_refused"): 1,
    }


def test_without_a_pool_every_series_is_zero(tmp_path: Path) -> None:
    found = samples(tmp_path, None)
    assert set(found) == {
        ("podq_warm_pool_size", ""),
        ("podq_warm_pool_idle", ""),
        ("podq_warm_pool_claims_total", ""),
        *(("podq_warm_pool_misses_total", reason) for reason in POOL_MISSES),
    }
    assert set(found.values()) == {0}
