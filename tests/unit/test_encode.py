"""JSON encoding of query results: every documented type mapping, and nothing JSON cannot carry."""

from __future__ import annotations

import datetime as dt
import json
import math
import struct
from decimal import Decimal
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing.parametric import column, dataframes

from worker_image.encode import describe_columns, json_bytes, rows_within, to_rows

pytestmark = pytest.mark.unit


def encoded_column(series: pl.Series) -> list[Any]:
    return [row[0] for row in to_rows(series.to_frame())]


AMSTERDAM_NOON = dt.datetime(2024, 1, 31, 12, 34, 56, 789000)

CASES = [
    ("boolean", pl.Series([True, False, None]), [True, False, None]),
    ("int64", pl.Series([-(2**63), 0, None], dtype=pl.Int64), [-(2**63), 0, None]),
    ("uint64 beyond 2^53 stays exact", pl.Series([2**64 - 1], dtype=pl.UInt64), [2**64 - 1]),
    ("int128", pl.Series([-(2**100)], dtype=pl.Int128), [-(2**100)]),
    ("float64", pl.Series([1.5, -0.0, None]), [1.5, -0.0, None]),
    (
        "float64 non-finite",
        pl.Series([math.nan, math.inf, -math.inf]),
        ["NaN", "Infinity", "-Infinity"],
    ),
    ("float32 shortest", pl.Series([0.1, 3.4028235e38, None], dtype=pl.Float32), [0.1, 3.4028235e38, None]),
    ("float32 non-finite", pl.Series([math.nan, -math.inf], dtype=pl.Float32), ["NaN", "-Infinity"]),
    (
        "decimal exact with scale",
        pl.Series([Decimal("12.50"), Decimal("-0.01"), None]),
        ["12.50", "-0.01", None],
    ),
    ("decimal wide", pl.Series([Decimal("12345678901234567890.12")]), ["12345678901234567890.12"]),
    ("string", pl.Series(["a", "", None]), ["a", "", None]),
    ("categorical", pl.Series(["red", None], dtype=pl.Categorical), ["red", None]),
    ("enum", pl.Series(["low", "high"], dtype=pl.Enum(["low", "high"])), ["low", "high"]),
    ("date", pl.Series([dt.date(2024, 1, 31), dt.date(1, 1, 1), None]), ["2024-01-31", "0001-01-01", None]),
    (
        "datetime us",
        pl.Series([AMSTERDAM_NOON, None]),
        ["2024-01-31T12:34:56.789000", None],
    ),
    ("datetime ns", pl.Series([AMSTERDAM_NOON], dtype=pl.Datetime("ns")), ["2024-01-31T12:34:56.789000000"]),
    ("datetime ms", pl.Series([AMSTERDAM_NOON], dtype=pl.Datetime("ms")), ["2024-01-31T12:34:56.789"]),
    (
        "datetime with time zone keeps local time and offset",
        pl.Series([AMSTERDAM_NOON]).dt.replace_time_zone("Europe/Amsterdam"),
        ["2024-01-31T12:34:56.789000+01:00"],
    ),
    (
        "time",
        pl.Series([dt.time(12, 34, 56, 789000), dt.time(0, 0), None]),
        ["12:34:56.789", "00:00:00", None],
    ),
    (
        "duration ISO 8601",
        pl.Series([dt.timedelta(days=1, hours=2, minutes=3, seconds=4.5), dt.timedelta(seconds=-1), None]),
        ["P1DT2H3M4.5S", "-PT1S", None],
    ),
    ("binary base64", pl.Series([b"\x00\xffpodq", b"", None]), ["AP9wb2Rx", "", None]),
    ("null column", pl.Series([None, None]), [None, None]),
    ("list", pl.Series([[1, None], [], None]), [[1, None], [], None]),
    ("list of dates", pl.Series([[dt.date(2024, 1, 1)]]), [["2024-01-01"]]),
    ("list of non-finite floats", pl.Series([[1.0, math.nan, -math.inf]]), [[1.0, "NaN", "-Infinity"]]),
    ("array", pl.Series([[1, 2], [3, 4]], dtype=pl.Array(pl.Int64, 2)), [[1, 2], [3, 4]]),
    (
        "struct converts its fields",
        pl.Series([{"a": 1, "when": dt.date(2024, 1, 1), "x": math.inf}]),
        [{"a": 1, "when": "2024-01-01", "x": "Infinity"}],
    ),
    (
        "null struct stays null, struct of nulls stays an object",
        pl.Series([{"d": dt.date(2024, 1, 1)}, {"d": None}, None]),
        [{"d": "2024-01-01"}, {"d": None}, None],
    ),
    ("list of structs with binary", pl.Series([[{"b": b"x"}], None]), [[{"b": "eA=="}], None]),
]


