"""Bounded Content-Encoding decoding (worker_image/decoding.py): no piece over STEP, whatever the ratio."""

from __future__ import annotations

import gzip
import zlib
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker_image.decoding import STEP, DecodingError, decoder_for

pytestmark = pytest.mark.unit


def decode(encoding: str | None, chunks: list[bytes]) -> list[bytes]:
    decoder = decoder_for(encoding)
    pieces = [piece for chunk in chunks for piece in decoder.feed(chunk)]
    return pieces + list(decoder.flush())


def test_a_bomb_comes_out_in_bounded_pieces() -> None:
    size = 64 * 2**20
    bomb = gzip.compress(b"\0" * size, compresslevel=9)
    assert len(bomb) < 128 * 1024  # one or two network reads
    pieces = decode("gzip", [bomb])
    assert max(len(piece) for piece in pieces) <= STEP
    assert sum(len(piece) for piece in pieces) == size


@given(
    st.binary(max_size=20_000),
    st.lists(st.integers(0, 25_000), max_size=6),
    st.sampled_from(["gzip", "deflate"]),
)
def test_any_split_of_the_body_decodes_to_the_original(data: bytes, cuts: list[int], encoding: str) -> None:
    body = gzip.compress(data) if encoding == "gzip" else zlib.compress(data)
    bounds = sorted({0, len(body), *(min(cut, len(body)) for cut in cuts)})
    chunks = [body[start:end] for start, end in pairwise(bounds)]
    assert b"".join(decode(encoding, chunks)) == data


@pytest.mark.parametrize("encoding", [None, "identity", "IDENTITY"])
def test_identity_passes_bytes_through(encoding: str | None) -> None:
    assert decode(encoding, [b"ab", b"", b"c"]) == [b"ab", b"c"]


@pytest.mark.parametrize(
    ("encoding", "body", "message"),
    [
        ("br", b"x", "unsupported Content-Encoding 'br'"),
        ("gzip, gzip", b"x", "unsupported Content-Encoding 'gzip, gzip'"),
        ("gzip", b"not gzip at all", "corrupt compressed data"),
        ("deflate", b"\xff" * 10, "corrupt compressed data"),
    ],
)
def test_what_cannot_be_decoded_is_refused(encoding: str, body: bytes, message: str) -> None:
    with pytest.raises(DecodingError, match=message):
        decode(encoding, [body])
