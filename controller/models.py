"""The HTTP API's request and response bodies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.quantity import QuantityError, parse_cpu_millicores, parse_memory_bytes

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
# The error types a retry policy may name: the others fail the same way again (sql, validation, a run
# timeout, image) or are not the query's (cancelled, internal).
RetryOn = Literal["memory", "network", "crash", "evicted", "unschedulable"]
RETRY_TYPES: tuple[RetryOn, ...] = get_args(RetryOn)
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

TableName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
        description="A plain SQL identifier: letters, digits and underscores, not starting with a digit.",
        examples=["trips"],
    ),
]


def _http_url(value: str) -> str:
    scheme = value.split(":", 1)[0].lower() if ":" in value else ""
    if scheme not in ("http", "https"):
        raise ValueError("only http and https dataset URLs are accepted")
    return value


def _quantity(parse: Callable[[str], int], value: str | None) -> str | None:
    """Check a Kubernetes quantity, keeping the text as the user wrote it."""
    if value is not None:
        try:
            parse(value)
        except QuantityError as exc:
            raise ValueError(str(exc)) from None
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetIn(_Strict):
    url: str = Field(max_length=4096, examples=["https://data.example.com/trips.parquet"])
    table_name: TableName

    _check_url = field_validator("url")(_http_url)


class LimitsIn(_Strict):
    cpu: str | None = Field(None, description="Kubernetes CPU quantity, e.g. '500m' or '1'.")
    memory: str | None = Field(None, description="Kubernetes memory quantity, e.g. '512Mi'.")
    timeout_seconds: float | None = Field(
        None,
        gt=0,
        description="Run deadline in seconds, from the moment the worker runs (the pod's "
        "`activeDeadlineSeconds` on Kubernetes); past it the query fails as `timeout`, phase `run`.",
    )
    queue_timeout_seconds: float | None = Field(
        None,
        gt=0,
        description="Queue deadline in seconds, from submission until the worker runs: time queued, plus "
        "on Kubernetes the pod's Pending time (scheduling, image and sandbox start). Past it the query "
        "fails as `timeout`, phase `queue` (retryable), and never starts; a pending pod is deleted.",
    )

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str | None) -> str | None:
        return _quantity(parse_cpu_millicores, value)

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        return _quantity(parse_memory_bytes, value)


class RetryIn(_Strict):
    max_attempts: int | None = Field(
        None, ge=1, description="Attempts in all, the first included (at most `PODQ_MAX_ATTEMPTS`)."
    )
    on: list[RetryOn] | None = Field(None, description="The error types that start another attempt.")
    memory_factor: float | None = Field(
        None,
        gt=1,
        description="On `memory`, the next attempt's memory limit is max(limit * factor, observed peak * "
        "1.25), rounded up to a whole MiB.",
    )
    max_memory: str | None = Field(
        None,
        description="The most memory a retry may give (Kubernetes quantity, at least `limits.memory`, at "
        "most the server's maximum, which is the default).",
    )

    @field_validator("max_memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        return _quantity(parse_memory_bytes, value)


class QueryIn(_Strict):
    sql: str = Field(min_length=1, examples=["SELECT name, value FROM t WHERE value > 2"])
    datasets: list[DatasetIn] = Field(default_factory=list)
    limits: LimitsIn | None = None
    max_rows: int | None = Field(None, ge=1, description="Rows returned at most; total_rows tells the rest.")
    retry: RetryIn | None = Field(None, description="When to run the query again after a failed attempt.")
    debug: dict[str, Any] | None = Field(None, description="Test hooks; refused unless enabled in settings.")

    @field_validator("sql")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("sql is empty")
        return value

    @model_validator(mode="after")
    def _unique_tables(self) -> QueryIn:
        seen: set[str] = set()
        for dataset in self.datasets:
            key = dataset.table_name.lower()
            if key in seen:
                raise ValueError(f"duplicate table_name {dataset.table_name!r}")
            seen.add(key)
        return self


class InspectionIn(_Strict):
    url: str = Field(max_length=4096, examples=["https://data.example.com/trips.parquet"])
    limits: LimitsIn | None = None
    debug: dict[str, Any] | None = None

    _check_url = field_validator("url")(_http_url)


class Column(BaseModel):
    name: str
    type: str


class QueryResult(BaseModel):
    columns: list[Column]
    rows: list[list[Any]]
    total_rows: int
    truncated: bool
    truncated_by: Literal["rows", "bytes"] | None = Field(
        None, description="Which cap cut the rows: `max_rows`, or the server's result size in bytes."
    )


class InspectionResult(BaseModel):
    valid: bool
    columns: list[Column]
    row_count: int


class ErrorOut(BaseModel):
    error_type: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)
    retryable: bool = False


class LimitsOut(BaseModel):
    cpu: str
    memory: str
    timeout_seconds: float
    queue_timeout_seconds: float | None = None


class RetryOut(BaseModel):
    max_attempts: int
    on: list[RetryOn]
    memory_factor: float
    max_memory_bytes: int = Field(description="The most memory a retry may give, in bytes.")


class PhasesOut(BaseModel):
    queued: float | None = Field(
        None,
        description="Waiting in the queue: from submission (a retry: the previous attempt's end) to start.",
    )
    starting: float | None = Field(
        None,
        description="Starting the worker: a local process's spawn; on Kubernetes pod creation to the "
        "container's start (scheduling, image, sandbox). Null for a warm pool pod.",
    )
    fetch: float | None = Field(None, description="Downloading the datasets and checking their footers.")
    execute: float | None = Field(None, description="Running the query (polars).")
    encode: float | None = Field(None, description="Encoding the result (JSON, Arrow, Parquet).")


class DatasetUsageOut(BaseModel):
    table_name: str
    bytes_fetched: int = Field(description="Bytes downloaded (decoded).")
    rows: int = Field(description="Rows, as the parquet footer declares them.")
    uncompressed_bytes: int = Field(description="The column chunks' uncompressed size, from the footer.")


class UsageOut(BaseModel):
    peak_memory_bytes: int | None = Field(None, description="The attempt's peak memory, in bytes.")
    peak_memory_source: Literal["worker", "cgroup", "limit"] | None = Field(
        None,
        description="`worker`: the worker's own peak of anonymous resident memory (what a memory limit is "
        "about; read at each phase's bounds and every 20 ms); `cgroup`: the local job cgroup's "
        "peak (the worker's unknown); `limit`: it failed as `memory` without a measured peak (OOM-killed): "
        "it reached its limit.",
    )
    peak_resident_bytes: int | None = Field(
        None,
        description="The worker's resident high-water mark (getrusage): never misses a peak, but counts its "
        "mapped code (~90 MiB) too.",
    )
    cgroup_peak_memory_bytes: int | None = Field(
        None, description="The local job cgroup's own peak (local launcher, cgroup enforcement)."
    )
    cpu_seconds: float | None = Field(
        None,
        description="User + system CPU time: the local job cgroup's when there is one, else the worker's.",
    )
    phases: PhasesOut = Field(default_factory=PhasesOut, description="Wall time by phase, in seconds.")
    datasets: list[DatasetUsageOut] = Field(
        default_factory=list, description="Per dataset: bytes fetched, and rows and size from its footer."
    )


class AttemptOut(BaseModel):
    number: int = Field(description="1 for the first attempt, counting every start of a worker.")
    status: Literal["running", "succeeded", "failed", "cancelled", "interrupted"] = Field(
        description="`interrupted`: its controller stopped or died while it ran (`error` says which), and "
        "the query was queued again or failed as `internal`."
    )
    limits: LimitsOut = Field(description="The limits this attempt ran with.")
    placement: dict[str, Any] = Field(
        default_factory=dict, description="Where it ran, as the record's `placement`; empty if unknown."
    )
    started_at: float
    finished_at: float | None = None
    error: ErrorOut | None = None
    usage: UsageOut = Field(
        default_factory=UsageOut,
        description="What it used; fields are null when unknown (a failure records what was known).",
    )


class RecordOut(BaseModel):
    id: str
    operation: Literal["query", "inspect"]
    status: Status
    sql: str | None = None
    datasets: list[DatasetIn] | None = None
    url: str | None = None
    max_rows: int | None = None
    limits: LimitsOut = Field(description="The limits of the last attempt (of the next, while queued).")
    retry: RetryOut | None = Field(None, description="The retry policy the query runs under (queries only).")
    result: QueryResult | InspectionResult | None = None
    error: ErrorOut | None = None
    attempts: list[AttemptOut] = Field(
        description="Every attempt at the query, oldest first (the newest 20 are kept); `result` and "
        "`error` are the last one's."
    )
    usage: UsageOut | None = Field(None, description="The last attempt's usage; null before any attempt.")
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    placement: dict[str, Any] = Field(
        default_factory=dict, description="Where it ran: {'kind': 'local', 'pid': ...} or the pod."
    )


class RecordPage(BaseModel):
    items: list[RecordOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` to get the next, older page.")
