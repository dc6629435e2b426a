"""What the local launcher keeps of a worker's stdout and stderr, however the bytes arrive."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.launchers.local.streams import EnvelopeScanner, TailBuffer
from worker_image.protocol import encode_envelope

pytestmark = pytest.mark.unit

ENVELOPE = encode_envelope({"ok": True, "result": {"rows": [["ünïcode"]]}}).encode()


def scan(chunks: list[bytes], max_bytes: int = 1 << 20) -> EnvelopeScanner:
    scanner = EnvelopeScanner(max_bytes)
    for chunk in chunks:
        scanner.feed(chunk)
    scanner.close()
    return scanner


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_the_last_envelope_line_survives_any_chunking(cuts: list[int]) -> None:
    stdout = b"library noise\nPODQ-RESULT-V\n" + b"x" * 5000 + b"\n" + ENVELOPE + b"\n"

    scanner = scan(split_at(stdout, cuts))

    assert scanner.envelope == ENVELOPE
    assert not scanner.oversized


def test_an_unterminated_last_line_counts() -> None:
    assert scan([b"noise\n", ENVELOPE]).envelope == ENVELOPE


def test_noise_after_the_envelope_does_not_hide_it() -> None:
    assert scan([ENVELOPE + b"\nlate noise\n"]).envelope == ENVELOPE


def test_the_later_of_two_envelopes_wins() -> None:
    first = encode_envelope({"ok": True, "result": {}}).encode()

    assert scan([first + b"\n" + ENVELOPE + b"\n"]).envelope == ENVELOPE


def test_no_marker_no_envelope() -> None:
    scanner = scan([b"PODQ-RESULT\n", b"just output\n"])

    assert scanner.envelope is None
    assert not scanner.oversized


def test_an_envelope_over_the_cap_is_reported_not_kept() -> None:
    scanner = scan([ENVELOPE[:10], ENVELOPE[10:] + b"\n"], max_bytes=len(ENVELOPE) - 1)

    assert scanner.envelope is None
    assert scanner.oversized


def test_a_smaller_envelope_after_an_oversized_one_wins() -> None:
    big = encode_envelope({"ok": True, "result": {"blob": "y" * 1000}}).encode()

    scanner = scan([big + b"\n" + ENVELOPE + b"\n"], max_bytes=len(ENVELOPE))

    assert scanner.envelope == ENVELOPE
    assert not scanner.oversized


@given(chunks=st.lists(st.binary(max_size=300), max_size=30))
def test_the_tail_is_the_last_bytes_fed(chunks: list[bytes]) -> None:
    tail = TailBuffer(100)
    for chunk in chunks:
        tail.feed(chunk)

    assert tail.text() == b"".join(chunks)[-100:].decode(errors="replace")
