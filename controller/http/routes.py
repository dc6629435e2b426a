"""HTTP routes only: parsing, status codes and headers. The work is in admission, store and dispatcher."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from controller.http.deps import IdempotencyKeyHeader, Services, ServicesDep, WaitParam
from controller.http.errors import error_response
from controller.http.idempotency import fingerprint, parse_key
from controller.http.middleware import client_scope
from controller.http.results import FORMATS, TYPED, NotAcceptable, has_typed, negotiate, render
from controller.launchers.base import QueryLimits
from controller.models import ErrorOut, InspectionIn, QueryIn, RecordOut, RecordPage, Status
from controller.queue.admission import Admitted, Rejected, admit_inspection, admit_query
from controller.queue.backpressure import RECENT_RUNS, retry_after_seconds
from controller.queue.store import Attempt, IdempotencyKey, QueueFull, Row
from worker_image.protocol import ErrorType

SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"headers": {"Location": {"description": "The record's path.", "schema": {"type": "string"}}}},
    429: {
        "model": ErrorOut,
        "description": "The queue is full (`PODQ_MAX_QUEUED`); nothing was stored. Submit again after "
        "`Retry-After` seconds.",
        "headers": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
    },
}

_TRUNCATION_HEADERS: dict[str, Any] = {
    "Podq-Total-Rows": {"description": "Rows the query returned in all.", "schema": {"type": "integer"}},
    "Podq-Returned-Rows": {"description": "Rows in this body.", "schema": {"type": "integer"}},
    "Podq-Truncated": {"description": "`true` when rows were cut.", "schema": {"type": "boolean"}},
    "Podq-Truncated-By": {
        "description": "Which cap cut them: `rows` (`max_rows`) or `bytes` (`PODQ_MAX_RESULT_BYTES`); "
        "absent when none did.",
        "schema": {"type": "string", "enum": ["rows", "bytes"]},
    },
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
RESULT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The result, in the format asked for; the headers say what the caps cut.",
        "headers": _TRUNCATION_HEADERS,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/QueryResult"}},
            "text/csv": {"schema": {"type": "string"}},
            FORMATS["arrow"]: _BINARY,
            FORMATS["parquet"]: _BINARY,
        },
    },
    404: {"model": ErrorOut, "description": "No such query."},
    406: {"model": ErrorOut, "description": "The format asked for (`format` or `Accept`) is not served."},
    409: {
        "model": ErrorOut,
        "description": "The query has no result: queued, running, failed or cancelled (`details.status`).",
    },
}

queries = APIRouter(prefix="/v1/queries", tags=["queries"])
inspections = APIRouter(prefix="/v1/inspections", tags=["inspections"])
health = APIRouter(tags=["operations"])


def record(row: Row, attempts: list[Attempt]) -> RecordOut:
    request: dict[str, Any] = row.request
    shown = [_attempt(attempt, queued_since(row, attempts, index)) for index, attempt in enumerate(attempts)]
    return RecordOut.model_validate(
        {
            "id": row.id,
            "operation": row.operation,
            "status": row.status,
            "sql": request.get("sql"),
            "datasets": request.get("datasets"),
            "url": request.get("url"),
            "max_rows": request.get("max_rows"),
            "limits": row.limits.as_written(),
            "retry": row.retry,
            "result": row.result,
            "error": row.error,
            "attempts": shown,
            "usage": shown[-1]["usage"] if shown else None,
            "submitted_at": row.submitted_at,
            "started_at": row.started_at,
            "finished_at": row.finished_at,
            "placement": row.placement,
        }
    )


def queued_since(row: Row, attempts: list[Attempt], index: int) -> float | None:
    """When the attempt at `index` was queued: at submission for the first, at the end of the one before
    for the others; None when the one before is no longer kept."""
    if attempts[index].number == 1:
        return row.submitted_at
    return attempts[index - 1].finished_at if index > 0 else None


def _attempt(attempt: Attempt, queued_at: float | None) -> dict[str, Any]:
    usage = dict(attempt.usage or {})
    if queued_at is not None:
        usage["phases"] = {**usage.get("phases", {}), "queued": max(0.0, attempt.started_at - queued_at)}
    return {
        "number": attempt.number,
        "status": attempt.status,
        "limits": QueryLimits.from_stored(attempt.limits).as_written(),
        "placement": attempt.placement,
        "started_at": attempt.started_at,
        "finished_at": attempt.finished_at,
        "error": attempt.error,
        "usage": usage,
    }


def records(services: Services, rows: list[Row]) -> list[RecordOut]:
    """The records of `rows`, each with its kept attempts."""
    kept = services.store.attempts([row.id for row in rows])
    return [record(row, kept[row.id]) for row in rows]


def _idempotency_key(
    request: Request, header: str | None, operation: str, body: BaseModel
) -> IdempotencyKey | None:
    if header is None:
        return None
    try:
        key = parse_key(header)
    except ValueError as exc:
        raise Rejected("Idempotency-Key", str(exc)) from None
    return IdempotencyKey(client_scope(request.scope), key, fingerprint(operation, body))


def _accepted(services: Services, row: Row, location: str, *, replayed: bool) -> JSONResponse:
    headers = {"Location": f"{location}/{row.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
        (accepted,) = records(services, [row])
    else:
        # Just stored, so no attempts yet: a second read here could fail after the insert committed and
        # answer 503 for a stored query, which the client would then submit again.
        accepted = record(row, [])
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202, headers=headers)


def _submit(
    services: Services,
    operation: str,
    admit: Callable[[], Admitted],
    location: str,
    key: IdempotencyKey | None,
) -> JSONResponse:
    ttl = services.settings.idempotency_key_ttl_seconds
    # A retry gets its query back before admission, so a cap or setting changed since cannot refuse it.
    if key is not None and (known := services.store.find_key(key, ttl)) is not None:
        return _accepted(services, known, location, replayed=True)
    admitted = admit()
    refusal = services.launcher.refusal(admitted.limits)
    if refusal is not None:
        raise Rejected("limits", refusal)
    query_id, request, max_queued = uuid.uuid4().hex, dict(admitted.request), services.settings.max_queued
    retry = None if admitted.retry is None else admitted.retry.stored()
    try:
        if key is None:
            row = services.store.insert(
                query_id, operation, request, admitted.limits, retry=retry, max_queued=max_queued
            )
            created = True
        else:
            row, created = services.store.insert_once(
                key,
                ttl,
                query_id=query_id,
                operation=operation,
                request=request,
                limits=admitted.limits,
                retry=retry,
                max_queued=max_queued,
            )
    except QueueFull:
        return _queue_full(services)
    if created:
        services.metrics.observe_submitted(operation)
        services.dispatcher.notify()
    return _accepted(services, row, location, replayed=not created)


def _queue_full(services: Services) -> JSONResponse:
    # `unschedulable`: the taxonomy's "no room to run this now" (retryable), not a fault of the request.
    limit = services.settings.max_queued
    seconds = retry_after_seconds(
        services.store.recent_run_seconds(RECENT_RUNS), services.settings.max_concurrent
    )
    return error_response(
        429,
        ErrorType.UNSCHEDULABLE,
        f"the queue is full ({limit} queries waiting to start); submit again in {seconds} s",
        {"max_queued": limit, "retry_after_seconds": seconds},
        headers={"Retry-After": str(seconds)},
    )


def _not_found(query_id: str) -> JSONResponse:
    return error_response(404, ErrorType.VALIDATION, f"no such query: {query_id}", {"id": query_id})


async def _get(services: Services, query_id: str, operation: str, wait: float) -> RecordOut | JSONResponse:
    row = await services.dispatcher.wait_finished(query_id, wait)
    if row is None or row.operation != operation:
        return _not_found(query_id)
    return records(services, [row])[0]


@queries.post("", status_code=202, response_model=RecordOut, responses=SUBMIT_RESPONSES)
async def submit_query(
    body: QueryIn, request: Request, services: ServicesDep, idempotency_key: IdempotencyKeyHeader = None
) -> JSONResponse:
    """Queue a query. Answers 202 with its record; `Location` names the record."""
    key = _idempotency_key(request, idempotency_key, "query", body)
    return _submit(services, "query", partial(admit_query, body, services.settings), "/v1/queries", key)


@queries.get("", response_model=RecordPage)
async def list_queries(
    services: ServicesDep,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    # At most 18 digits: any cursor podq hands out fits, and a longer one would overflow SQLite's INTEGER.
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
) -> RecordPage:
    """Queries, newest first, optionally only those in one status."""
    rows = services.store.page(
        operation="query", status=status, limit=limit, before_seq=int(cursor) if cursor else None
    )
    next_cursor = str(rows[-1].seq) if len(rows) == limit else None
    return RecordPage(items=records(services, rows), next_cursor=next_cursor)


@queries.get("/{query_id}", response_model=RecordOut)
async def get_query(query_id: str, services: ServicesDep, wait: WaitParam = 0) -> RecordOut | JSONResponse:
    """The query's record; with `wait`, held until it is finished or `wait` seconds have passed."""
    return await _get(services, query_id, "query", wait)


