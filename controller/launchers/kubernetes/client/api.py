"""The one module of podq that speaks HTTP to the Kubernetes API server: plain JSON dicts over httpx.

Every request takes a token from one `RateLimiter` (client-go's token bucket: `qps` sustained, `burst` at
once) and every failure leaves as a `KubeError` (see `client.errors`): HTTP error statuses
through `api_error`, and httpx's transport errors as `Unreachable`, raised from the httpx exception, so no
httpx type reaches a caller. Every request has a client-side timeout, so a server that accepts a connection
and never answers costs `request_timeout`, not forever.

The launcher imports everything from here: the errors, `load_config` and `make_event` are re-exported.

A watch asks the server to end it after `timeout_seconds` and reads with a client-side timeout
`request_timeout` above that, so a connection dropped without a FIN ends the watch with `Unreachable`
instead of hanging it. The caller resumes from the last resourceVersion it saw and relists on `Gone`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from controller.launchers.kubernetes.client.config import (
    KubeConfig,
    KubeConfigError,
    load_config,
    ssl_context,
)
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
)
from controller.launchers.kubernetes.client.events import make_event
from controller.launchers.kubernetes.client.ratelimit import RateLimiter

__all__ = [
    "AlreadyExists",
    "Conflict",
    "Forbidden",
    "Gone",
    "Invalid",
    "KubeClient",
    "KubeConfig",
    "KubeConfigError",
    "KubeError",
    "NotFound",
    "RateLimiter",
    "ServerError",
    "TooManyRequests",
    "Unauthorized",
    "Unreachable",
    "WatchEvent",
    "decode_watch_line",
    "is_transient",
    "load_config",
    "make_event",
]

log = logging.getLogger(__name__)

USER_AGENT = "podq-controller"
LIST_PAGE_SIZE = 500
WATCH_EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED or BOOKMARK
    object: dict[str, Any]


def decode_watch_line(line: str) -> WatchEvent | None:
    """One line of a watch stream: its event; None for a blank line or an event type podq does not know;
    raises the `KubeError` of an ERROR event (`Gone` for 410: the resourceVersion is too old)."""
    if not line.strip():
        return None
    try:
        event = json.loads(line)
        kind, obj = event["type"], event["object"]
    except (ValueError, KeyError, TypeError) as exc:
        raise KubeError(None, "InvalidWatchEvent", f"{exc}: {line[:200]!r}") from exc
    if kind == "ERROR":
        code = obj.get("code") if isinstance(obj, dict) else None
        raise api_error(code if isinstance(code, int) else None, obj if isinstance(obj, dict) else None)
    if kind not in WATCH_EVENT_TYPES or not isinstance(obj, dict):
        log.debug("skipping a watch event of type %r", kind)
        return None
    return WatchEvent(kind, obj)


class _BearerToken(httpx.Auth):
    """A static token, or a token file re-read on every request (client-go: the last token read wins)."""

    def __init__(self, token: str | None, token_file: Path | None) -> None:
        self._token = token
        self._file = token_file

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._file is not None:
            try:
                self._token = self._file.read_text().strip()
            except OSError as exc:
                if self._token is None:
                    raise KubeError(None, "TokenUnreadable", f"{self._file}: {exc}") from exc
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


@contextlib.contextmanager
def _no_httpx_errors(method: str, path: str) -> Iterator[None]:
    try:
        yield
    except httpx.TransportError as exc:
        raise Unreachable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise KubeError(None, type(exc).__name__, f"{method} {path}: {exc}") from exc


def _status_error(response: httpx.Response) -> KubeError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"message": response.text[:500]}
    return api_error(response.status_code, body, retry_after=response.headers.get("Retry-After"))


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise KubeError(
            response.status_code, "InvalidResponse", f"not JSON: {response.text[:200]!r}"
        ) from exc
    if not isinstance(body, dict):
        raise KubeError(
            response.status_code, "InvalidResponse", f"not a JSON object: {response.text[:200]!r}"
        )
    return body


class KubeClient:
    """An async client for the few API calls podq makes; use ``async with`` or call `aclose`."""

    def __init__(
        self,
        config: KubeConfig,
        *,
        qps: float,
        burst: int,
        request_timeout: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`sleep` is how the rate limiter waits for a token (tests hold requests at a gate with it).
        Raises `KubeConfigError` when the TLS material of `config` cannot be loaded."""
        self.config = config
        self._timeout = request_timeout
        self._limiter = RateLimiter(qps, burst, sleep=sleep)
        token = config.token is not None or config.token_file is not None
        self._http = httpx.AsyncClient(
            base_url=config.server,
            verify=ssl_context(config),
            auth=_BearerToken(config.token, config.token_file) if token else None,
            timeout=httpx.Timeout(request_timeout),
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            # The API server is reached directly: HTTP(S)_PROXY, NO_PROXY and .netrc are not consulted.
            trust_env=False,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        await self._limiter.acquire()
        with _no_httpx_errors(method, path):
            response = await self._http.request(method, path, params=params, json=body)
        if response.is_error:
            raise _status_error(response)
        return response

    async def _list(self, path: str, params: Mapping[str, str]) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        page: dict[str, str | int] = {**params, "limit": LIST_PAGE_SIZE}
        while True:
            body = _json(await self._send("GET", path, params=page))
            items.extend(body.get("items") or [])
            meta = body.get("metadata") or {}
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion", ""))
            page["continue"] = meta["continue"]

    async def version(self) -> dict[str, Any]:
        return _json(await self._send("GET", "/version"))

    async def create_pod(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return _json(await self._send("POST", f"/api/v1/namespaces/{namespace}/pods", body=body))

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return _json(await self._send("GET", f"/api/v1/namespaces/{namespace}/pods/{name}"))

    async def list_pods(self, namespace: str, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        """The pods matching `label_selector` (all pages) and the list's resourceVersion, to watch from.

        Raises `Gone` when the list took so long that its continue token expired: list again."""
        return await self._list(f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": label_selector})

    async def watch_pods(
        self, namespace: str, label_selector: str, resource_version: str, *, timeout_seconds: int
    ) -> AsyncGenerator[WatchEvent, None]:
        """The changes after `resource_version` until the server ends the watch (after `timeout_seconds`).

        Close the iterator when leaving it early (``contextlib.aclosing``) to release its connection.
        """
        path = f"/api/v1/namespaces/{namespace}/pods"
        params = {
            "watch": "true",
            "labelSelector": label_selector,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        timeout = httpx.Timeout(self._timeout, read=timeout_seconds + self._timeout)
        await self._limiter.acquire()
        with _no_httpx_errors("WATCH", path):
            async with self._http.stream("GET", path, params=params, timeout=timeout) as response:
                if response.is_error:
                    await response.aread()
                    raise _status_error(response)
                async for line in response.aiter_lines():
                    if (event := decode_watch_line(line)) is not None:
                        yield event

    async def delete_pod(self, namespace: str, name: str, *, grace_period_seconds: int | None = None) -> bool:
        """Delete a pod; False if it was already gone."""
        params = {} if grace_period_seconds is None else {"gracePeriodSeconds": grace_period_seconds}
        try:
            await self._send("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", params=params)
        except NotFound:
            return False
        return True

    async def read_log(self, namespace: str, name: str, container: str, *, limit_bytes: int) -> str:
        """The container's log, at most `limit_bytes` of it (a character cut in two is replaced)."""
        path = f"/api/v1/namespaces/{namespace}/pods/{name}/log"
        response = await self._send("GET", path, params={"container": container, "limitBytes": limit_bytes})
        return response.content.decode(errors="replace")

    async def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        await self._send("POST", f"/api/v1/namespaces/{namespace}/events", body=body)

    async def list_nodes(self) -> list[dict[str, Any]]:
        items, _ = await self._list("/api/v1/nodes", {})
        return items
