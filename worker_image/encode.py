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

The typed forms of a result are an Arrow IPC stream (`arrow_stream`) and a Parquet file
(`parquet_file`), both written by polars: every polars type as Arrow has it (decimal128, timestamp with
its zone, duration, large_list, struct...), at polars' oldest compatibility level (``large_string``, not
``string_view``: any Arrow reader since 1.0 reads it), zstd-compressed. The worker writes both, because
it has the engine: the controller only stores and serves bytes, and its image holds neither polars nor
pyarrow. `typed_within` cuts the rows so that the JSON rows and the base64 of both fit in one byte
budget together: all three travel in the envelope.
"""

from __future__ import annotations

import base64
import io
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


def typed_within(
    frame: pl.DataFrame, max_bytes: int, batch_rows: int = 256
) -> tuple[list[list[Any]], dict[str, str]]:
    """The longest prefix of the frame's rows whose JSON array plus the base64 of its Arrow stream and of
    its Parquet file fit in `max_bytes`: the rows (as `to_rows`) and ``{"arrow": ..., "parquet": ...}``
    (base64 text). `ValueError` when not even the empty forms (the schema alone) fit."""
    rows: list[list[Any]] = []
    # sizes[n]: bytes of the JSON array of the first n rows.
    sizes = [len(b"[]")]
    for batch in frame.iter_slices(batch_rows):
        for row in to_rows(batch):
            size = sizes[-1] + len(json_bytes(row)) + (1 if rows else 0)
            if size > max_bytes:
                break
            rows.append(row)
            sizes.append(size)
        else:
            continue
        break

    def typed(count: int) -> dict[str, str] | None:
        head = frame.head(count)
        forms = {"arrow": _base64(arrow_stream(head)), "parquet": _base64(parquet_file(head))}
        return forms if sizes[count] + sum(map(len, forms.values())) <= max_bytes else None

    # The typed forms grow with the rows they hold; the longest prefix that fits is found by bisection.
    if (whole := typed(len(rows))) is not None:
        return rows, whole
    if (fitting := typed(0)) is None:
        raise ValueError("the result's schema alone is larger than the byte budget")
    low, high = 0, len(rows)  # typed(low) fits, typed(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        if (forms := typed(middle)) is not None:
            low, fitting = middle, forms
        else:
            high = middle
    return rows[:low], fitting


def arrow_stream(frame: pl.DataFrame) -> bytes:
    """The frame as an Arrow IPC stream, as the module docstring says."""
    buffer = io.BytesIO()
    frame.write_ipc_stream(buffer, compression="zstd", compat_level=pl.CompatLevel.oldest())
    return buffer.getvalue()


def parquet_file(frame: pl.DataFrame) -> bytes:
    """The frame as one Parquet file (polars' writer, which keeps the Arrow schema in the file's metadata:
    durations, time zones and categoricals read back as such)."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd")
    return buffer.getvalue()


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


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
