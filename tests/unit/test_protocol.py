"""The worker protocol: the envelope survives noisy logs and is never misread when cut or garbled."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker_image.protocol import (
    ENVELOPE_MARKER,
    TERMINATION_MESSAGE_LIMIT,
    EnvelopeError,
    ErrorType,
    WorkerError,
    compact_error,
    decode_envelope,
    encode_envelope,
    error_info,
)

pytestmark = pytest.mark.unit

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)
payloads = st.fixed_dictionaries({"ok": st.booleans(), "result": json_values})
# Stray output a library might print: anything without a newline, including text that looks like a marker.
noise_lines = st.text(st.characters(exclude_characters="\n\r\x1c\x1d\x1e\x85\u2028\u2029\x0b\x0c")) | st.just(
    f"{ENVELOPE_MARKER} 2 0000 {{}}"
)


@given(payloads, st.lists(noise_lines, max_size=5))
def test_envelope_after_any_noise_decodes_to_the_payload(payload: dict[str, Any], noise: list[str]) -> None:
    output = "\n".join([*noise, encode_envelope(payload)]) + "\n"
    assert decode_envelope(output) == payload


def test_the_last_envelope_wins() -> None:
    output = (
        encode_envelope({"ok": False, "error": "first"}) + "\n" + encode_envelope({"ok": True, "result": 2})
    )
    assert decode_envelope(output) == {"ok": True, "result": 2}


def test_envelope_is_one_line_even_with_newlines_in_values() -> None:
    line = encode_envelope({"ok": True, "result": {"text": "a\nb\r\u2028c"}})
    assert "\n" not in line
    assert decode_envelope(line)["result"] == {"text": "a\nb\r\u2028c"}


def test_non_finite_numbers_are_refused_at_encoding() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        encode_envelope({"ok": True, "result": float("nan")})


@given(payloads, st.data())
def test_an_envelope_cut_anywhere_is_reported_not_misread(
    payload: dict[str, Any], data: st.DataObject
) -> None:
    line = encode_envelope(payload)
    cut = data.draw(st.integers(min_value=0, max_value=len(line) - 1))
    with pytest.raises(EnvelopeError):
        decode_envelope(line[:cut])


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda line: line.replace('"ok":true', '"ok":tru'), "length mismatch"),
        (lambda line: line.replace('"ok":true', '"ok":nope'), "checksum mismatch"),
        (lambda line: line.rsplit(" ", 1)[0], "cut short|length mismatch"),
        (lambda line: line.replace(" 11 ", " x1 "), "length mismatch"),
    ],
    ids=["shorter body", "same length, other bytes", "body dropped", "length not a number"],
)
def test_garbled_envelopes_are_reported(mangle: Any, message: str) -> None:
    line = encode_envelope({"ok": True})
    assert line.split(" ")[1] == "11"
    with pytest.raises(EnvelopeError, match=message):
        decode_envelope(mangle(line))


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("", "no result envelope"),
        ("just some logs\nmore logs\n", "no result envelope"),
        (f"x {ENVELOPE_MARKER} 2 abc {{}}", "no result envelope"),
    ],
)
def test_output_without_an_envelope_is_reported(output: str, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        decode_envelope(output)


def test_envelope_that_is_valid_json_but_not_an_object_with_ok_is_reported() -> None:
    for body in ("[1, 2]", '{"result": 1}'):
        raw = body.encode()
        line = f"{ENVELOPE_MARKER} {len(raw)} {hashlib.sha256(raw).hexdigest()} {body}"
        with pytest.raises(EnvelopeError, match="no 'ok' field"):
            decode_envelope(line)


@pytest.mark.parametrize(
    ("error_type", "retryable"),
    [
        (ErrorType.VALIDATION, False),
        (ErrorType.NETWORK, True),
        (ErrorType.SQL, False),
        (ErrorType.MEMORY, False),
        (ErrorType.CRASH, True),
        (ErrorType.INTERNAL, True),
    ],
)
def test_error_info_has_the_taxonomy_shape_and_default_retryability(
    error_type: ErrorType, retryable: bool
) -> None:
    assert error_info(error_type, "m") == {
        "error_type": error_type.value,
        "message": "m",
        "details": {},
        "retryable": retryable,
    }


def test_worker_error_carries_details_and_may_override_retryability() -> None:
    error = WorkerError(ErrorType.NETWORK, "HTTP 404", retryable=False, url="http://x", status_code=404)
    assert error.info() == {
        "error_type": "network",
        "message": "HTTP 404",
        "details": {"url": "http://x", "status_code": 404},
        "retryable": False,
    }


def test_small_errors_are_written_to_the_termination_message_unchanged() -> None:
    info = error_info(ErrorType.SQL, "column 'x' not found", {"column": "x"})
    assert json.loads(compact_error(info)) == info


@given(st.text(min_size=1, max_size=20_000), st.dictionaries(st.text(), st.text(max_size=3000), max_size=5))
def test_compact_error_always_fits_the_kubernetes_limit(message: str, details: dict[str, str]) -> None:
    info = error_info(ErrorType.VALIDATION, message, details)
    compact = compact_error(info)
    assert len(compact.encode()) <= TERMINATION_MESSAGE_LIMIT
    decoded = json.loads(compact)
    assert decoded["error_type"] == "validation"
    assert message.startswith(decoded["message"])
