"""Reading a worker's stdout and stderr to the end without holding more than a bounded amount.

A worker's stdout may carry any amount of stray library output before its envelope, and its stderr any
amount of logging; both are drained as they come (a full pipe would stall the worker) and only what the
launcher needs is kept: the last line carrying the envelope marker, and the tail of stderr.
"""

from __future__ import annotations

import asyncio
from enum import Enum

from worker_image.protocol import ENVELOPE_MARKER

__all__ = ["EnvelopeScanner", "TailBuffer", "drain"]

_CHUNK = 64 * 1024
_PREFIX = (ENVELOPE_MARKER + " ").encode()


class _Line(Enum):
    UNDECIDED = "undecided"
    ENVELOPE = "envelope"
    NOISE = "noise"
    OVERSIZED = "oversized"


class EnvelopeScanner:
    """Keeps the last stdout line that starts with the envelope marker, if it fits in `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._line = bytearray()
        self._state = _Line.UNDECIDED
        self.envelope: bytes | None = None
        # The last envelope line did not fit; `envelope` is then None.
        self.oversized = False

    def feed(self, chunk: bytes) -> None:
        start = 0
        while (newline := chunk.find(b"\n", start)) >= 0:
            self._append(chunk[start:newline])
            self._end_line()
            start = newline + 1
        self._append(chunk[start:])

    def close(self) -> None:
        self._end_line()

    def _append(self, part: bytes) -> None:
        if self._state in (_Line.NOISE, _Line.OVERSIZED):
            return
        self._line += part
        if self._state is _Line.UNDECIDED:
            if self._line.startswith(_PREFIX):
                self._state = _Line.ENVELOPE
            elif not _PREFIX.startswith(self._line):
                self._state = _Line.NOISE
                self._line.clear()
        if self._state is _Line.ENVELOPE and len(self._line) > self._max_bytes:
            self._state = _Line.OVERSIZED
            self._line.clear()

    def _end_line(self) -> None:
        if self._state is _Line.ENVELOPE:
            self.envelope, self.oversized = bytes(self._line), False
        elif self._state is _Line.OVERSIZED:
            self.envelope, self.oversized = None, True
        self._line.clear()
        self._state = _Line.UNDECIDED


class TailBuffer:
    """Keeps the last `max_bytes` of a stream."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._data = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._data += chunk
        if len(self._data) > self._max_bytes:
            del self._data[: len(self._data) - self._max_bytes]

    def close(self) -> None:
        """Nothing to finish: every byte fed is already in the tail."""

    def text(self) -> str:
        return self._data.decode(errors="replace")


async def drain(stream: asyncio.StreamReader, sink: EnvelopeScanner | TailBuffer) -> None:
    while chunk := await stream.read(_CHUNK):
        sink.feed(chunk)
    sink.close()
