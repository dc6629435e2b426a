"""Every failure the client raises, one tree (``except PodqError`` catches them all)::

    PodqError
    ├── Unreachable          no answer from the controller: refused, DNS, a request timeout (from httpx's)
    ├── WaitTimeout          `wait(timeout=...)` passed with the query still queued or running
    ├── APIError             the controller answered with an error: .status_code, .error (ErrorInfo)
    │   ├── BadRequest       400 malformed, 413 too large, 422 a field (named in .error.details["errors"])
    │   ├── Unauthorized     401: no token, or a wrong one
    │   ├── NotFound         404: no such query or inspection
    │   ├── Conflict         409: cancel of a query that had already finished
    │   ├── QueueFull        429: the queue is full; .retry_after seconds
    │   └── ServerError      500 and other 5xx
    │       └── Unavailable  503: the store cannot write just now; .retry_after seconds
    └── QueryFailed          the query ran and failed, or was cancelled: .record, .error
        ├── InvalidQuery     validation: not parquet, unknown table, forbidden statement, URL refused
        ├── NetworkError     network: a dataset could not be fetched
        ├── SQLError         sql
        ├── QueryTimeout     timeout: the query's own deadline
        ├── OutOfMemory      memory
        ├── WorkerCrashed    crash
        ├── Evicted          evicted
        ├── Unschedulable    unschedulable
        ├── ImageError       image
        ├── Cancelled        cancelled
        └── InternalError    internal

`QUERY_ERRORS` maps each of the API's `error_type`s to its class; `is_retryable` is the one predicate
for "submitting again may well succeed".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from podq.client.records import ErrorInfo

if TYPE_CHECKING:
    import httpx

    from podq.client.records import Record

__all__ = [
    "QUERY_ERRORS",
    "APIError",
    "BadRequest",
    "Cancelled",
    "Conflict",
    "Evicted",
    "ImageError",
    "InternalError",
    "InvalidQuery",
    "NetworkError",
    "NotFound",
    "OutOfMemory",
    "PodqError",
    "QueryFailed",
    "QueryTimeout",
    "QueueFull",
    "SQLError",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "Unschedulable",
    "WaitTimeout",
    "WorkerCrashed",
    "is_retryable",
]


class PodqError(Exception):
    """Base of everything the client raises."""

    retryable = False


class Unreachable(PodqError):
    """The controller did not answer (connection refused, DNS, a request timeout)."""

    retryable = True

    def __init__(self, url: str, cause: Exception) -> None:
        super().__init__(f"cannot reach {url}: {cause or type(cause).__name__}")
        self.url = url


class WaitTimeout(PodqError):
    """A client-side wait ended before the query did; the query goes on (cancel it if unwanted)."""

    def __init__(self, record: Record, timeout: float) -> None:
        super().__init__(f"{record.operation} {record.id} still {record.status} after {timeout:g} s")
        self.record = record


class APIError(PodqError):
    """The controller refused the request; `error` is its body in the API's error shape."""

    def __init__(self, status_code: int, error: ErrorInfo, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status_code}: {error.error_type}: {error.message}")
        self.status_code = status_code
        self.error = error
        self.headers = headers or {}
        self.retryable = error.retryable


class BadRequest(APIError):
    """400, 413 or 422: the request itself is wrong; sending it again will not help."""


class Unauthorized(APIError):
    """401: auth is on and the token is missing or wrong."""


class NotFound(APIError):
    """404: no such query or inspection."""


class Conflict(APIError):
    """409: the query had already finished, so it cannot be cancelled."""


class _RetryAfter(APIError):
    @property
    def retry_after(self) -> float:
        """Seconds the controller asks to wait before submitting again."""
        try:
            return float(self.headers.get("retry-after", "1"))
        except ValueError:
            return 1.0


class QueueFull(_RetryAfter):
    """429: `PODQ_MAX_QUEUED` queries are waiting; nothing was stored."""


class ServerError(APIError):
    """A 5xx: the controller's own failure."""


class Unavailable(ServerError, _RetryAfter):
    """503: the store cannot write just now; nothing was stored."""


class QueryFailed(PodqError):
    """The query reached `failed` or `cancelled`; `error` says why, `record` is the whole record."""

    def __init__(self, record: Record) -> None:
        error = record.error or ErrorInfo("internal", f"{record.operation} {record.status} without an error")
        super().__init__(
            f"{record.operation} {record.id} {record.status}: {error.error_type}: {error.message}"
        )
        self.record = record
        self.error = error
        self.retryable = error.retryable


class InvalidQuery(QueryFailed):
    """validation: not parquet, unknown table, forbidden statement, dataset URL refused."""


class NetworkError(QueryFailed):
    """network: a dataset could not be fetched."""


class SQLError(QueryFailed):
    """sql: syntax error, missing column, other errors of the query."""


class QueryTimeout(QueryFailed):
    """timeout: a deadline passed: the run deadline (`details.phase` "run", its worker was killed) or the
    queue deadline ("queue", it never started running)."""


class OutOfMemory(QueryFailed):
    """memory: the worker went over its memory limit."""


class WorkerCrashed(QueryFailed):
    """crash: the worker died without a result."""


class Evicted(QueryFailed):
    """evicted: the worker's pod was evicted (Kubernetes)."""


class Unschedulable(QueryFailed):
    """unschedulable: no node could fit the pod (Kubernetes)."""


class ImageError(QueryFailed):
    """image: the worker image could not be pulled or started (Kubernetes)."""


class Cancelled(QueryFailed):
    """cancelled: cancelled by a DELETE."""


class InternalError(QueryFailed):
    """internal: podq's own failure."""


QUERY_ERRORS: dict[str, type[QueryFailed]] = {
    "validation": InvalidQuery,
    "network": NetworkError,
    "sql": SQLError,
    "timeout": QueryTimeout,
    "memory": OutOfMemory,
    "crash": WorkerCrashed,
    "evicted": Evicted,
    "unschedulable": Unschedulable,
    "image": ImageError,
    "cancelled": Cancelled,
    "internal": InternalError,
}


def query_failed(record: Record) -> QueryFailed:
    """The exception for a failed or cancelled record, by its error type."""
    error_type = record.error.error_type if record.error else "cancelled"
    return QUERY_ERRORS.get(error_type, QueryFailed)(record)


def api_error(response: httpx.Response) -> APIError:
    """The exception for a response the controller answered with an error status."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error_type" in body:
        error = ErrorInfo.from_json(body)
    else:
        text = response.text[:500] or response.reason_phrase
        error = ErrorInfo("internal", text, retryable=response.status_code >= 500)
    code = response.status_code
    cls: type[APIError]
    if code == 401:
        cls = Unauthorized
    elif code == 404:
        cls = NotFound
    elif code == 409:
        cls = Conflict
    elif code == 429:
        cls = QueueFull
    elif code == 503:
        cls = Unavailable
    elif code >= 500:
        cls = ServerError
    else:
        cls = BadRequest
    return cls(code, error, {k.lower(): v for k, v in response.headers.items()})


def is_retryable(exc: BaseException) -> bool:
    """True when submitting the same request again may succeed: the controller was unreachable, the
    queue was full, the store could not write, or the query failed with a retryable error type."""
    return isinstance(exc, PodqError) and bool(exc.retryable)
