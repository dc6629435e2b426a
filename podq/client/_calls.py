"""What the sync and async clients share: each endpoint as a `Call` (the request and how to read its
answer), so the two clients differ only in how they send it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import httpx

from podq.client.errors import api_error
from podq.client.records import Dataset, Page, Readiness, Record, ResultFile

# The controller holds a long poll for at most this long (controller/http/deps.py, MAX_WAIT_SECONDS).
MAX_SERVER_WAIT = 300.0
# One long poll of `wait()`: short enough that a lost connection is noticed, long enough to be cheap.
POLL_SECONDS = 60.0
# On top of a long poll's own wait, how long the answer may take to arrive.
POLL_SLACK_SECONDS = 30.0

Datasets = Mapping[str, str] | Sequence[Dataset]
ResultFormat = Literal["json", "csv", "arrow", "parquet"]
RESULT_FORMATS: tuple[ResultFormat, ...] = ("json", "csv", "arrow", "parquet")


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    decode: Callable[[httpx.Response], Any]
    params: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    # Ok to send again after a transport error: reads, and submissions (which carry an Idempotency-Key).
    repeatable: bool = True
    ok: tuple[int, ...] = (200, 202)


def _json(response: httpx.Response) -> Any:
    return response.json()


def _record(response: httpx.Response) -> Record:
    return Record.from_json(response.json())


def _page(response: httpx.Response) -> Page:
    return Page.from_json(response.json())


def _readiness(response: httpx.Response) -> Readiness:
    body = response.json()
    return Readiness(ready=response.status_code == 200, checks=dict(body.get("checks") or {}))


def check(call: Call, response: httpx.Response) -> Any:
    if response.status_code not in call.ok:
        raise api_error(response)
    return call.decode(response)


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _limits(
    cpu: str | None, memory: str | None, timeout_seconds: float | None, queue_timeout_seconds: float | None
) -> dict[str, Any] | None:
    given = (
        ("cpu", cpu),
        ("memory", memory),
        ("timeout_seconds", timeout_seconds),
        ("queue_timeout_seconds", queue_timeout_seconds),
    )
    limits = {k: v for k, v in given if v is not None}
    return limits or None


def _datasets(datasets: Datasets | None) -> list[dict[str, str]]:
    if datasets is None:
        return []
    if isinstance(datasets, Mapping):
        return [{"table_name": name, "url": url} for name, url in datasets.items()]
    return [d.to_json() for d in datasets]


def _key(idempotency_key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}


def submit(
    sql: str,
    datasets: Datasets | None,
    *,
    cpu: str | None,
    memory: str | None,
    timeout_seconds: float | None,
    queue_timeout_seconds: float | None,
    max_rows: int | None,
    retry: Mapping[str, Any] | None,
    idempotency_key: str | None,
    debug: dict[str, Any] | None,
) -> Call:
    body: dict[str, Any] = {"sql": sql, "datasets": _datasets(datasets)}
    if (limits := _limits(cpu, memory, timeout_seconds, queue_timeout_seconds)) is not None:
        body["limits"] = limits
    if max_rows is not None:
        body["max_rows"] = max_rows
    if retry is not None:
        body["retry"] = dict(retry)
    if debug is not None:
        body["debug"] = debug
    return Call("POST", "/v1/queries", _record, body=body, headers=_key(idempotency_key), ok=(202,))


def inspect(
    url: str,
    *,
    cpu: str | None,
    memory: str | None,
    timeout_seconds: float | None,
    queue_timeout_seconds: float | None,
    idempotency_key: str | None,
    debug: dict[str, Any] | None,
) -> Call:
    body: dict[str, Any] = {"url": url}
    if (limits := _limits(cpu, memory, timeout_seconds, queue_timeout_seconds)) is not None:
        body["limits"] = limits
    if debug is not None:
        body["debug"] = debug
    return Call("POST", "/v1/inspections", _record, body=body, headers=_key(idempotency_key), ok=(202,))


def _path(operation: str, record_id: str) -> str:
    collection = "inspections" if operation == "inspect" else "queries"
    return f"/v1/{collection}/{record_id}"


def get(operation: str, record_id: str, wait: float | None) -> Call:
    if wait is None or wait <= 0:
        return Call("GET", _path(operation, record_id), _record)
    wait = min(wait, MAX_SERVER_WAIT)
    return Call(
        "GET", _path(operation, record_id), _record, params={"wait": wait}, timeout=wait + POLL_SLACK_SECONDS
    )


def result(query_id: str, format: ResultFormat) -> Call:
    if format not in RESULT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(RESULT_FORMATS)}, not {format!r}")

    def decode(response: httpx.Response) -> ResultFile:
        headers = response.headers
        truncated_by = headers.get("podq-truncated-by")
        return ResultFile(
            format=format,
            media_type=headers.get("content-type", ""),
            content=response.content,
            total_rows=int(headers["podq-total-rows"]),
            returned_rows=int(headers["podq-returned-rows"]),
            truncated=headers.get("podq-truncated") == "true",
            truncated_by=cast(Literal["rows", "bytes"] | None, truncated_by),
        )

    return Call("GET", f"{_path('query', query_id)}/result", decode, params={"format": format}, ok=(200,))


def list_queries(status: str | None, limit: int | None, cursor: str | None) -> Call:
    params = {k: v for k, v in (("status", status), ("limit", limit), ("cursor", cursor)) if v is not None}
    return Call("GET", "/v1/queries", _page, params=params)


def cancel(record_id: str) -> Call:
    # DELETE is idempotent here: a second cancel of a cancelled query answers 200 again.
    return Call("DELETE", _path("query", record_id), _record)


def healthz() -> Call:
    return Call("GET", "/healthz", _json)


def readyz() -> Call:
    return Call("GET", "/readyz", _readiness, ok=(200, 503))


def next_poll(remaining: float | None) -> float:
    """Seconds the next long poll of a `wait` asks for."""
    return POLL_SECONDS if remaining is None else max(0.0, min(POLL_SECONDS, remaining))
