"""Operation `inspect`: fetch one dataset, check it is parquet, describe its columns and row count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from worker_image.encode import describe_columns
from worker_image.fetch import fetch_all
from worker_image.parquet import check_parquet
from worker_image.protocol import ErrorType, FetchOptions, WorkerError


def inspect_dataset(url: str, options: FetchOptions, directory: Path) -> dict[str, Any]:
    [path] = fetch_all([url], options, directory)
    row_count = check_parquet(path, url).rows
    try:
        schema = pl.scan_parquet(path).collect_schema()
    except pl.exceptions.PolarsError as exc:
        raise WorkerError(
            ErrorType.VALIDATION,
            f"Not a valid parquet file: {url}: polars cannot read its schema: {exc}",
            url=url,
        ) from None
    return {"valid": True, "columns": describe_columns(schema), "row_count": row_count}
