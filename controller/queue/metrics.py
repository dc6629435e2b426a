"""Prometheus metrics, on a registry of the app's own so several apps can live in one process (tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.queue.store import Row, Store

_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


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


class Metrics:
    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_QueueCollector(store))
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
        self.info = Gauge("podq_max_concurrent", "Configured concurrency cap.", registry=self.registry)

    def observe_submitted(self, operation: str) -> None:
        self.submitted.labels(operation).inc()

    def observe_started(self, row: Row) -> None:
        if row.started_at is not None:
            self.queue_wait.observe(max(0.0, row.started_at - row.submitted_at))

    def observe_finished(self, row: Row) -> None:
        error_type = row.error["error_type"] if row.error else ""
        self.finished.labels(row.operation, row.status, error_type).inc()
        if row.started_at is not None and row.finished_at is not None:
            self.run_time.observe(max(0.0, row.finished_at - row.started_at))

    def render(self) -> bytes:
        return generate_latest(self.registry)
