"""Turns a polars DataFrame into JSON-safe rows, converting column by column with polars expressions.

Every value keeps all of its information; where JSON has no type for it, it becomes a string:

==========================  =======================================================================
polars type                 JSON value
==========================  =======================================================================
Boolean                     ``true`` / ``false``
Int*, UInt*                 number, always exact: a UInt64 or Int128 beyond 2^53 stays an exact JSON
                            integer (JSON sets no limit; JavaScript's ``Number`` would round it)
Float64                     number; NaN, +inf, -inf become the strings ``"NaN"``, ``"Infinity"``,
                            ``"-Infinity"`` (JSON has no such numbers, and null would mean missing)
Float32, Float16            number: the shortest decimal that reads back as the same value
Decimal                     string, exact, with the column's scale: ``"12.50"``
String, Categorical, Enum   string
Date                        ISO 8601 string: ``"2024-01-31"``
Datetime                    ISO 8601 string with the time unit's digits, ``"2024-01-31T12:34:56.789000"``;
                            with a time zone, the local time and its offset: ``"…T13:34:56.789000+01:00"``
Time                        ISO 8601 string: ``"12:34:56.789"``
Duration                    ISO 8601 duration string: ``"P1DT2H3M4.5S"``, ``"-PT1S"``
Binary                      base64 string (standard alphabet, padded)
List, Array                 array, elements converted by these rules
Struct                      object, fields converted by these rules
Extension                   its storage value, converted by these rules
Null (any type)             ``null``
anything else               its polars string form
==========================  =======================================================================

`rows_within` converts a few rows at a time and stops before the rows' JSON would pass a byte budget,
so a frame of huge cells is never converted whole.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import polars as pl
from polars.datatypes import DataTypeClass


def describe_columns(schema: Mapping[str, pl.DataType]) -> list[dict[str, str]]:
    return [{"name": name, "type": str(dtype)} for name, dtype in schema.items()]


def to_rows(frame: pl.DataFrame) -> list[list[Any]]:
    """The frame's rows as lists in column order, every value JSON-safe as the module docstring says."""
    # Positional selection and aliases: column names may look like regexes or repeat after conversion.
    converted = frame.select(
        _json_expr(pl.nth(index), dtype).alias(str(index)) for index, dtype in enumerate(frame.dtypes)
    )
    columns = []
    for series, dtype in zip(converted.iter_columns(), frame.dtypes, strict=True):
        values = series.to_list()
        # Non-finite floats are the one thing no polars type can carry next to numbers.
        columns.append([_finite(value) for value in values] if _has_float(dtype) else values)
    return [list(row) for row in zip(*columns, strict=True)]


def rows_within(frame: pl.DataFrame, max_bytes: int, batch_rows: int = 256) -> list[list[Any]]:
    """The longest prefix of `to_rows(frame)` whose JSON array, as the envelope encodes it, fits in
    `max_bytes`."""
    rows: list[list[Any]] = []
    used = len(b"[]")
    for batch in frame.iter_slices(batch_rows):
        for row in to_rows(batch):
            # One byte for the comma before every row but the first.
            used += len(json_bytes(row)) + (1 if rows else 0)
            if used > max_bytes:
                return rows
            rows.append(row)
    return rows


def json_bytes(value: Any) -> bytes:
    """`value` encoded as the worker's envelope encodes it (worker_image/protocol.py)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _json_expr(expr: pl.Expr, dtype: pl.DataType | DataTypeClass) -> pl.Expr:
    dtype = _instance(dtype)
    if not _needs_conversion(dtype):
        return expr
    if isinstance(dtype, pl.Float32 | pl.Float16):
        # Polars prints the shortest decimal that round-trips for the value's own width.
        return expr.cast(pl.String).cast(pl.Float64)
    if isinstance(dtype, pl.Datetime):
        return expr.dt.to_string("iso:strict")
    if isinstance(dtype, pl.Date | pl.Time | pl.Duration):
        return expr.dt.to_string("iso")
    if isinstance(dtype, pl.Binary):
        return expr.bin.encode("base64")
    if isinstance(dtype, pl.Array):
        return _json_expr(expr.cast(pl.List(dtype.inner)), pl.List(dtype.inner))
    if isinstance(dtype, pl.List):
        return expr.list.eval(_json_expr(pl.element(), dtype.inner))
    if isinstance(dtype, pl.Struct):
        fields = [_json_expr(expr.struct.field(f.name), f.dtype).alias(f.name) for f in dtype.fields]
        return pl.when(expr.is_not_null()).then(pl.struct(fields))
    if isinstance(dtype, pl.Extension):
        return _json_expr(expr.ext.storage(), dtype.ext_storage())
    return expr.cast(pl.String)


def _needs_conversion(dtype: pl.DataType | DataTypeClass) -> bool:
    dtype = _instance(dtype)
    if isinstance(dtype, pl.List | pl.Array):
        return isinstance(dtype, pl.Array) or _needs_conversion(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(_needs_conversion(field.dtype) for field in dtype.fields)
    if isinstance(dtype, pl.Extension):
        return _needs_conversion(dtype.ext_storage())
    return not (dtype.is_integer() or isinstance(dtype, pl.Boolean | pl.String | pl.Null | pl.Float64))


def _has_float(dtype: pl.DataType | DataTypeClass) -> bool:
    dtype = _instance(dtype)
    if isinstance(dtype, pl.List | pl.Array):
        return _has_float(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(_has_float(field.dtype) for field in dtype.fields)
    if isinstance(dtype, pl.Extension):
        return _has_float(dtype.ext_storage())
    return dtype.is_float()


def _instance(dtype: pl.DataType | DataTypeClass) -> pl.DataType:
    # A nested type may hold a bare class (`pl.List(pl.Int64).inner is pl.Int64`); isinstance needs instances.
    return dtype() if isinstance(dtype, DataTypeClass) else dtype


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return value
