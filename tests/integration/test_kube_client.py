"""The API client (controller/launchers/kubernetes/client/) against real loopback servers that misbehave.

No cluster needed: what a real API server does is the e2e tier's (tests/e2e/test_kube_api.py). Here: no
exception of the `kubernetes` package or of urllib3 leaves the client, a silent server or a silent watch
ends in `Unreachable`, HTTP errors map through the wire, pages are followed, an exec plugin's expired
token is renewed, and the rate limiter holds a burst.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3
import yaml

from controller.launchers.kubernetes.client.api import KubeClient, WatchEvent
from controller.launchers.kubernetes.client.config import for_server, load_config
from controller.launchers.kubernetes.client.errors import (
    AlreadyExists,
    Gone,
    KubeError,
    ServerError,
    TooManyRequests,
    Unreachable,
    is_transient,
)
from controller.launchers.kubernetes.client.events import make_event
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.integration

POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "resourceVersion": "5"}}


class Request(NamedTuple):
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    lines: list[bytes] | None = None  # a chunked stream of these lines instead of `body`
    quiet: float = 0  # seconds of silence after the status line, before the lines
    hold: bool = False  # after the status line (and lines), say nothing more until the client hangs up


class ScriptedServer:
    """A loopback HTTP/1.1 server on the test's event loop answering each request with `script(request)`."""

    def __init__(self, script: Callable[[Request], Reply]) -> None:
        self.script = script
        self.requests: list[Request] = []
        self.open_connections = 0
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        try:
            while await self._exchange(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_connections -= 1
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ", 2)
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:] if line)}
        await reader.readexactly(int(headers.get("content-length", 0)))
        parts = urlsplit(target)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        request = Request(method, parts.path, query, headers)
        self.requests.append(request)
        reply = self.script(request)
        if reply.hold and reply.lines is None:
            await reader.read()  # until the client hangs up
            return False
        status = f"HTTP/1.1 {reply.status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
        if reply.lines is None:
            writer.write(f"{status}Content-Length: {len(reply.body)}\r\n\r\n".encode() + reply.body)
            await writer.drain()
            return True
        writer.write(f"{status}Transfer-Encoding: chunked\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(reply.quiet)  # sleep-ok: the server's behaviour under test, not a synchronisation
        for line in reply.lines:
            writer.write(b"%x\r\n%s\r\n" % (len(line) + 1, line + b"\n"))
        await writer.drain()
        if reply.hold:
            await reader.read()
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


@asynccontextmanager
async def scripted_server(script: Callable[[Request], Reply]) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(script)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    async with listener:
        yield server
        listener.close()


def client(url: str, *, request_timeout: float = 10, **options: Any) -> KubeClient:
    config = for_server(url, token=options.pop("token", None))
    return KubeClient(config, qps=options.pop("qps", 100), burst=options.pop("burst", 100),
                      request_timeout=request_timeout, **options)  # fmt: skip


def event_line(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode()


async def first_event(api: KubeClient) -> WatchEvent:
    async with aclosing(api.watch_pods("ns", "a=b", "5", timeout_seconds=1)) as events:
        async for event in events:
            return event
    raise AssertionError("the watch ended without an event")


CALLS: dict[str, Callable[[KubeClient], Awaitable[object]]] = {
    "version": lambda api: api.version(),
    "create_pod": lambda api: api.create_pod("ns", POD),
    "get_pod": lambda api: api.get_pod("ns", "p"),
    "list_pods": lambda api: api.list_pods("ns", "a=b"),
    "watch_pods": first_event,
    "delete_pod": lambda api: api.delete_pod("ns", "p"),
    "read_log": lambda api: api.read_log("ns", "p", "worker", limit_bytes=10),
    "create_event": lambda api: api.create_event("ns", make_event(POD, reason="R", message="m")),
    "list_nodes": lambda api: api.list_nodes(),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_a_closed_port_is_unreachable_never_a_urllib3_error(
    closed_port_url: str, call: Callable[[KubeClient], Awaitable[object]]
) -> None:
    async def scenario() -> Unreachable:
        async with client(closed_port_url) as api:
            with pytest.raises(KubeError) as raised:
                await call(api)
        assert type(raised.value) is Unreachable
        return raised.value

    error = asyncio.run(scenario())
    assert isinstance(error.__cause__, urllib3.exceptions.HTTPError)
    assert error.status is None and is_transient(error)
    assert "NewConnectionError" in str(error)


def test_a_server_that_accepts_and_never_answers_costs_the_request_timeout_then_hangs_up() -> None:
    async def scenario() -> Unreachable:
        async with (
            scripted_server(lambda _: Reply(hold=True)) as server,
            client(server.url, request_timeout=0.3) as api,
        ):
            with pytest.raises(Unreachable) as raised:
                await api.version()
            await wait_until_async(lambda: server.open_connections == 0, "the client to hang up", within=10)
        return raised.value

    assert isinstance(asyncio.run(scenario()).__cause__, urllib3.exceptions.ReadTimeoutError)


def test_a_watch_that_goes_silent_ends_after_the_server_side_timeout_plus_the_request_timeout() -> None:
    reply = Reply(lines=[event_line("MODIFIED", POD)], hold=True)

    async def scenario() -> tuple[list[WatchEvent], ScriptedServer]:
        seen: list[WatchEvent] = []
        async with scripted_server(lambda _: reply) as server, client(server.url, request_timeout=0.3) as api:
            with pytest.raises(Unreachable):
                async with asyncio.timeout(30):  # a failure here, not a hung test run
                    async for event in api.watch_pods("ns", "a=b", "5", timeout_seconds=1):
                        seen.append(event)
            await wait_until_async(lambda: server.open_connections == 0, "the client to hang up", within=10)
        return seen, server

    seen, server = asyncio.run(scenario())
    assert seen == [WatchEvent("MODIFIED", POD)]
    assert server.requests[0].query == {
        "watch": "true",
        "labelSelector": "a=b",
        "resourceVersion": "5",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "1",
    }


def test_a_watch_stays_open_through_a_silence_longer_than_the_request_timeout() -> None:
    """A healthy watch is quiet while nothing changes: only silence beyond its server-side timeout ends it."""
    reply = Reply(lines=[event_line("ADDED", POD)], quiet=1.0)

    async def scenario() -> list[WatchEvent]:
        async with scripted_server(lambda _: reply) as server, client(server.url, request_timeout=0.3) as api:
            return [event async for event in api.watch_pods("ns", "a=b", "5", timeout_seconds=2)]

    assert asyncio.run(scenario()) == [WatchEvent("ADDED", POD)]


EXPIRED = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version: 1 (9)"}


@pytest.mark.parametrize(
    ("reply", "events", "error"),
    [
        (Reply(lines=[event_line("BOOKMARK", POD), event_line("DELETED", POD)]),
         ["BOOKMARK", "DELETED"], None),
        (Reply(lines=[event_line("SURPRISE", {}), event_line("ADDED", POD), event_line("ERROR", EXPIRED)]),
         ["ADDED"], Gone),
        (Reply(status=410, body=json.dumps(EXPIRED).encode()), [], Gone),
        (Reply(status=500, body=b"<html>oops</html>"), [], ServerError),
    ],
    ids=["ends-cleanly", "error-event-410-after-events", "http-410", "http-500-not-json"],
)  # fmt: skip
def test_a_watch_stream_over_the_wire(reply: Reply, events: list[str], error: type[KubeError] | None) -> None:
    async def scenario() -> tuple[list[str], KubeError | None]:
        seen: list[str] = []
        async with scripted_server(lambda _: reply) as server, client(server.url) as api:
            try:
                async for event in api.watch_pods("ns", "a=b", "1", timeout_seconds=5):
                    seen.append(event.type)
            except KubeError as exc:
                return seen, exc
        return seen, None

    seen, raised = asyncio.run(scenario())
    assert seen == events
    assert type(raised) is (error or type(None))


class WireError(NamedTuple):
    reply: Reply
    error: type[KubeError]
    reason: str


@pytest.mark.parametrize(
    "case",
    [
        WireError(Reply(409, json.dumps({"reason": "AlreadyExists", "message": "exists"}).encode()),
                  AlreadyExists, "AlreadyExists"),
        WireError(Reply(429, b"slow down", {"Retry-After": "2"}), TooManyRequests, "TooManyRequests"),
        WireError(Reply(502, b"<html>bad gateway</html>", {}), ServerError, "InternalError"),
        WireError(Reply(200, b"not json", {}), KubeError, "InvalidResponse"),
        WireError(Reply(200, b"[1, 2]"), KubeError, "InvalidResponse"),
    ],
    ids=["409-already-exists", "429-retry-after", "502-html", "200-not-json", "200-not-an-object"],
)  # fmt: skip
def test_http_errors_over_the_wire(case: WireError) -> None:
    async def scenario() -> KubeError:
        async with scripted_server(lambda _: case.reply) as server, client(server.url) as api:
            with pytest.raises(KubeError) as raised:
                await api.get_pod("ns", "p")
        return raised.value

    error = asyncio.run(scenario())
    assert (type(error), error.reason) == (case.error, case.reason)
    if isinstance(error, TooManyRequests):
        assert error.retry_after == 2
    if case.reply.status == 502:
        assert "bad gateway" in error.message


def test_delete_of_a_missing_pod_is_false_and_lists_follow_continue_tokens() -> None:
    def script(request: Request) -> Reply:
        if request.method == "DELETE":
            return Reply(404, json.dumps({"code": 404, "reason": "NotFound"}).encode())
        page = {"": ("tok1", [{"n": 1}, {"n": 2}]), "tok1": ("tok2", [{"n": 3}]), "tok2": ("", [])}
        token, items = page[request.query.get("continue", "")]
        return Reply(
            body=json.dumps(
                {"metadata": {"resourceVersion": "77", "continue": token}, "items": items}
            ).encode()
        )

    async def scenario() -> tuple[bool, tuple[list[dict[str, Any]], str], ScriptedServer]:
        async with scripted_server(script) as server, client(server.url) as api:
            return (
                await api.delete_pod("ns", "p", grace_period_seconds=0),
                await api.list_pods("ns", "a=b"),
                server,
            )

    deleted, (items, resource_version), server = asyncio.run(scenario())
    assert deleted is False
    assert server.requests[0].query == {"gracePeriodSeconds": "0"}
    assert (items, resource_version) == ([{"n": 1}, {"n": 2}, {"n": 3}], "77")
    assert [r.query.get("continue") for r in server.requests[1:]] == [None, "tok1", "tok2"]
    assert {r.query["limit"] for r in server.requests[1:]} == {"500"}


def test_an_exec_plugins_expired_token_is_renewed_before_a_request(tmp_path: Path) -> None:
    """The plugin prints a new token each run, already expired: the package runs it again per request."""
    counter = tmp_path / "runs"
    plugin = tmp_path / "plugin"
    plugin.write_text(
        "#!/bin/sh\n"
        f"n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}\n"
        'printf \'{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", '
        '"status": {"token": "t%s", "expirationTimestamp": "2000-01-01T00:00:00Z"}}\' $n\n'
    )
    plugin.chmod(0o755)

    async def scenario() -> list[str]:
        async with scripted_server(lambda _: Reply()) as server:
            kubeconfig = tmp_path / "kubeconfig"
            kubeconfig.write_text(yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "c",
                "clusters": [{"name": "k", "cluster": {"server": server.url}}],
                "users": [{"name": "u", "user": {"exec": {
                    "apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin)}}}],
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            }))  # fmt: skip
            async with KubeClient(
                load_config(kubeconfig, None), qps=100, burst=100, request_timeout=10
            ) as api:
                await api.version()
                await api.version()
        return [request.headers["authorization"] for request in server.requests]

    tokens = asyncio.run(scenario())
    assert len(tokens) == 2 and tokens[0] != tokens[1]
    assert all(token.startswith("Bearer t") for token in tokens)


def test_the_rate_limiter_holds_requests_beyond_the_burst() -> None:
    """Five requests at once with a burst of three: three reach the server, two wait at the limiter (held
    at a gate standing in for its sleep) until the gate opens."""
    gate = asyncio.Event()
    delays: list[float] = []

    async def held_sleep(seconds: float) -> None:
        delays.append(seconds)
        await gate.wait()

    async def scenario() -> tuple[int, int, int]:
        async with scripted_server(lambda _: Reply()) as server:
            async with client(server.url, qps=0.01, burst=3, sleep=held_sleep) as api:
                calls = [asyncio.create_task(api.version()) for _ in range(5)]
                await wait_until_async(
                    lambda: sum(call.done() for call in calls) == 3, "the burst to be answered"
                )
                await wait_until_async(lambda: len(delays) == 2, "two requests to wait at the limiter")
                held = sum(not call.done() for call in calls)
                at_the_gate = len(server.requests)
                gate.set()
                await asyncio.gather(*calls)
            return held, at_the_gate, len(server.requests)

    assert asyncio.run(scenario()) == (2, 3, 5)
    assert all(delay > 0 for delay in delays)
