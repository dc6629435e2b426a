"""The Idempotency-Key header's syntax and the request fingerprint (pure)."""

from __future__ import annotations

import pytest

from controller.http.idempotency import MAX_KEY_LENGTH, fingerprint, parse_key
from controller.models import InspectionIn, QueryIn

pytestmark = pytest.mark.unit

VALID = [
    ("uuid", "8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
    ("sf-string spelling is the same key", '"8e03978e"', "8e03978e"),
    ("surrounding whitespace", "  abc \t", "abc"),
    ("inner space", "retry of job 7", "retry of job 7"),
    ("escaped quote and backslash", r'"a\"b\\c"', 'a"b\\c'),
    ("at the length cap", "k" * MAX_KEY_LENGTH, "k" * MAX_KEY_LENGTH),
    ("a lone quote is not an sf-string", '"', '"'),
]


@pytest.mark.parametrize(("header", "key"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_keys(header: str, key: str) -> None:
    assert parse_key(header) == key


INVALID = [
    ("empty", "", "empty"),
    ("blank", "   ", "empty"),
    ("empty sf-string", '""', "empty"),
    ("over the cap", "k" * (MAX_KEY_LENGTH + 1), "longer than 255"),
    ("sf-string over the cap", '"' + "k" * (MAX_KEY_LENGTH + 1) + '"', "longer than 255"),
    ("non-ASCII", "clé", "printable ASCII"),
    ("control character", "a\x00b", "printable ASCII"),
    ("DEL", "a\x7fb", "printable ASCII"),
    ("unknown escape in sf-string", r'"a\nb"', "only"),
    ("trailing backslash in sf-string", '"ab\\"', "only"),
    ("bare quote inside sf-string", '"a"b"', "unescaped"),
]


@pytest.mark.parametrize(("header", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_keys(header: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_key(header)


def test_fingerprint_is_of_the_parsed_request_not_its_spelling() -> None:
    one = QueryIn.model_validate_json('{"sql": "SELECT 1", "max_rows": 5}')
    same = QueryIn.model_validate_json('{ "max_rows" : 5,\n "sql":"SELECT 1" }')
    other_rows = QueryIn.model_validate_json('{"sql": "SELECT 1", "max_rows": 6}')
    other_sql = QueryIn.model_validate_json('{"sql": "SELECT 2", "max_rows": 5}')
    assert fingerprint("query", one) == fingerprint("query", same)
    assert len({fingerprint("query", q) for q in (one, other_rows, other_sql)}) == 3


def test_fingerprint_tells_the_operations_apart() -> None:
    inspection = InspectionIn.model_validate({"url": "http://h/a.parquet"})
    assert fingerprint("query", inspection) != fingerprint("inspect", inspection)