@queries.get("/{query_id}/result", response_class=Response, responses=RESULT_RESPONSES)
async def get_result(
    query_id: str,
    services: ServicesDep,
    format: Annotated[
        str | None,
        Query(description="`json`, `csv`, `arrow` (Arrow IPC stream) or `parquet`; overrides `Accept`."),
    ] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """A succeeded query's result as JSON (the default), CSV, an Arrow IPC stream or Parquet, chosen by
    `format` or `Accept`. Arrow and Parquet keep every column's type (decimals, time zones, durations,
    lists, structs); all formats hold the same rows, cut by the same caps, which the headers state."""
    row = services.store.get(query_id)
    if row is None or row.operation != "query":
        return _not_found(query_id)
    try:
        name = negotiate(format, accept)
    except NotAcceptable as exc:
        return error_response(
            406, ErrorType.VALIDATION, str(exc), {"formats": {k: v.split(";")[0] for k, v in FORMATS.items()}}
        )
    if row.status != "succeeded" or row.result is None:
        return error_response(
            409,
            ErrorType.VALIDATION,
            f"query {query_id} has no result: it is {row.status}",
            {"id": query_id, "status": row.status},
        )
    if name in TYPED and not has_typed(row.result):
        return error_response(
            409,
            ErrorType.VALIDATION,
            f"query {query_id}'s result was stored without its typed form (by an older podq): "
            "only json and csv are available",
            {"id": query_id, "status": row.status, "formats": ["json", "csv"]},
        )
    rendered = render(query_id, row.result, name)
    return Response(rendered.body, media_type=rendered.media_type, headers=rendered.headers)


@queries.delete("/{query_id}", response_model=RecordOut)
async def cancel_query(query_id: str, services: ServicesDep) -> RecordOut | JSONResponse:
    """Cancel: a queued query never starts; a running one is stopped. 409 if it had already finished."""
    row = services.store.get(query_id)
    if row is None or row.operation != "query":
        return _not_found(query_id)
    row = await services.dispatcher.cancel(query_id)
    assert row is not None, "queries are never deleted"
    if row.status != "cancelled":
        return error_response(
            409,
            ErrorType.VALIDATION,
            f"query {query_id} already finished as {row.status}",
            {"id": query_id, "status": row.status},
        )
    return records(services, [row])[0]


@inspections.post("", status_code=202, response_model=RecordOut, responses=SUBMIT_RESPONSES)
async def submit_inspection(
    body: InspectionIn, request: Request, services: ServicesDep, idempotency_key: IdempotencyKeyHeader = None
) -> JSONResponse:
    """Inspect one parquet dataset (columns, row count, validity) in a worker of its own."""
    key = _idempotency_key(request, idempotency_key, "inspect", body)
    admit = partial(admit_inspection, body, services.settings)
    return _submit(services, "inspect", admit, "/v1/inspections", key)


@inspections.get("/{query_id}", response_model=RecordOut)
async def get_inspection(
    query_id: str, services: ServicesDep, wait: WaitParam = 0
) -> RecordOut | JSONResponse:
    return await _get(services, query_id, "inspect", wait)


@health.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@health.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    """The store answers and the launcher can run queries."""
    checks: dict[str, str] = {}
    try:
        services.store.ping()
        checks["store"] = "ok"
    except Exception as exc:
        checks["store"] = f"failing: {exc}"
    checks["launcher"] = "ok" if await services.launcher.ready() else "not ready"
    ready = all(v == "ok" for v in checks.values())
    body: dict[str, object] = {"status": "ready" if ready else "not ready", "checks": checks}
    # The local launcher's warm start, for information: without a zygote queries start cold, still ready.
    zygote = getattr(services.launcher, "zygote_status", None)
    if isinstance(zygote, str):
        body["zygote"] = zygote
    return JSONResponse(body, status_code=200 if ready else 503)


@health.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
