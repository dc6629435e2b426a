"""podq's one adapter to the official `kubernetes` client: asyncio calls on top of its blocking CoreV1Api.

What the package does: configuration and credentials (`client.config`), HTTP and TLS (urllib3), the typed
models of what podq sends (`V1Pod`, `CoreV1Event`, serialised by `ApiClient.sanitize_for_serialization`).
What podq adds, because the package lacks it:

- asyncio: every blocking call runs on a bounded thread pool (`pool_size`: sized from QPS and burst), and
  a watch runs on a thread of its own that feeds decoded events to the event loop;
- a `RateLimiter` (client-go's token bucket) in front of every request and watch;
- a client-side timeout on every request (``_request_timeout=(connect, read)``); a watch reads with
  `request_timeout` above its server-side `timeout_seconds`, so a connection dropped without a FIN ends
  the watch with `Unreachable` instead of hanging it;
- no retries inside urllib3: `retrying` and the watch loop decide, with `is_transient`;
- `kube_error`, the one place an `ApiException` or a transport failure becomes a podq `KubeError`
  (as kopf wraps them), so no type of the package reaches a caller.

Responses are read raw (``_preload_content=False``) and parsed as the API server's JSON: podq works on the
API's objects as dicts (pod_fate.py), and a watch event costs one `json.loads`, not a model round trip.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes.config import ConfigException
from kubernetes.watch.watch import iter_resp_lines

from controller.launchers.kubernetes.client.config import (
    KubeConfig,
    KubeConfigError,
    for_server,
    load_config,
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
    "event_model",
    "for_server",
    "is_transient",
    "kube_error",
    "load_config",
    "make_event",
    "pod_model",
    "pool_size",
    "to_json",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

USER_AGENT = "podq-controller"
LIST_PAGE_SIZE = 500
WATCH_EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})
MIN_THREADS = 4


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED or BOOKMARK
    object: dict[str, Any]


def pool_size(qps: float, burst: int) -> int:
    """Threads for blocking calls: as many requests as the limiter lets start in a second, at most `burst`
    (it never lets more start at once), at least `MIN_THREADS`."""
    return max(MIN_THREADS, min(burst, math.ceil(qps)))


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


def kube_error(exc: BaseException, what: str) -> KubeError:
    """The podq error for a failure of the official client: an HTTP error status (`ApiException`), no
    answer (urllib3's errors, sockets), or credentials that could not be refreshed (an exec plugin)."""
    if isinstance(exc, KubeError):
        return exc
    if isinstance(exc, k8s.ApiException):
        body: Any = exc.body
        try:
            body = json.loads(body) if body else None
        except (ValueError, TypeError):
            body = None
        if not isinstance(body, dict):
            body = {"message": str(exc.body or exc.reason or "")[:500]}
        retry_after = (exc.headers or {}).get("Retry-After")
        status = exc.status if isinstance(exc.status, int) and exc.status > 0 else None
        if status is None:
            return Unreachable(f"{what}: {exc.reason}")
        return api_error(status, body, retry_after=retry_after)
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return Unreachable(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, ConfigException):
        return KubeError(None, "Credentials", f"{what}: {exc}")
    if isinstance(exc, ValueError):  # the package's own validation, or a response that is not JSON
        return KubeError(None, "InvalidRequest", f"{what}: {type(exc).__name__}: {exc}")
    raise exc


def _json(response: Any) -> dict[str, Any]:
    data = response.data
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise KubeError(response.status, "InvalidResponse", f"not JSON: {data[:200]!r}") from exc
    if not isinstance(body, dict):
        raise KubeError(response.status, "InvalidResponse", f"not a JSON object: {data[:200]!r}")
    return body


def pod_model(pod: Mapping[str, Any]) -> Any:
    """The typed `V1Pod` of a pod given as the API's JSON (the pod spec builder's output)."""
    return k8s.V1Pod.from_dict(dict(pod))


def event_model(event: Mapping[str, Any]) -> Any:
    """The typed `CoreV1Event` of an event given as the API's JSON (`make_event`'s output)."""
    return k8s.CoreV1Event.from_dict(dict(event))


@functools.cache
def _serialiser() -> Any:
    return k8s.ApiClient(k8s.Configuration())


def to_json(model: Any) -> Any:
    """A model as the JSON the client sends (`ApiClient.sanitize_for_serialization`)."""
    return _serialiser().sanitize_for_serialization(model)


class KubeClient:
    """Async calls for the few API operations podq makes; use ``async with`` or call `aclose`."""

    def __init__(
        self,
        config: KubeConfig,
        *,
        qps: float,
        burst: int,
        request_timeout: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`sleep` is how the rate limiter waits for a token (tests hold requests at a gate with it)."""
        self.config = config
        self._timeout = request_timeout
        self._limiter = RateLimiter(qps, burst, sleep=sleep)
        threads = pool_size(qps, burst)
        configuration = config.configuration
        # podq retries (retry.py, the watch loop); urllib3 must not retry behind its back.
        configuration.retries = False
        # One connection per thread, and the watch's.
        configuration.connection_pool_maxsize = threads + 1
        self._api_client = k8s.ApiClient(configuration)
        self._api_client.user_agent = USER_AGENT
        self._core = k8s.CoreV1Api(self._api_client)
        self._version = k8s.VersionApi(self._api_client)
        self._pool = _Pool(threads)
        self._watches: set[_WatchThread] = set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for watch in list(self._watches):
            watch.stop()
        self._pool.shutdown()
        await asyncio.to_thread(self._api_client.close)

    async def _call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`method(*args, **kwargs)` raw and with the client-side timeout, on the pool, after a token.

        `what` is ``"<VERB> <path>"``; every request is logged at INFO as ``kubernetes API: <what> <status>``
        (bench/kube_requests.py counts them)."""
        await self._limiter.acquire()
        call = functools.partial(
            method, *args, _preload_content=False, _request_timeout=(self._timeout, self._timeout), **kwargs
        )
        try:
            response = await self._pool.run(call)
        except Exception as exc:
            error = kube_error(exc, what)
            log.info("kubernetes API: %s %s", what, error.status or "-")
            raise error from exc
        log.info("kubernetes API: %s %s", what, response.status)
        return response

    async def _list(
        self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        page: dict[str, Any] = {**kwargs, "limit": LIST_PAGE_SIZE}
        while True:
            body = _json(await self._call(what, method, *args, **page))
            items.extend(body.get("items") or [])
            meta = body.get("metadata") or {}
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion", ""))
            page["_continue"] = meta["continue"]

    async def version(self) -> dict[str, Any]:
        return _json(await self._call("GET /version", self._version.get_code))

    async def create_pod(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create the pod given as the API's JSON, sent as the typed `V1Pod` it validates into."""
        what = f"POST /api/v1/namespaces/{namespace}/pods {body.get('metadata', {}).get('name')}"
        try:
            model = pod_model(body)
        except ValueError as exc:
            raise KubeError(None, "InvalidPod", f"{what}: {exc}") from exc
        return _json(await self._call(what, self._core.create_namespaced_pod, namespace, model))

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return _json(
            await self._call(
                f"GET /api/v1/namespaces/{namespace}/pods/{name}",
                self._core.read_namespaced_pod,
                name,
                namespace,
            )
        )

    async def list_pods(self, namespace: str, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        """The pods matching `label_selector` (all pages) and the list's resourceVersion, to watch from.

        Raises `Gone` when the list took so long that its continue token expired: list again."""
        return await self._list(
            f"LIST /api/v1/namespaces/{namespace}/pods",
            self._core.list_namespaced_pod,
            namespace,
            label_selector=label_selector,
        )

    async def watch_pods(
        self, namespace: str, label_selector: str, resource_version: str, *, timeout_seconds: int
    ) -> AsyncGenerator[WatchEvent, None]:
        """The changes after `resource_version` until the server ends the watch (after `timeout_seconds`).

        The request is read on a thread of its own; close the iterator when leaving it early
        (``contextlib.aclosing``) to stop that thread and release its connection.
        """
        await self._limiter.acquire()
        call = functools.partial(
            self._core.list_namespaced_pod,
            namespace,
            label_selector=label_selector,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds,
            watch=True,
            _preload_content=False,
            _request_timeout=(self._timeout, timeout_seconds + self._timeout),
        )
        what = f"WATCH /api/v1/namespaces/{namespace}/pods"
        log.info("kubernetes API: %s from %s", what, resource_version)
        watch = _WatchThread(call, asyncio.get_running_loop(), what)
        self._watches.add(watch)
        watch.start()
        try:
            while True:
                item = await watch.queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            watch.stop()
            self._watches.discard(watch)

    async def delete_pod(self, namespace: str, name: str, *, grace_period_seconds: int | None = None) -> bool:
        """Delete a pod; False if it was already gone."""
        try:
            await self._call(
                f"DELETE /api/v1/namespaces/{namespace}/pods/{name}",
                self._core.delete_namespaced_pod,
                name,
                namespace,
                grace_period_seconds=grace_period_seconds,
            )
        except NotFound:
            return False
        return True

    async def read_log(self, namespace: str, name: str, container: str, *, limit_bytes: int) -> str:
        """The container's log, at most `limit_bytes` of it (a character cut in two is replaced)."""
        response = await self._call(
            f"GET /api/v1/namespaces/{namespace}/pods/{name}/log",
            self._core.read_namespaced_pod_log,
            name,
            namespace,
            container=container,
            limit_bytes=limit_bytes,
        )
        data: bytes = response.data
        return data.decode(errors="replace")

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Post an Event given as the API's JSON, sent as the typed `CoreV1Event` it validates into."""
        what = f"POST /api/v1/namespaces/{namespace}/events"
        try:
            model = event_model(body)
        except ValueError as exc:
            raise KubeError(None, "InvalidEvent", f"{what}: {exc}") from exc
        await self._call(what, self._core.create_namespaced_event, namespace, model)

    async def list_nodes(self) -> list[dict[str, Any]]:
        items, _ = await self._list("LIST /api/v1/nodes", self._core.list_node)
        return items


class _Pool:
    """A bounded pool of threads for blocking calls."""

    def __init__(self, threads: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="podq-kube")

    async def run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class _WatchThread:
    """One watch request read on its own thread; each decoded event (or the error that ended it, or None
    at its end) is put on `queue` through the event loop."""

    def __init__(self, call: Callable[[], Any], loop: asyncio.AbstractEventLoop, what: str) -> None:
        self._call = call
        self._loop = loop
        self._what = what
        self._stopped = threading.Event()
        self._response: Any = None
        self._lock = threading.Lock()
        self.queue: asyncio.Queue[WatchEvent | BaseException | None] = asyncio.Queue()
        self._thread = threading.Thread(target=self._run, name="podq-kube-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop reading: shut the connection down, so a thread blocked in a read returns at once."""
        self._stopped.set()
        with self._lock:
            response = self._response
        if response is not None:
            _shutdown(response)

    def _put(self, item: WatchEvent | BaseException | None) -> None:
        if self._stopped.is_set():
            return
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed
            self._stopped.set()

    def _run(self) -> None:
        try:
            response = self._call()
            with self._lock:
                self._response = response
            if self._stopped.is_set():
                _shutdown(response)
                return
            try:
                for line in iter_resp_lines(response):
                    if self._stopped.is_set():
                        return
                    if (event := decode_watch_line(line)) is not None:
                        self._put(event)
            finally:
                response.release_conn()
            self._put(None)
        except Exception as exc:
            if not self._stopped.is_set():
                try:
                    error = kube_error(exc, self._what)
                except Exception as unknown:
                    self._put(unknown)
                    return
                if error is not exc:
                    error.__cause__ = exc
                self._put(error)


def _shutdown(response: Any) -> None:
    try:
        response.shutdown()
    except Exception:
        log.debug("could not shut a watch connection down", exc_info=True)
    try:
        response.close()
    except Exception:
        log.debug("could not close a watch connection", exc_info=True)
