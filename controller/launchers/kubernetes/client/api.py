"""podq's one adapter to the official `kubernetes` client: asyncio calls on top of its blocking CoreV1Api.

What the package does: configuration and credentials (`client.config`), HTTP and TLS (urllib3), the typed
models of what podq sends (`V1Pod`, `CoreV1Event`, serialised by `ApiClient.sanitize_for_serialization`).
What podq adds, because the package lacks it:

- asyncio: every blocking call runs on a bounded thread pool (sized from QPS and burst); a watch runs
  on a thread of its own that feeds decoded events to the event loop, and so does an attach
  (`client.attach`), which lasts as long as the process it writes to;
- a `RateLimiter` (client-go's token bucket) in front of every request and watch;
- a client-side timeout on every request (``_request_timeout=(connect, read)``); a watch reads with
  `request_timeout` above its server-side `timeout_seconds`, so a connection dropped without a FIN ends
  the watch with `Unreachable` instead of hanging it;
- no retries inside urllib3: `retrying` and the watch loop decide, with `is_transient`;
- `errors.kube_error` on every failure, so no type of the package reaches a caller.

Responses are read raw (``_preload_content=False``) and parsed as the API server's JSON: podq works on the
API's objects as dicts (pod_fate.py), and a watch event costs one `json.loads`, not a model round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from kubernetes import client as k8s
from kubernetes.watch.watch import iter_resp_lines

from controller.launchers.kubernetes.client.attach import attach, on_a_thread
from controller.launchers.kubernetes.client.config import KubeConfig
from controller.launchers.kubernetes.client.errors import (
    KubeError,
    NotFound,
    Unreachable,
    api_error,
    kube_error,
)
from controller.launchers.kubernetes.client.ratelimit import RateLimiter

log = logging.getLogger(__name__)

USER_AGENT = "podq-controller"
LIST_PAGE_SIZE = 500
WATCH_EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})
MIN_THREADS = 4


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


def _json(response: Any) -> dict[str, Any]:
    try:
        body = json.loads(response.data)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise KubeError(response.status, "InvalidResponse", f"no JSON object: {response.data[:200]!r}")
    return body


MODELS: dict[str, Any] = {"Pod": k8s.V1Pod, "Event": k8s.CoreV1Event}


def model(kind: str, body: Mapping[str, Any]) -> Any:
    """The typed model (`V1Pod`, `CoreV1Event`) of an object given as the API's JSON (the pod spec builder's
    output, `events.make_event`'s)."""
    return MODELS[kind].from_dict(dict(body))


def to_json(typed: Any) -> Any:
    """A model as the JSON the client sends (`ApiClient.sanitize_for_serialization`)."""
    return _serialiser().sanitize_for_serialization(typed)


