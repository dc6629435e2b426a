"""Undoes a download's Content-Encoding in bounded steps, so the size cap sees a compression bomb early.

httpx decodes each network read in one go: a 64 KiB read of a gzip bomb becomes some 64 MiB in memory
before anyone can count it. Here every piece handed out is at most `STEP` bytes, and the caller counts
each against the cap before asking for the next. Only gzip and deflate are accepted (what the fetch asks
for); any other encoding is refused rather than stored still encoded.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Protocol

STEP = 256 * 1024
ACCEPT_ENCODING = "gzip, deflate"


class DecodingError(Exception):
    """The body cannot be decoded: an encoding not asked for, or corrupt compressed data."""


class Decoder(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]: ...
    def flush(self) -> Iterator[bytes]: ...


class _Identity:
    def feed(self, data: bytes) -> Iterator[bytes]:
        if data:
            yield data

    def flush(self) -> Iterator[bytes]:
        return iter(())


class _Zlib:
    def __init__(self, wbits: int) -> None:
        self._inflate = zlib.decompressobj(wbits)

    def feed(self, data: bytes) -> Iterator[bytes]:
        while not self._inflate.eof:
            try:
                piece = self._inflate.decompress(data, STEP)
            except zlib.error as exc:
                raise DecodingError(f"corrupt compressed data: {exc}") from None
            data = self._inflate.unconsumed_tail
            if piece:
                yield piece
            # A full step may leave output pending inside zlib even with no input left.
            if not data and len(piece) < STEP:
                return

    def flush(self) -> Iterator[bytes]:
        yield from self.feed(b"")


def decoder_for(content_encoding: str | None) -> Decoder:
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return _Identity()
    if encoding in ("gzip", "x-gzip"):
        return _Zlib(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _Zlib(zlib.MAX_WBITS)
    raise DecodingError(f"unsupported Content-Encoding {content_encoding!r} (asked for {ACCEPT_ENCODING})")
