"""The API's records as typed, frozen values, decoded from the controller's JSON.

Each keeps the JSON it came from in `raw` (what `podq --output json` prints), so a field the controller
adds later is never lost on the way through the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Operation = Literal["query", "inspect"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class Column:
    name: str
    type: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Column:
        return cls(name=data["name"], type=data["type"])


@dataclass(frozen=True)
class Dataset:
    """A parquet file at `url`, registered as table `table_name`."""

    table_name: str
    url: str

    def to_json(self) -> dict[str, str]:
        return {"table_name": self.table_name, "url": self.url}


@dataclass(frozen=True)
class Limits:
    cpu: str
    memory: str
    timeout_seconds: float
    # None: the query may wait to start as long as it takes.
    queue_timeout_seconds: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Limits:
        queue_timeout = data.get("queue_timeout_seconds")
        return cls(
            data["cpu"],
            data["memory"],
            float(data["timeout_seconds"]),
            None if queue_timeout is None else float(queue_timeout),
        )


@dataclass(frozen=True)
class QueryResult:
    """Rows as JSON values (README, "Result values"); `total_rows` counts the rows before any cut."""

    columns: list[Column]
    rows: list[list[Any]]
    total_rows: int
    truncated: bool
    truncated_by: Literal["rows", "bytes"] | None


@dataclass(frozen=True)
class ResultFile:
    """A succeeded query's result as downloaded (`GET /v1/queries/{id}/result`): `content` in `format`,
    and what the caps cut (from the response's headers; Arrow and Parquet bodies cannot say it).

    Read an Arrow stream with ``polars.read_ipc_stream(f.content)`` or ``pyarrow.ipc.open_stream``, a
    Parquet file with ``polars.read_parquet(io.BytesIO(f.content))``; this package needs neither.
    """

    format: Literal["json", "csv", "arrow", "parquet"]
    media_type: str
    content: bytes
    total_rows: int
    returned_rows: int
    truncated: bool
    truncated_by: Literal["rows", "bytes"] | None


@dataclass(frozen=True)
class InspectionResult:
    valid: bool
    columns: list[Column]
    row_count: int


@dataclass(frozen=True)
class ErrorInfo:
    """The API's one error shape: a failed query's `error`, and the body of every refused request."""

    error_type: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    retryable: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorInfo:
        return cls(
            error_type=str(data.get("error_type", "internal")),
            message=str(data.get("message", "")),
            details=dict(data.get("details") or {}),
            retryable=bool(data.get("retryable", False)),
        )


@dataclass(frozen=True)
class Attempt:
    """One start of a worker for the query: its limits, where it ran and how it ended (`status` "running"
    while it runs; "interrupted" when its controller stopped under it)."""

    number: int
    status: Literal["running", "succeeded", "failed", "cancelled", "interrupted"]
    limits: Limits
    placement: dict[str, Any]
    started_at: float
    finished_at: float | None
    error: ErrorInfo | None
    # What it used (README, "A record": peak memory, CPU seconds, phases, datasets); empty when unknown.
    usage: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attempt:
        return cls(
            number=data["number"],
            status=data["status"],
            limits=Limits.from_json(data["limits"]),
            placement=dict(data.get("placement") or {}),
            started_at=data["started_at"],
            finished_at=data.get("finished_at"),
            error=ErrorInfo.from_json(data["error"]) if data.get("error") else None,
            usage=dict(data.get("usage") or {}),
        )


def _result(operation: str, data: dict[str, Any] | None) -> QueryResult | InspectionResult | None:
    if data is None:
        return None
    columns = [Column.from_json(c) for c in data["columns"]]
    if operation == "inspect":
        return InspectionResult(valid=data["valid"], columns=columns, row_count=data["row_count"])
    return QueryResult(
        columns=columns,
        rows=data["rows"],
        total_rows=data["total_rows"],
        truncated=data["truncated"],
        truncated_by=data.get("truncated_by"),
    )


@dataclass(frozen=True)
class Record:
    """A query or an inspection as the controller holds it (README, "A record")."""

    id: str
    operation: Operation
    status: Status
    limits: Limits
    # Every attempt, oldest first; `result` and `error` are the last one's.
    attempts: list[Attempt]
    # The retry policy as applied (`{max_attempts, on, memory_factor, max_memory_bytes}`), None for none.
    retry: dict[str, Any] | None
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    sql: str | None
    datasets: list[Dataset]
    url: str | None
    max_rows: int | None
    result: QueryResult | InspectionResult | None
    error: ErrorInfo | None
    placement: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)
    # The last attempt's usage; None before any.
    usage: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        return cls(
            id=data["id"],
            operation=data["operation"],
            status=data["status"],
            limits=Limits.from_json(data["limits"]),
            attempts=[Attempt.from_json(a) for a in data.get("attempts") or []],
            retry=data.get("retry"),
            submitted_at=data["submitted_at"],
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            sql=data.get("sql"),
            datasets=[Dataset(d["table_name"], d["url"]) for d in data.get("datasets") or []],
            url=data.get("url"),
            max_rows=data.get("max_rows"),
            result=_result(data["operation"], data.get("result")),
            error=ErrorInfo.from_json(data["error"]) if data.get("error") else None,
            placement=dict(data.get("placement") or {}),
            raw=data,
            usage=data.get("usage"),
        )


@dataclass(frozen=True)
class Page:
    """One page of `list`; pass `next_cursor` back for the next, older page (None: this was the last)."""

    items: list[Record]
    next_cursor: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Page:
        return cls([Record.from_json(r) for r in data["items"]], data.get("next_cursor"))


@dataclass(frozen=True)
class Readiness:
    """`/readyz`: `ready` with each check's verdict (`store`, `launcher`)."""

    ready: bool
    checks: dict[str, str]
