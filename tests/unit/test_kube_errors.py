"""HTTP statuses, Status objects, watch lines and the official client's exceptions into podq's errors
(client/errors.py, client/api.py)."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import pytest
import urllib3

from controller.launchers.kubernetes.client.api import WatchEvent, decode_watch_line
from controller.launchers.kubernetes.client.errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    KubeError,
    NotFound,
    ServerError,
    TooManyRequests,
    Unauthorized,
    Unreachable,
    api_error,
    is_transient,
    kube_error,
)

pytestmark = pytest.mark.unit


def status(code: int, reason: str, message: str = "m", **details: Any) -> dict[str, Any]:
    """A metav1.Status as the API server sends it."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
    return body | {"reason": reason, "message": message} | ({"details": details} if details else {})


class Mapped(NamedTuple):
    status: int | None
    body: dict[str, Any] | None
    retry_after_header: str | None
    error: type[KubeError]
    reason: str
    retry_after: float | None = None


@pytest.mark.parametrize(
    "case",
    [
        Mapped(401, status(401, "Unauthorized"), None, Unauthorized, "Unauthorized"),
        Mapped(403, status(403, "Forbidden"), None, Forbidden, "Forbidden"),
        Mapped(404, status(404, "NotFound"), None, NotFound, "NotFound"),
        Mapped(409, status(409, "AlreadyExists"), None, AlreadyExists, "AlreadyExists"),
        Mapped(409, status(409, "Conflict"), None, Conflict, "Conflict"),
        Mapped(410, status(410, "Expired"), None, Gone, "Expired"),
        Mapped(422, status(422, "Invalid"), None, Invalid, "Invalid"),
        Mapped(
            429,
            status(429, "TooManyRequests", retryAfterSeconds=3),
            "7",
            TooManyRequests,
            "TooManyRequests",
            3,
        ),
        Mapped(429, None, "7", TooManyRequests, "TooManyRequests", 7),
        Mapped(429, None, "Wed, 21 Oct 2015 07:28:00 GMT", TooManyRequests, "TooManyRequests", None),
        Mapped(500, status(500, "InternalError"), None, ServerError, "InternalError"),
        Mapped(503, None, "1", ServerError, "InternalError"),
        Mapped(504, status(504, "Timeout"), None, ServerError, "Timeout"),
        Mapped(400, status(400, "BadRequest"), None, KubeError, "BadRequest"),
        Mapped(418, None, None, KubeError, "HTTP418"),
        Mapped(None, status(0, ""), None, KubeError, "Unknown"),
    ],
    ids=[
        "401",
        "403",
        "404",
        "409-already-exists",
        "409-conflict",
        "410",
        "422",
        "429-status-details-win",
        "429-header",
        "429-http-date-ignored",
        "500",
        "503-no-body",
        "504-timeout",
        "400-other",
        "unknown-status-no-body",
        "watch-error-without-code",
    ],
)
def test_api_error(case: Mapped) -> None:
    error = api_error(case.status, case.body, retry_after=case.retry_after_header)
    assert type(error) is case.error
    assert (error.status, error.reason) == (case.status, case.reason)
    if case.body:
        assert error.message == "m" and "m" in str(error)
    if isinstance(error, TooManyRequests):
        assert error.retry_after == case.retry_after


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (TooManyRequests(429, "TooManyRequests", "slow down"), True),
        (ServerError(500, "InternalError", ""), True),
        (ServerError(504, "Timeout", ""), True),
        (Unreachable("connection refused"), True),
        (Conflict(409, "Conflict", "resourcequotas was modified"), True),
        (AlreadyExists(409, "AlreadyExists", ""), False),
        (NotFound(404, "NotFound", ""), False),
        (Gone(410, "Expired", ""), False),
        (Forbidden(403, "Forbidden", ""), False),
        (Unauthorized(401, "Unauthorized", ""), False),
        (Invalid(422, "Invalid", ""), False),
        (KubeError(400, "BadRequest", ""), False),
        (ConnectionError("not ours"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_is_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def line(kind: str, obj: object) -> str:
    return json.dumps({"type": kind, "object": obj})


POD = {"metadata": {"name": "p", "resourceVersion": "7"}}
BOOKMARK = {"kind": "Pod", "metadata": {"resourceVersion": "9"}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (line("ADDED", POD), WatchEvent("ADDED", POD)),
        (line("MODIFIED", POD), WatchEvent("MODIFIED", POD)),
        (line("DELETED", POD), WatchEvent("DELETED", POD)),
        (line("BOOKMARK", BOOKMARK), WatchEvent("BOOKMARK", BOOKMARK)),
        (line("SURPRISE", POD), None),
        ("   ", None),
    ],
    ids=["added", "modified", "deleted", "bookmark", "unknown-type-skipped", "blank"],
)
def test_decode_watch_line(raw: str, expected: WatchEvent | None) -> None:
    assert decode_watch_line(raw) == expected


@pytest.mark.parametrize(
    ("raw", "error", "reason"),
    [
        (line("ERROR", status(410, "Expired", "too old resource version: 1 (880)")), Gone, "Expired"),
        (line("ERROR", status(500, "InternalError")), ServerError, "InternalError"),
        (line("ERROR", {"message": "no code"}), KubeError, "Unknown"),
        ('{"type": "ADDED", "obj', KubeError, "InvalidWatchEvent"),
        ('{"type": "ADDED"}', KubeError, "InvalidWatchEvent"),
        ('["ADDED"]', KubeError, "InvalidWatchEvent"),
    ],
    ids=["error-410-gone", "error-500", "error-without-code", "truncated", "no-object", "not-an-object"],
)
def test_decode_watch_line_raises(raw: str, error: type[KubeError], reason: str) -> None:
    with pytest.raises(KubeError) as raised:
        decode_watch_line(raw)
    assert type(raised.value) is error and raised.value.reason == reason


class Raised(NamedTuple):
    status: int
    body: bytes | None
    error: type[KubeError]
    reason: str


def _api_exception(case: Raised) -> Exception:
    """What the official client raises for an HTTP error status (reached through the adapter module)."""
    from controller.launchers.kubernetes.client import errors

    body = None if case.body is None else case.body.decode()
    exception: Exception = errors.ApiException(status=case.status, reason="X", body=body)
    return exception


@pytest.mark.parametrize(
    "case",
    [
        Raised(409, b'{"reason": "AlreadyExists", "message": "exists"}', AlreadyExists, "AlreadyExists"),
        Raised(410, b'{"reason": "Expired", "message": "too old"}', Gone, "Expired"),
        Raised(403, b'{"reason": "Forbidden"}', Forbidden, "Forbidden"),
        Raised(502, b"<html>bad gateway</html>", ServerError, "InternalError"),
        Raised(404, None, NotFound, "HTTP404"),
    ],
    ids=["409-already-exists", "410-gone", "403", "502-html", "404-no-body"],
)  # fmt: skip
def test_kube_error_wraps_the_official_clients_api_exception(case: Raised) -> None:
    raised = _api_exception(case)
    error = kube_error(raised, "GET /x")
    assert isinstance(error, KubeError) and error.__cause__ is raised
    assert (type(error), error.status, error.reason) == (case.error, case.status, case.reason)


def test_kube_error_makes_transport_failures_unreachable_and_passes_bugs_on() -> None:
    dropped = kube_error(urllib3.exceptions.ProtocolError("Connection aborted."), "WATCH /pods")
    assert type(dropped) is Unreachable and is_transient(dropped) and "WATCH /pods" in str(dropped)
    assert type(kube_error(ConnectionResetError(), "GET /x")) is Unreachable
    bug = ZeroDivisionError()
    assert kube_error(bug, "GET /x") is bug