@pytest.mark.parametrize(
    ("series", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_each_type_encodes_as_documented(series: pl.Series, expected: list[Any]) -> None:
    encoded = encoded_column(series)
    assert json.loads(json.dumps(encoded, allow_nan=False)) == expected


def test_rows_follow_column_order_and_names_are_never_interpreted() -> None:
    frame = pl.DataFrame({"^a.*$": [1, 2], "a": [dt.date(2024, 1, 1), None], "*": ["x", "y"]})
    assert to_rows(frame) == [[1, "2024-01-01", "x"], [2, None, "y"]]


def test_empty_frame_has_no_rows() -> None:
    assert to_rows(pl.DataFrame(schema={"a": pl.Int64, "b": pl.Date})) == []


def test_describe_columns_uses_polars_type_names() -> None:
    columns: dict[str, pl.DataType] = {
        "id": pl.Int64(),
        "name": pl.String(),
        "when": pl.Datetime("us", "UTC"),
        "l": pl.List(pl.Int8),
    }
    schema = pl.Schema(columns)
    assert describe_columns(schema) == [
        {"name": "id", "type": "Int64"},
        {"name": "name", "type": "String"},
        {"name": "when", "type": "Datetime(time_unit='us', time_zone='UTC')"},
        {"name": "l", "type": "List(Int8)"},
    ]


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_finite_float64_round_trips_exactly_through_json(value: float) -> None:
    [encoded] = encoded_column(pl.Series([value], dtype=pl.Float64))
    assert json.loads(json.dumps(encoded, allow_nan=False)) == value


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_finite_float32_reads_back_as_the_same_float32(value: float) -> None:
    [encoded] = encoded_column(pl.Series([value], dtype=pl.Float32))
    decoded = json.loads(json.dumps(encoded, allow_nan=False))
    assert struct.pack("<f", decoded) == struct.pack("<f", value)


NESTED = [
    column("list_float", dtype=pl.List(pl.Float64)),
    column("struct", dtype=pl.Struct({"f": pl.Float32, "d": pl.Duration("ns"), "b": pl.Binary})),
    column("array", dtype=pl.Array(pl.Datetime("ms", "Asia/Kolkata"), 2)),
]


@settings(max_examples=200, deadline=None)
@given(st.one_of(dataframes(max_size=5), dataframes(NESTED, max_size=5)))
def test_any_frame_encodes_to_strict_json(frame: pl.DataFrame) -> None:
    rows = to_rows(frame)
    json.dumps(rows, allow_nan=False)
    assert len(rows) == frame.height
    assert all(len(row) == frame.width for row in rows)


@pytest.mark.parametrize("max_bytes", [2, 10, 11, 12, 100, 10_000])
def test_rows_within_is_the_longest_prefix_that_fits(max_bytes: int) -> None:
    frame = pl.DataFrame({"s": ["é" * i for i in range(40)]})
    rows = rows_within(frame, max_bytes, batch_rows=7)
    assert rows == to_rows(frame)[: len(rows)]
    assert len(json_bytes(rows)) <= max_bytes
    if len(rows) < frame.height:
        assert len(json_bytes(to_rows(frame)[: len(rows) + 1])) > max_bytes
