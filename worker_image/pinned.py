"""An httpx transport that connects only to addresses the `FetchPolicy` has judged (DNS rebinding).

Every TCP connection, the first and each redirect's, goes through `PinnedBackend.connect_tcp`: the host is
resolved once, every address it resolves to is judged (one refused address refuses the host: a name
that mixes public and internal addresses is not a public name), and the socket is opened to one of those
very addresses, so a second lookup can never return something else. httpcore still hands the hostname
to TLS, so SNI and certificate checks are for the name, and httpx still sends it as the Host header.
Each stream reads in bulk (worker_image/bulkread.py).

httpx 0.28 has no public way to pass a network backend, so `pinned_transport` swaps the pool inside an
`httpx.AsyncHTTPTransport`; tests/integration/test_worker.py proves the swap takes effect.

The TLS context (httpx's own: certifi's CA bundle, certificates and host names verified) is built once per
process by `ssl_context`: parsing the bundle costs tens of milliseconds, which httpx would pay for every
transport. The zygote builds it before it forks (worker_image/zygote.py), so a warm worker pays nothing.
It holds the CA certificates and nothing of any query: the zygote never connects, and whatever a child
does with its copy stays in that child.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from collections.abc import Iterable

import httpcore
import httpx

from worker_image.bulkread import BulkReads
from worker_image.netpolicy import Address, FetchPolicy, ip_literal

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class PinnedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await _resolve(host, port, timeout)
        for address in addresses:
            self._policy.check_address(host, address)
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
            else:
                return BulkReads(stream)
        assert failure is not None  # _resolve returns at least one address
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("dataset fetches never use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def _resolve(host: str, port: int, seconds: float | None) -> list[Address]:
    literal = ip_literal(host)
    if literal is not None:
        return [literal]
    try:
        async with asyncio.timeout(seconds):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"DNS lookup of {host!r} took over {seconds}s") from None
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"DNS lookup of {host!r} failed: {exc}") from exc
    found: list[Address] = []
    for info in infos:
        address = ip_literal(str(info[4][0]))
        if address is not None and address not in found:
            found.append(address)
    if not found:
        raise httpcore.ConnectError(f"DNS lookup of {host!r} returned no IP address")
    return found


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """httpx's default client context, built once per process (see the module docstring)."""
    return httpx.create_ssl_context(trust_env=False)


class _PinnedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, policy: FetchPolicy) -> None:
        # No proxy, whatever the environment says: a proxy would make the connection, not us.
        super().__init__(verify=ssl_context(), trust_env=False)
        limits = httpx.Limits()  # httpx's defaults, as the replaced pool had
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PinnedBackend(policy),
        )


def pinned_transport(policy: FetchPolicy) -> httpx.AsyncBaseTransport:
    return _PinnedTransport(policy)
