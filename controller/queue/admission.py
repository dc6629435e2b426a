"""Turns an accepted request body into what is stored and sent to the worker, enforcing the settings' caps.

Pure: no I/O. A request over a cap raises `Rejected`, which the API answers with a 422 naming the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from controller.launchers.base import QueryLimits
from controller.models import InspectionIn, LimitsIn, QueryIn, RetryIn
from controller.quantity import parse_cpu_millicores, parse_memory_bytes
from controller.queue.retry import RetryPolicy
from controller.settings import Settings
from worker_image.netpolicy import FetchPolicy, Refused, check_url
from worker_image.protocol import FetchOptions, WorkerRequest

# The request travels to the worker in one environment variable; Linux takes at most 128 KiB for one
# "NAME=value" string (MAX_ARG_STRLEN). Keep well below it.
MAX_WORKER_REQUEST_BYTES = 100 * 1024


class Rejected(Exception):
    """A request over one of the settings' caps; `field` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Admitted:
    request: WorkerRequest
    limits: QueryLimits
    # Queries only; an inspection is not retried.
    retry: RetryPolicy | None = None


def _limits(limits: LimitsIn | None, settings: Settings) -> QueryLimits:
    cpu = (limits and limits.cpu) or settings.default_cpu
    memory = (limits and limits.memory) or settings.default_memory
    timeout = (limits and limits.timeout_seconds) or settings.default_timeout_seconds
    cpu_millicores, memory_bytes = parse_cpu_millicores(cpu), parse_memory_bytes(memory)
    if cpu_millicores > parse_cpu_millicores(settings.max_cpu):
        raise Rejected("limits.cpu", f"cpu {cpu} is above the maximum {settings.max_cpu}")
    if memory_bytes > parse_memory_bytes(settings.max_memory):
        raise Rejected("limits.memory", f"memory {memory} is above the maximum {settings.max_memory}")
    if timeout > settings.max_timeout_seconds:
        raise Rejected(
            "limits.timeout_seconds",
            f"timeout_seconds {timeout:g} is above the maximum {settings.max_timeout_seconds:g}",
        )
    return QueryLimits(
        cpu=cpu,
        memory=memory,
        timeout_seconds=timeout,
        cpu_millicores=cpu_millicores,
        memory_bytes=memory_bytes,
        queue_timeout_seconds=_queue_timeout(limits, settings),
    )


def _queue_timeout(limits: LimitsIn | None, settings: Settings) -> float | None:
    queue_timeout = (limits and limits.queue_timeout_seconds) or settings.default_queue_timeout_seconds
    if queue_timeout > settings.max_queue_timeout_seconds:
        raise Rejected(
            "limits.queue_timeout_seconds",
            f"queue_timeout_seconds {queue_timeout:g} is above the maximum "
            f"{settings.max_queue_timeout_seconds:g}",
        )
    return queue_timeout or None


def _retry(given: RetryIn | None, limits: QueryLimits, settings: Settings) -> RetryPolicy | None:
    if given is None:
        return None
    max_attempts = given.max_attempts or settings.default_retry_max_attempts
    if max_attempts > settings.max_retry_attempts:
        raise Rejected(
            "retry.max_attempts",
            f"max_attempts {max_attempts} is above the maximum {settings.max_retry_attempts}",
        )
    max_memory = given.max_memory or settings.max_memory
    max_memory_bytes = parse_memory_bytes(max_memory)
    if max_memory_bytes > parse_memory_bytes(settings.max_memory):
        raise Rejected(
            "retry.max_memory", f"max_memory {max_memory} is above the maximum {settings.max_memory}"
        )
    if max_memory_bytes < limits.memory_bytes:
        raise Rejected(
            "retry.max_memory", f"max_memory {max_memory} is below the query's memory limit {limits.memory}"
        )
    return RetryPolicy(
        max_attempts=max_attempts,
        on=frozenset(settings.default_retry_on if given.on is None else given.on),
        memory_factor=given.memory_factor or settings.default_retry_memory_factor,
        max_memory_bytes=max_memory_bytes,
    )


def _fetch(settings: Settings) -> FetchOptions:
    return {
        "connect_timeout_seconds": settings.fetch_connect_timeout_seconds,
        "read_timeout_seconds": settings.fetch_read_timeout_seconds,
        "total_timeout_seconds": settings.fetch_total_timeout_seconds,
        "max_download_bytes": settings.max_download_bytes,
        "allowed_networks": settings.fetch_allowed_networks,
        "blocked_networks": settings.fetch_blocked_networks,
    }


def _check_url(field: str, url: str, settings: Settings) -> None:
    """Refuses early what the worker would refuse anyway: a bad shape, or a host that is a blocked address.
    Names are not resolved here; the worker judges the addresses it connects to."""
    policy = FetchPolicy.from_lists(settings.fetch_allowed_networks, settings.fetch_blocked_networks)
    try:
        check_url(url, policy)
    except Refused as exc:
        raise Rejected(field, exc.message) from None


def _debug(debug: dict[str, Any] | None, settings: Settings) -> dict[str, Any]:
    if debug is None:
        return {}
    if not settings.enable_test_hooks:
        raise Rejected("debug", "test hooks are disabled on this server")
    return {"debug": debug}


def _admitted(request: WorkerRequest, limits: QueryLimits, retry: RetryPolicy | None = None) -> Admitted:
    size = len(json.dumps(request).encode())
    if size > MAX_WORKER_REQUEST_BYTES:
        raise Rejected(
            "body",
            f"the request is {size} bytes once encoded for the worker, above the maximum "
            f"{MAX_WORKER_REQUEST_BYTES}: use fewer or shorter dataset URLs, or shorter SQL",
        )
    return Admitted(request=request, limits=limits, retry=retry)


def admit_query(body: QueryIn, settings: Settings) -> Admitted:
    if len(body.sql.encode()) > settings.max_sql_bytes:
        raise Rejected(
            "sql", f"sql is {len(body.sql.encode())} bytes, above the maximum {settings.max_sql_bytes}"
        )
    if len(body.datasets) > settings.max_datasets:
        raise Rejected(
            "datasets", f"{len(body.datasets)} datasets, above the maximum {settings.max_datasets}"
        )
    for index, dataset in enumerate(body.datasets):
        _check_url(f"datasets[{index}].url", dataset.url, settings)
    max_rows = body.max_rows or settings.default_max_rows
    if max_rows > settings.max_rows_limit:
        raise Rejected("max_rows", f"max_rows {max_rows} is above the maximum {settings.max_rows_limit}")
    request: WorkerRequest = {
        "operation": "query",
        "fetch": _fetch(settings),
        "sql": body.sql,
        "datasets": [{"url": d.url, "table_name": d.table_name} for d in body.datasets],
        "max_rows": max_rows,
        "max_result_bytes": settings.max_result_bytes,
        **_debug(body.debug, settings),  # type: ignore[typeddict-item]
    }
    limits = _limits(body.limits, settings)
    return _admitted(request, limits, _retry(body.retry, limits, settings))


def admit_inspection(body: InspectionIn, settings: Settings) -> Admitted:
    _check_url("url", body.url, settings)
    request: WorkerRequest = {
        "operation": "inspect",
        "fetch": _fetch(settings),
        "url": body.url,
        **_debug(body.debug, settings),  # type: ignore[typeddict-item]
    }
    return _admitted(request, _limits(body.limits, settings))
