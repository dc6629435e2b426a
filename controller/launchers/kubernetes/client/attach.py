"""A container's stdin and stdout through ``pods/attach``: the official client's `kubernetes.stream`, which
speaks the channel protocol (v5.channel.k8s.io, else v4) over a websocket. Blocking: `KubeClient` runs it
on a thread of its own, since it may wait as long as the process in the container runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes.stream import stream
from kubernetes.stream.ws_client import STDOUT_CHANNEL

log = logging.getLogger(__name__)
T = TypeVar("T")


def on_a_thread(call: Callable[[], T]) -> asyncio.Future[T]:
    """`call()` on a new daemon thread, as a future of the running loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return  # its awaiter gave up (cancelled, timed out)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = call()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="podq-kube-attach", daemon=True).start()
    return future


def attach(
    configuration: Any,
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
    """Attach to the container, write `data` to its stdin, then read its stdout until a whole line starting
    with `until_line` has come, the stream ends (the process exited), `read_seconds` have passed or
    `limit_bytes` were read; what was read. Stdin stays open: closing it would end the stream with protocol
    v4. Raises if the attach or the write fails; a failure while reading only ends the reading. `opened` is
    called once the stream is open, before the write (a test crash point)."""
    # `stream` swaps its ApiClient's transport while it connects, so it gets an ApiClient of its own,
    # never the one KubeClient's threads share.
    with k8s.ApiClient(configuration) as api_client:
        connection = stream(
            k8s.CoreV1Api(api_client).connect_get_namespaced_pod_attach,
            name,
            namespace,
            container=container,
            stdin=True,
            stdout=True,
            stderr=False,
            tty=False,
            _preload_content=False,
            binary=True,
        )
        try:
            if opened is not None:
                opened()
            connection.write_stdin(data)
            return _read(connection, until_line, time.monotonic() + read_seconds, limit_bytes)
        finally:
            connection.close()


def _read(connection: Any, until_line: bytes, deadline: float, limit_bytes: int) -> bytes:
    out = bytearray()
    try:
        while connection.is_open() and (left := deadline - time.monotonic()) > 0:
            connection.update(timeout=left)
            out += connection.read_channel(STDOUT_CHANNEL) or b""
            if has_line(out, until_line) or len(out) >= limit_bytes:
                break
    except Exception as exc:  # the websocket's own errors: what was read so far is all there is
        log.info("attach stream ended: %s: %s", type(exc).__name__, exc)
    return bytes(out)


def has_line(out: bytes | bytearray, start: bytes) -> bool:
    """Whether `out` holds a whole (newline-terminated) line beginning with `start`; the last such."""
    if out.startswith(start):
        at = 0
    elif (at := out.rfind(b"\n" + start)) < 0:
        return False
    return out.find(b"\n", at + 1) >= 0