@functools.cache
def _serialiser() -> Any:
    return k8s.ApiClient(k8s.Configuration())


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
        # As many threads as requests the limiter lets start in a second, at most `burst` (it never lets
        # more start at once), at least MIN_THREADS.
        threads = max(MIN_THREADS, min(burst, math.ceil(qps)))
        configuration = config.configuration
        configuration.retries = False  # podq retries (retry.py, the watch loop), not urllib3 behind its back
        configuration.connection_pool_maxsize = threads + 1  # one connection per thread, and the watch's
        self._api_client = k8s.ApiClient(configuration)
        self._api_client.user_agent = USER_AGENT
        self._core = k8s.CoreV1Api(self._api_client)
        self._version = k8s.VersionApi(self._api_client)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="podq-kube")
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
        self._pool.shutdown(wait=False, cancel_futures=True)
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
            response = await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except Exception as exc:
            error = kube_error(exc, what)
            log.info("kubernetes API: %s %s", what, getattr(error, "status", None) or "-")
            raise error from error.__cause__
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
        return await self._create(what, self._core.create_namespaced_pod, namespace, "Pod", body)

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Post an Event given as the API's JSON, sent as the typed `CoreV1Event` it validates into."""
        what = f"POST /api/v1/namespaces/{namespace}/events"
        await self._create(what, self._core.create_namespaced_event, namespace, "Event", body)

    async def _create(
        self, what: str, method: Callable[..., Any], namespace: str, kind: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        try:
            typed = model(kind, body)
        except ValueError as exc:
            raise KubeError(None, f"Invalid{kind}", f"{what}: {exc}") from exc
        return _json(await self._call(what, method, namespace, typed))

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        what = f"GET /api/v1/namespaces/{namespace}/pods/{name}"
        return _json(await self._call(what, self._core.read_namespaced_pod, name, namespace))

    async def list_pods(self, namespace: str, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        """The pods matching `label_selector` (all pages) and the list's resourceVersion, to watch from.

        Raises `Gone` when the list took so long that its continue token expired: list again."""
        what = f"LIST /api/v1/namespaces/{namespace}/pods"
        return await self._list(
            what, self._core.list_namespaced_pod, namespace, label_selector=label_selector
        )

    async def list_nodes(self) -> list[dict[str, Any]]:
        items, _ = await self._list("LIST /api/v1/nodes", self._core.list_node)
        return items

    async def patch_pod(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a JSON merge patch (RFC 7386) to a pod; one carrying ``metadata.resourceVersion`` is applied
        only to that version of the pod (else `Conflict`)."""
        what = f"PATCH /api/v1/namespaces/{namespace}/pods/{name}"
        return _json(
            await self._call(
                what,
                self._core.patch_namespaced_pod,
                name,
                namespace,
                dict(patch),
                _content_type="application/merge-patch+json",
            )
        )

    async def resize_pod(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a strategic merge patch (containers merged by name) to the pod's ``resize`` subresource."""
        what = f"PATCH /api/v1/namespaces/{namespace}/pods/{name}/resize"
        return _json(
            await self._call(
                what,
                self._core.patch_namespaced_pod_resize,
                name,
                namespace,
                dict(patch),
                _content_type="application/strategic-merge-patch+json",
            )
        )

    async def delete_pod(
        self,
        namespace: str,
        name: str,
        *,
        grace_period_seconds: int | None = None,
        resource_version: str | None = None,
    ) -> bool:
        """Delete a pod (only that version of it, if `resource_version`: else `Conflict`); False if it was
        already gone."""
        what = f"DELETE /api/v1/namespaces/{namespace}/pods/{name}"
        preconditions = (
            {} if resource_version is None else {"preconditions": {"resourceVersion": resource_version}}
        )
        try:
            await self._call(
                what,
                self._core.delete_namespaced_pod,
                name,
                namespace,
                grace_period_seconds=grace_period_seconds,
                body=k8s.V1DeleteOptions.from_dict(preconditions) if preconditions else None,
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

    async def attach(
        self,
        namespace: str,
        name: str,
        container: str,
        data: bytes,
        *,
        until_line: bytes,
        read_seconds: float,
        limit_bytes: int,
        opened: Callable[[], None] | None = None,
    ) -> bytes:
        """`client.attach.attach` (write `data` to the container's stdin, read its stdout for a while), on a
        thread of its own: it may wait as long as the container runs, and must not hold one of the pool's.
        The attach and the write must be done within the request timeout."""
        what = f"ATTACH /api/v1/namespaces/{namespace}/pods/{name}/attach"
        await self._limiter.acquire()
        call = functools.partial(
            attach,
            self.config.configuration,
            namespace,
            name,
            container,
            data,
            until_line=until_line,
            read_seconds=read_seconds,
            limit_bytes=limit_bytes,
            opened=opened,
        )
        try:
            output = await asyncio.wait_for(on_a_thread(call), read_seconds + self._timeout)
        except TimeoutError:
            log.info("kubernetes API: %s timed out", what)
            raise Unreachable(f"{what}: no answer within {self._timeout:g}s") from None
        except Exception as exc:
            error = kube_error(exc, what)
            log.info("kubernetes API: %s %s", what, getattr(error, "status", None) or "-")
            raise error from error.__cause__
        log.info("kubernetes API: %s read %d bytes", what, len(output))
        return output

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
            while (item := await watch.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            watch.stop()
            self._watches.discard(watch)


class _WatchThread(threading.Thread):
    """One watch request read on its own thread; each decoded event (or the error that ended it, or None
    at its end) is put on `queue` through the event loop. `stop` shuts the connection down, so a read
    blocked in the thread returns at once."""

    def __init__(self, call: Callable[[], Any], loop: asyncio.AbstractEventLoop, what: str) -> None:
        super().__init__(name="podq-kube-watch", daemon=True)
        self._request, self._loop, self._what = call, loop, what
        self._closing = threading.Event()
        self._response: Any = None
        self.queue: asyncio.Queue[WatchEvent | BaseException | None] = asyncio.Queue()

    def stop(self) -> None:
        self._closing.set()
        if self._response is not None:  # else `run` sees `_closing` once it has a response
            _shutdown(self._response)

    def _put(self, item: WatchEvent | BaseException | None) -> None:
        if not self._closing.is_set():
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def run(self) -> None:
        end: BaseException | None = None
        try:
            self._response = self._request()
            try:
                for line in () if self._closing.is_set() else iter_resp_lines(self._response):
                    if self._closing.is_set():
                        break
                    if (event := decode_watch_line(line)) is not None:
                        self._put(event)
            finally:
                if self._closing.is_set():
                    _shutdown(self._response)
                self._response.release_conn()
        except Exception as exc:
            end = kube_error(exc, self._what)
        self._put(end)


def _shutdown(response: Any) -> None:
    for close in (response.shutdown, response.close):
        try:
            close()
        except Exception:
            log.debug("could not shut a watch connection down", exc_info=True)
