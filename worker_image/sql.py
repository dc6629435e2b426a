"""Operation `query`: check the SQL, fetch and check every dataset, run the query with polars.

Each dataset is registered under its table name as a lazy parquet scan. The result is the first
`max_rows` rows plus the total row count. The head is collected first (polars pushes the slice down, so
a plain scan reads only what it returns); when it holds fewer than `max_rows` rows it is the whole
result and its height is the count. Only a full head needs a second query over the same plan, a count
(polars prunes every column the count does not need). Neither materialises the full result, so a query
over a dataset larger than the worker's memory can still return its first rows; the price is that a
query with more than `max_rows` rows whose count cannot be pruned is computed twice. (`pl.collect_all`
on both would share the plan, but it caches the scan whole: a plain `SELECT *` then reads every row.)

A query without datasets imports neither the fetch (httpx) nor the parquet check (pyarrow): they are a
large share of the worker's start-up.

The rows returned are cut twice: at `max_rows`, and at `max_result_bytes` of result (a few huge cells
can make a handful of rows larger than any log or response should carry). `truncated` says rows were
cut, `truncated_by` which cap cut them: "rows" or "bytes" (null when nothing was cut). The result holds
the rows three times: as JSON (`rows`, what the record shows) and typed, as the base64 of an Arrow IPC
stream (`arrow`) and of a Parquet file (`parquet`; see worker_image/encode.py), which the controller
serves as they are; the byte cap counts the whole result, all three forms included, so the envelope
stays within it.

A dataset polars finds malformed while reading (a page it cannot decode, a string that is not UTF-8)
is a `validation` error, like one refused by worker_image/parquet.py; other polars errors are `sql`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from worker_image.encode import describe_columns, json_bytes, typed_within
from worker_image.protocol import DatasetRef, ErrorType, FetchOptions, WorkerError
from worker_image.sqlguard import check_query, table_key
from worker_image.usage import Meter

# How polars 2.1 begins the message of a parquet file it cannot decode.
_MALFORMED_DATA = "parquet: File out of specification"
_MISSING_COLUMN = re.compile(r'unable to find column "((?:[^"\\]|\\.)*)"; valid columns: (\[.*?\])')


def run_query(
    sql: str,
    datasets: Sequence[DatasetRef],
    options: FetchOptions,
    directory: Path,
    *,
    max_rows: int,
    max_result_bytes: int,
    meter: Meter | None = None,
) -> dict[str, Any]:
    meter = meter or Meter()
    names = [dataset["table_name"] for dataset in datasets]
    _check_unique(names)
    check_query(sql, names)
    with meter.phase("fetch"):
        paths = _fetch_checked(datasets, options, directory, meter) if datasets else []
    context = pl.SQLContext({name: pl.scan_parquet(path) for name, path in zip(names, paths, strict=True)})
    try:
        with meter.phase("execute"):
            query = context.execute(sql)
            head = query.head(max_rows).collect()
            total_rows: int = head.height
            if total_rows == max_rows:
                total_rows = query.select(pl.len()).collect().item()
    except pl.exceptions.PolarsError as exc:
        raise _sql_error(exc) from None
    with meter.phase("encode"):
        return _result(head, total_rows, max_result_bytes)


def _fetch_checked(
    datasets: Sequence[DatasetRef], options: FetchOptions, directory: Path, meter: Meter
) -> list[Path]:
    from worker_image.fetch import fetch_all
    from worker_image.parquet import check_parquet

    paths = fetch_all([dataset["url"] for dataset in datasets], options, directory)
    for path, dataset in zip(paths, datasets, strict=True):
        footer = check_parquet(path, dataset["url"])
        meter.dataset(
            dataset["table_name"],
            bytes_fetched=path.stat().st_size,
            rows=footer.rows,
            uncompressed_bytes=footer.uncompressed_bytes,
        )
    return paths


def _result(head: pl.DataFrame, total_rows: int, max_result_bytes: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "columns": describe_columns(head.schema),
        "rows": [],
        "total_rows": total_rows,
        "truncated": True,
        "truncated_by": "bytes",
        "arrow": "",
        "parquet": "",
    }
    # Everything but the rows and the typed forms, at its largest; those get what is left.
    budget = max_result_bytes - len(json_bytes(result)) + len(b"[]")
    try:
        if budget < len(b"[]"):
            raise ValueError("no room for the rows")
        rows, typed = typed_within(head, budget)
    except ValueError:
        raise WorkerError(
            ErrorType.VALIDATION,
            "the result's column list and typed schema alone are larger than max_result_bytes "
            f"({max_result_bytes} bytes): select fewer columns",
            max_result_bytes=max_result_bytes,
        ) from None
    if len(rows) < head.height:
        result["truncated_by"] = "bytes"
    elif total_rows > head.height:
        result["truncated_by"] = "rows"
    else:
        result["truncated_by"] = None
    result["rows"] = rows
    result.update(typed)
    result["truncated"] = result["truncated_by"] is not None
    return result


def _check_unique(names: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for name in names:
        if table_key(name) in seen:
            raise WorkerError(
                ErrorType.VALIDATION,
                f"table names must be unique ignoring case: '{seen[table_key(name)]}' and '{name}' clash",
                table=name,
            )
        seen[table_key(name)] = name


def _sql_error(exc: pl.exceptions.PolarsError) -> WorkerError:
    message = _summary(str(exc))
    if message.startswith(_MALFORMED_DATA):
        return WorkerError(
            ErrorType.VALIDATION, f"Not a valid parquet file: polars cannot read a dataset: {message}"
        )
    if isinstance(exc, pl.exceptions.ColumnNotFoundError) and (match := _MISSING_COLUMN.search(message)):
        column = _unquote(match.group(1))
        available = ", ".join(_column_list(match.group(2)))
        hint = message[match.end() :].strip()
        text = f"column '{column}' not found; available columns: {available}" + (f". {hint}" if hint else "")
        return WorkerError(ErrorType.SQL, text, column=column)
    return WorkerError(ErrorType.SQL, message, polars_error=type(exc).__name__)


def _summary(message: str) -> str:
    """Polars' message without the query plan and context stack it appends (they name temp files)."""
    kept = []
    for paragraph in message.split("\n\n"):
        if paragraph.startswith(("Resolved plan until failure", "This error occurred with")):
            break
        kept.append(paragraph.strip())
    return " ".join(kept)


def _unquote(debug_text: str) -> str:
    try:
        value: str = json.loads(f'"{debug_text}"')
    except ValueError:
        return debug_text
    return value


def _column_list(debug_list: str) -> list[str]:
    try:
        columns: list[str] = json.loads(debug_list)
    except ValueError:
        return [debug_list]
    return columns
