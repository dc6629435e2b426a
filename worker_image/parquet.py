"""Checks that a downloaded file is parquet before polars reads it: magic bytes at both ends, then a
footer pyarrow can decode. Anything else is a `validation` error saying "Not a valid parquet file"."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from worker_image.protocol import ErrorType, WorkerError

MAGIC = b"PAR1"
# Leading magic, footer length (4 bytes), trailing magic: no parquet file is shorter.
_MIN_SIZE = 2 * len(MAGIC) + 4


def check_parquet(path: Path, source: str) -> int:
    """Raises `WorkerError` unless `path` is a readable parquet file; returns its row count."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(len(MAGIC))
        file.seek(max(size - len(MAGIC), 0))
        tail = file.read(len(MAGIC))
    if size < _MIN_SIZE:
        raise _invalid(source, f"only {size} bytes")
    if head != MAGIC:
        raise _invalid(source, "it does not start with the parquet magic bytes PAR1")
    if tail != MAGIC:
        raise _invalid(source, "it does not end with the parquet magic bytes PAR1 (truncated?)")
    try:
        metadata = pq.read_metadata(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _invalid(source, f"its footer cannot be read: {exc}") from None
    rows: int = metadata.num_rows
    return rows


def _invalid(source: str, reason: str) -> WorkerError:
    return WorkerError(ErrorType.VALIDATION, f"Not a valid parquet file: {source}: {reason}", url=source)
