"""What every launcher hands a worker (its request, its thread count) and reads back from it (its envelope,
its termination message), the same for a process and a pod.

A launcher knows how its worker ended (an exit status, a signal, a pod's fate); this module only judges
the worker's own words against that end. An envelope is trusted only when the exit agrees with it: a
result with exit 0, an error with `EXIT_USER_ERROR` or `EXIT_INTERNAL_ERROR`. A termination message is
trusted only when it is a valid `ErrorInfo` JSON, never as free text.
"""

from __future__ import annotations

import json
import logging
import math
import signal
from collections.abc import Mapping
from typing import Any

from controller.launchers.base import Limits, Outcome
from controller.launchers.usage import from_worker
from worker_image.protocol import (
    EXIT_INTERNAL_ERROR,
    EXIT_USER_ERROR,
    EnvelopeError,
    ErrorInfo,
    ErrorType,
    decode_envelope,
    error_info,
)

__all__ = [
    "PROTOCOL_ERROR_CODES",
    "as_error_info",
    "encode_request",
    "envelope_outcome",
    "log_excerpt",
    "polars_threads",
    "signal_name",
    "termination_error",
    "with_limits",
]

PROTOCOL_ERROR_CODES = (EXIT_USER_ERROR, EXIT_INTERNAL_ERROR)
EXCERPT_LINES = 20
EXCERPT_CHARS = 2000
_ERROR_TYPES = frozenset(item.value for item in ErrorType)

log = logging.getLogger(__name__)


def encode_request(request: Mapping[str, Any]) -> str:
    """The request as the worker gets it: compact, and UTF-8 rather than escapes (an env var is bounded)."""
    return json.dumps(request, ensure_ascii=False, separators=(",", ":"))


def with_limits(request: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    """The request with the memory limit the launcher enforces, which the worker watches its memory against
    rather than its environment's (worker_image/memwatch.py: a warm pod resized after its start)."""
    return {**request, "limits": {"memory_bytes": limits.memory_bytes}}


def polars_threads(cpu_millicores: int) -> int:
    """polars' thread pool sized to the CPU limit, in whole cores."""
    return max(1, math.ceil(cpu_millicores / 1000))


def envelope_outcome(output: str | None, *, exit_code: int | None, death: str) -> Outcome:
    """The envelope's outcome, if the exit agrees with it; `EnvelopeError` when it is missing, garbled or
    contradicted. `exit_code` is None or negative when the worker did not exit by itself; `death` says how it
    ended ("exited with code 1"), for the error."""
    if output is None:
        raise EnvelopeError("no result envelope in the worker output")
    payload = decode_envelope(output)
    usage, dropped = from_worker(payload.get("usage"))
    if dropped:
        log.warning("the worker's usage report has invalid fields, dropped: %s", ", ".join(dropped))
    if payload["ok"] is True:
        result = payload.get("result")
        if not isinstance(result, dict):
            raise EnvelopeError("the result envelope holds no result")
        if exit_code == 0:
            return Outcome(result=result, usage=usage)
        raise EnvelopeError(f"the worker wrote a result but {death}")
    info = as_error_info(payload.get("error"))
    if info is None:
        raise EnvelopeError("the error envelope holds no valid error")
    if exit_code in PROTOCOL_ERROR_CODES:
        return Outcome(error=info, usage=usage)
    raise EnvelopeError(f"the worker wrote an error but {death}")


def termination_error(text: str | None) -> ErrorInfo | None:
    """The error in a termination message, if it is one the worker wrote (and not, say, a log tail)."""
    if not text:
        return None
    try:
        return as_error_info(json.loads(text))
    except ValueError:
        return None


def as_error_info(value: object) -> ErrorInfo | None:
    if not isinstance(value, dict) or value.get("error_type") not in _ERROR_TYPES:
        return None
    details = value.get("details")
    return error_info(
        ErrorType(value["error_type"]),
        str(value.get("message", "")),
        details if isinstance(details, dict) else {},
        value.get("retryable") if isinstance(value.get("retryable"), bool) else None,
    )


def log_excerpt(tail: str) -> str:
    """The last lines of a worker's output (stderr, a pod log), bounded for error details and logs."""
    lines = tail.rstrip("\n").split("\n")[-EXCERPT_LINES:]
    return "\n".join(lines)[-EXCERPT_CHARS:]


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
