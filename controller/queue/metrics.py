"""Prometheus metrics, on a registry of the app's own so several apps can live in one process (tests)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.launchers.base import POOL_MISSES, PoolStats
from controller.launchers.usage import PHASES, memory_ratio
from controller.queue.store import Row, Store

_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_PHASE_BUCKETS = (0.01, 0.025, 0.05, *_LATENCY_BUCKETS)
# Peak memory over the limit: how much of its memory an attempt used (1 and above: it reached it).
_RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.25)


class _QueueCollector(Collector):
    """Queue depth and running count read from the store at scrape time, so they are never stale."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> list[GaugeMetricFamily]:
        counts = self._store.count_by_status()
        depth = GaugeMetricFamily("podq_queue_depth", "Queries waiting to start.")
        depth.add_metric([], counts.get("queued", 0))
        running = GaugeMetricFamily("podq_running", "Queries running now.")
        running.add_metric([], counts.get("running", 0))
        return [depth, running]


class _PoolCollector(Collector):
    """The launcher's warm pool, read at scrape time; zeros without a pool, so the series always exist."""

    def __init__(self, pool_stats: Callable[[], PoolStats | None]) -> None:
        self._pool_stats = pool_stats

    def collect(self) -> list[Metric]:
        stats = self._pool_stats() or PoolStats.none()
        size = GaugeMetricFamily("podq_warm_pool_size", "Idle warm workers the pool keeps (configured).")
        size.add_metric([], stats.size)
        idle = GaugeMetricFamily("podq_warm_pool_idle", "Idle warm workers ready to be claimed now.")
        idle.add_metric([], stats.idle)
        claims = CounterMetricFamily("podq_warm_pool_claims", "Queries that took a warm worker.")
        claims.add_metric([], stats.claims)
        misses = CounterMetricFamily(
            "podq_warm_pool_misses",
            "Queries that started cold although the pool is on, by reason: empty (none ready), size (other "
            "limits than the pool's, not reached by a resize), error (the claim or the attach failed), "
            "resize_refused (the pod's resize was refused or not applied in time).",
            labels=["reason"],
        )
        for reason in POOL_MISSES:
            misses.add_metric([reason], stats.misses.get(reason, 0))
        return [size, idle, claims, misses]


class Metrics:
    def __init__(self, store: Store, pool_stats: Callable[[], PoolStats | None] = lambda: None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_QueueCollector(store))
        self.registry.register(_PoolCollector(pool_stats))
        self.submitted = Counter(
            "podq_queries_submitted", "Queries accepted.", ["operation"], registry=self.registry
        )
        self.finished = Counter(
            "podq_queries_finished",
            "Queries that reached a terminal state.",
            ["operation", "status", "error_type"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "podq_queue_wait_seconds",
            "From submission to start.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.run_time = Histogram(
            "podq_run_seconds",
            "From start to terminal state.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.peak_memory_ratio = Histogram(
            "podq_attempt_peak_memory_ratio",
            "Each attempt's peak memory divided by its memory limit.",
            buckets=_RATIO_BUCKETS,
            registry=self.registry,
        )
        self.phase_time = Histogram(
            "podq_attempt_phase_seconds",
            "Wall time of each attempt by phase: queued (first attempts), starting, fetch, execute, encode.",
            ["phase"],
            buckets=_PHASE_BUCKETS,
            registry=self.registry,
        )
        for phase in PHASES:
            self.phase_time.labels(phase)
        self.info = Gauge("podq_max_concurrent", "Configured concurrency cap.", registry=self.registry)

    def observe_submitted(self, operation: str) -> None:
        self.submitted.labels(operation).inc()

    def observe_started(self, row: Row) -> None:
        if row.started_at is not None:
            self.queue_wait.observe(max(0.0, row.started_at - row.submitted_at))
            if row.attempts == 1:
                self.phase_time.labels("queued").observe(max(0.0, row.started_at - row.submitted_at))

    def observe_attempt(self, usage: Mapping[str, Any] | None, memory_limit_bytes: int) -> None:
        """An attempt's usage, once its launcher has returned."""
        ratio = memory_ratio(usage, memory_limit_bytes)
        if ratio is not None:
            self.peak_memory_ratio.observe(ratio)
        for phase, seconds in ((usage or {}).get("phases") or {}).items():
            if phase != "queued" and isinstance(seconds, float):
                self.phase_time.labels(phase).observe(seconds)

    def observe_finished(self, row: Row) -> None:
        error_type = row.error["error_type"] if row.error else ""
        self.finished.labels(row.operation, row.status, error_type).inc()
        if row.started_at is not None and row.finished_at is not None:
            self.run_time.observe(max(0.0, row.finished_at - row.started_at))

    def render(self) -> bytes:
        return generate_latest(self.registry)
