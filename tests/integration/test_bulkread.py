"""Bulk reads (worker_image/bulkread.py) on a real loopback connection made by the pinned backend."""

from __future__ import annotations

import asyncio

import pytest

from worker_image.bulkread import READ_BYTES
from worker_image.netpolicy import FetchPolicy
from worker_image.pinned import PinnedBackend

pytestmark = pytest.mark.integration

# More than httpcore's 64 KiB read, little enough for the receiving socket's buffer to hold it all.
BODY = b"x" * (100 * 1024)


async def _read_all_after_the_server_is_done(max_bytes: int) -> list[bytes]:
    sent = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(BODY)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        sent.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = PinnedBackend(FetchPolicy.from_lists(["127.0.0.0/8"], []))
    stream = await backend.connect_tcp("127.0.0.1", port, timeout=5)
    try:
        # Every byte is in this end's socket before the first read.
        await asyncio.wait_for(sent.wait(), 10)
        reads = []
        while piece := await stream.read(max_bytes, timeout=5):
            reads.append(piece)
    finally:
        await stream.aclose()
        server.close()
        await server.wait_closed()
    return reads


def test_a_read_takes_what_has_arrived_up_to_the_bulk_size_whatever_httpcore_asks() -> None:
    assert len(BODY) <= READ_BYTES
    reads = asyncio.run(_read_all_after_the_server_is_done(max_bytes=64 * 1024))
    assert b"".join(reads) == BODY
    assert len(reads[0]) > 64 * 1024
