"""A network stream that reads in bulk: httpcore asks for 64 KiB per read, this reads up to `READ_BYTES`.

Every read goes through httpcore, an anyio cancel scope for its timeout, h11 and httpx's iterators; that
Python costs about as much per read as the bytes themselves take to arrive over loopback. asyncio's socket
transport takes up to 256 KiB per receive, and anyio hands over one receive at a time, so asking for as
much keeps each read whole: a 10 MB download makes ~40 reads instead of ~160. h11 buffers whatever a
read returns, so reading more than httpcore asked for changes nothing but the count.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpcore

__all__ = ["READ_BYTES", "BulkReads"]

READ_BYTES = 256 * 1024


class BulkReads(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 (as below)
        return await self._inner.read(max(max_bytes, READ_BYTES), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 (as below)
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        return BulkReads(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
