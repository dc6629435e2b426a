"""The worker protocol: what goes into a worker and what comes out, identical for pods and subprocesses.

Input is one JSON request (see `WorkerRequest`), passed in the ``PODQ_REQUEST`` environment variable, or
read to its end from the file descriptor named in ``PODQ_REQUEST_FD`` (`REQUEST_FD_ENV`; the local
launcher's pipe, so that no request is ever in a process's /proc environ for another to read), or, with
``PODQ_REQUEST_STDIN=1`` (a warm pod), as one line on stdin once the worker has imported everything
(`worker_image.standby`).
The worker's memory limit in bytes is the request's ``limits.memory_bytes`` (`WorkerLimits`), else
``PODQ_MEMORY_LIMIT_BYTES`` (`MEMORY_LIMIT_ENV`: the local launcher's cap; a pod's ``limits.memory``
through the downward API, fixed when the container starts, so a warm pod resized since has the old one):
the worker stops the operation once its anonymous resident memory comes within a headroom of it (see
`worker_image.memwatch`) and reports a ``memory`` error, rather than wait for the kernel's OOM killer.

Output is exactly one envelope on the last line of stdout::

    PODQ-RESULT-V1 <length> <sha256-hex> <json>

``length`` is the byte length of the UTF-8 ``json`` and ``sha256`` its digest, so a log that was cut or
garbled on the way is reported as such and never parsed as a smaller result. The JSON is either
``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": {...}}`` where the error follows the
taxonomy below; either may carry ``"usage"``, what the worker measured of its run (worker_image/usage.py;
a controller accepts an envelope without it). A user error is also written, compactly (at most 4 KiB), to
the termination-message file so the launcher can type the error even when the logs are gone.

Exit codes: 0 success; `EXIT_USER_ERROR` when the envelope carries a user error (a ``memory`` error from
the watch above included); `EXIT_INTERNAL_ERROR` when the worker itself failed but could still say so.
`EXIT_NO_REQUEST` (nothing printed) when a worker waiting on stdin got no request.
Any other death is for the launcher to classify. SIGTERM ends the worker at once, whatever the operation
is doing (exit code 143, no envelope): the operation runs off the main thread, which only waits.

The error taxonomy (`ErrorType`), end to end::

    validation     bad request, not parquet, unknown table, forbidden statement
    network        HTTP 4xx/5xx, refused, DNS, fetch timeout, download too large
    sql            syntax error, missing column (the message names it)
    timeout        deadline exceeded
    memory         OOM-killed / memory limit
    crash          the worker died without a result
    evicted        the pod was evicted
    unschedulable  no node can fit the limits
    image          image pull / container config errors
    cancelled      cancelled by a user
    internal       podq's own bug

This module is imported by the controller too; it must stay free of heavy imports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "ENVELOPE_MARKER",
    "EXIT_INTERNAL_ERROR",
    "EXIT_NO_REQUEST",
    "EXIT_USER_ERROR",
    "MEMORY_LIMIT_ENV",
    "POLARS_ENV",
    "REQUEST_ENV",
    "REQUEST_FD_ENV",
    "REQUEST_STDIN_ENV",
    "TERMINATION_MESSAGE_ENV",
    "TERMINATION_MESSAGE_LIMIT",
    "TEST_HOOKS_ENV",
    "EnvelopeError",
    "ErrorInfo",
    "ErrorType",
    "WorkerError",
    "WorkerLimits",
    "compact_error",
    "decode_envelope",
    "encode_envelope",
    "error_info",
]

ENVELOPE_MARKER = "PODQ-RESULT-V1"
REQUEST_ENV = "PODQ_REQUEST"
REQUEST_FD_ENV = "PODQ_REQUEST_FD"
# "1": the worker warms up, then reads its request as one line on stdin (worker_image/standby.py).
REQUEST_STDIN_ENV = "PODQ_REQUEST_STDIN"
TERMINATION_MESSAGE_ENV = "PODQ_TERMINATION_MESSAGE_PATH"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096
# The worker's memory limit in bytes (absent: no watch of its own); see worker_image/memwatch.py.
MEMORY_LIMIT_ENV = "PODQ_MEMORY_LIMIT_BYTES"
# Set in every worker's environment: polars never spills to disk. polars 2 spills once its own estimate of
# what it holds passes 80% of the memory it detects (the cgroup's limit), into /var/tmp/polars-$USER: on a
# pod's read-only root that panics in a loop while the query holds its memory just under the worker's
# threshold (0.3 to 25 s seen at 512Mi), and on a laptop it writes outside the job's scratch directory.
# A budget of a thousand times that memory is never reached, even on a warm pod resized in place after
# polars read its limit at import; the memory watch (worker_image/memwatch.py) stops a query at its limit.
POLARS_ENV: Mapping[str, str] = {"POLARS_OOC_MEMORY_BUDGET_FRACTION": "1000"}
# The worker honours the request's "debug" section only when this is "1" in its environment.
TEST_HOOKS_ENV = "PODQ_ENABLE_TEST_HOOKS"

EXIT_USER_ERROR = 3
EXIT_INTERNAL_ERROR = 4
# A worker waiting on stdin got no request (end of input, or not one line of JSON object); nothing printed.
EXIT_NO_REQUEST = 5


class ErrorType(StrEnum):
    VALIDATION = "validation"
    NETWORK = "network"
    SQL = "sql"
    TIMEOUT = "timeout"
    MEMORY = "memory"
    CRASH = "crash"
    EVICTED = "evicted"
    UNSCHEDULABLE = "unschedulable"
    IMAGE = "image"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


# Errors a client may simply submit again and expect a different outcome.
_RETRYABLE = frozenset(
    {ErrorType.NETWORK, ErrorType.EVICTED, ErrorType.UNSCHEDULABLE, ErrorType.CRASH, ErrorType.INTERNAL}
)


class ErrorInfo(TypedDict):
    error_type: str
    message: str
    details: dict[str, Any]
    retryable: bool


def error_info(
    error_type: ErrorType, message: str, details: dict[str, Any] | None = None, retryable: bool | None = None
) -> ErrorInfo:
    return {
        "error_type": error_type.value,
        "message": message,
        "details": details or {},
        "retryable": error_type in _RETRYABLE if retryable is None else retryable,
    }


class WorkerError(Exception):
    """A failure the worker reports in its envelope; raised anywhere below the worker's entry point."""

    def __init__(
        self, error_type: ErrorType, message: str, *, retryable: bool | None = None, **details: Any
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.retryable = retryable
        self.details = details

    def info(self) -> ErrorInfo:
        return error_info(self.error_type, self.message, self.details, self.retryable)


class DatasetRef(TypedDict):
    url: str
    table_name: str


class FetchOptions(TypedDict):
    connect_timeout_seconds: float
    read_timeout_seconds: float
    total_timeout_seconds: float
    max_download_bytes: int
    # The address policy as CIDR lists (worker_image/netpolicy.py); absent means empty, the strictest.
    allowed_networks: NotRequired[list[str]]
    blocked_networks: NotRequired[list[str]]


class WorkerLimits(TypedDict):
    # The memory limit the worker watches (memwatch.py); CPU is not here: polars fixes its thread count
    # (POLARS_MAX_THREADS) when it is imported, before any request.
    memory_bytes: int


class WorkerRequest(TypedDict):
    operation: Literal["query", "inspect"]
    fetch: FetchOptions
    # The query's limits, as the launcher enforces them; absent: the environment's (MEMORY_LIMIT_ENV).
    limits: NotRequired[WorkerLimits]
    # operation "query"
    sql: NotRequired[str]
    datasets: NotRequired[list[DatasetRef]]
    max_rows: NotRequired[int]
    # Bytes of result JSON at most; rows beyond it are cut (`truncated_by: "bytes"`).
    max_result_bytes: NotRequired[int]
    # operation "inspect"
    url: NotRequired[str]
    # test hooks, honoured only with PODQ_ENABLE_TEST_HOOKS=1: {"crash": "exit"|"segv"|"abort",
    # "sleep_seconds": float, "allocate_mb": int, "stdout_noise": str}
    debug: NotRequired[dict[str, Any]]


class EnvelopeError(Exception):
    """The worker's output holds no usable envelope: missing, cut short or garbled."""


def encode_envelope(payload: dict[str, Any]) -> str:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    raw = body.encode()
    return f"{ENVELOPE_MARKER} {len(raw)} {hashlib.sha256(raw).hexdigest()} {body}"


def decode_envelope(output: str) -> dict[str, Any]:
    """Find and verify the envelope in a worker's stdout (or pod log). Raises `EnvelopeError`."""
    lines = output.rstrip("\n").split("\n")
    for line in reversed(lines):
        if line.startswith(ENVELOPE_MARKER + " "):
            return _verify(line)
    raise EnvelopeError("no result envelope in the worker output")


def _verify(line: str) -> dict[str, Any]:
    parts = line.split(" ", 3)
    if len(parts) != 4:
        raise EnvelopeError("result envelope is cut short")
    _, length, digest, body = parts
    raw = body.encode()
    if not length.isdigit() or int(length) != len(raw):
        raise EnvelopeError(f"result envelope length mismatch: header says {length}, got {len(raw)} bytes")
    if hashlib.sha256(raw).hexdigest() != digest:
        raise EnvelopeError("result envelope checksum mismatch")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise EnvelopeError(f"result envelope is not JSON: {exc}") from exc
    if not isinstance(payload, dict) or "ok" not in payload:
        raise EnvelopeError("result envelope has no 'ok' field")
    return payload


def compact_error(info: ErrorInfo, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """The error as JSON of at most `limit` bytes, for the termination-message file."""
    text = json.dumps(info, separators=(",", ":"), default=str)
    if len(text.encode()) <= limit:
        return text
    slim: ErrorInfo = {**info, "details": {"truncated": True}}
    message = info["message"]
    while True:
        slim["message"] = message
        text = json.dumps(slim, separators=(",", ":"))
        if len(text.encode()) <= limit:
            return text
        message = message[: len(message) // 2]
