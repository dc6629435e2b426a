"""podq's errors for the Kubernetes API, and the one place a failure of the official client becomes one.

`kube_error` wraps what the official client raises (`ApiException`, urllib3's errors, an exec plugin's
`ConfigException`) into these, as kopf wraps them: nothing of the package's types reaches the launcher.

    KubeError                 status, reason, message (status None: no HTTP answer)
    ├── Unauthorized          401
    ├── Forbidden             403
    ├── NotFound              404
    ├── AlreadyExists         409, reason AlreadyExists
    ├── Conflict              409, anything else (an update lost a race; a ResourceQuota being updated)
    ├── Gone                  410: the resourceVersion or continue token expired (also a watch ERROR 410)
    ├── Invalid               422
    ├── TooManyRequests       429 (retry_after from the Status details or the Retry-After header)
    ├── ServerError           5xx, including 504 server timeouts and 503 while the server starts
    └── Unreachable           no answer: connect errors, timeouts, dropped connections (urllib3, sockets)

`is_transient` is the one retry predicate: a transient error may succeed when the same request is sent
again later; anything else needs a different request (Gone: relist) or a person.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

import urllib3
from kubernetes.client import ApiException
from kubernetes.config import ConfigException


class KubeError(Exception):
    def __init__(self, status: int | None, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}" if status is None else f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Unauthorized(KubeError):
    pass


class Forbidden(KubeError):
    pass


class NotFound(KubeError):
    pass


class AlreadyExists(KubeError):
    pass


class Conflict(KubeError):
    pass


class Gone(KubeError):
    pass


class Invalid(KubeError):
    pass


class TooManyRequests(KubeError):
    def __init__(
        self, status: int | None, reason: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(status, reason, message)
        self.retry_after = retry_after


class ServerError(KubeError):
    pass


class Unreachable(KubeError):
    def __init__(self, message: str) -> None:
        super().__init__(None, "Unreachable", message)


_BY_STATUS: dict[int, type[KubeError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
}


def api_error(
    status: int | None, body: Mapping[str, Any] | None, *, retry_after: str | None = None
) -> KubeError:
    """The error for an HTTP error status (or a watch ERROR event's code) and its Status object, if any.

    `retry_after` is the Retry-After header; the Status object's ``details.retryAfterSeconds`` wins.
    """
    body = body or {}
    reason = str(body.get("reason") or "")
    message = str(body.get("message") or "")
    if status is None:
        return KubeError(None, reason or "Unknown", message)
    if status == 409 and reason == "AlreadyExists":
        return AlreadyExists(status, reason, message)
    if status == 429:
        return TooManyRequests(status, reason or "TooManyRequests", message, _retry_after(body, retry_after))
    if 500 <= status <= 599:
        return ServerError(status, reason or "InternalError", message)
    return _BY_STATUS.get(status, KubeError)(status, reason or f"HTTP{status}", message)


def _retry_after(body: Mapping[str, Any], header: str | None) -> float | None:
    details = body.get("details")
    value: Any
    for value in (details.get("retryAfterSeconds") if isinstance(details, dict) else None, header):
        with contextlib.suppress(TypeError, ValueError):
            return float(value)
    return None


def kube_error(exc: BaseException, what: str) -> BaseException:
    """The podq error for a failure of the official client (`what` is the request, for the message): an HTTP
    error status, no answer (urllib3's errors, sockets), credentials an exec plugin could not refresh, a
    request the package refused or an answer that is no JSON; anything else (a bug) is `exc` itself."""
    error: KubeError
    if isinstance(exc, KubeError):
        return exc
    if isinstance(exc, ApiException) and isinstance(exc.status, int) and exc.status > 0:
        try:
            body = json.loads(exc.body) if exc.body else None
        except (ValueError, TypeError):
            body = None
        if not isinstance(body, dict):
            body = {"message": str(exc.body or exc.reason or "")[:500]}
        error = api_error(exc.status, body, retry_after=(exc.headers or {}).get("Retry-After"))
    elif isinstance(exc, ApiException):  # status 0: the package got no answer
        error = Unreachable(f"{what}: {exc.reason}")
    elif isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        error = Unreachable(f"{what}: {type(exc).__name__}: {exc}")
    elif isinstance(exc, ConfigException):
        error = KubeError(None, "Credentials", f"{what}: {exc}")
    elif isinstance(exc, ValueError):
        error = KubeError(None, "InvalidRequest", f"{what}: {type(exc).__name__}: {exc}")
    else:
        return exc
    error.__cause__ = exc
    return error


def is_transient(exc: BaseException) -> bool:
    """Whether the same request may succeed later: throttling, a struggling or unreachable server, or a
    409 Conflict that is not AlreadyExists (creating a pod races the ResourceQuota controller's update)."""
    return isinstance(exc, (TooManyRequests, ServerError, Unreachable, Conflict))
