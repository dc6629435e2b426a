"""Checks that a downloaded file is parquet before polars reads it, and that its footer tells no lies.

In order: magic bytes at both ends; a footer length that fits in the file and under `MAX_FOOTER_BYTES`
(checked before anything parses the footer, so a footer cannot make the parser allocate without
bound); a footer pyarrow can decode; at most `MAX_COLUMNS` columns; row counts that are non-negative
and add up (the file's count is the sum of its row groups'); and, for every column chunk, declared
sizes that are non-negative and a byte range inside the file's data. Polars trusts these numbers when
it allocates and slices, and a lie makes it fail deep inside (a declared chunk size beyond the end of
the file panics polars 2.1). Anything refused is a `validation` error saying "Not a valid parquet file".

Honest but large sizes are not refused here: a query may stream a dataset larger than memory, and the
decoded size of a page is not in the footer (a dictionary- or run-length-encoded page of a gigabyte of
zeros declares a few bytes). The worker's memory limit bounds what a query decodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from worker_image.protocol import ErrorType, WorkerError

MAGIC = b"PAR1"
# Leading magic, footer length (4 bytes), trailing magic: no parquet file is shorter.
_MIN_SIZE = 2 * len(MAGIC) + 4
# Footers of real files stay well under this: 10,000 columns in 100 row groups take about 30 MiB.
MAX_FOOTER_BYTES = 64 * 2**20
MAX_COLUMNS = 10_000


class Footer(NamedTuple):
    """What a checked footer declares: rows, and the bytes of its column chunks once decompressed."""

    rows: int
    uncompressed_bytes: int


def check_parquet(
    path: Path, source: str, *, max_footer_bytes: int = MAX_FOOTER_BYTES, max_columns: int = MAX_COLUMNS
) -> Footer:
    """Raises `WorkerError` unless `path` is a readable, self-consistent parquet file; returns what its
    footer declares."""
    size = path.stat().st_size
    if size < _MIN_SIZE:
        raise _invalid(source, f"only {size} bytes")
    with path.open("rb") as file:
        head = file.read(len(MAGIC))
        file.seek(size - len(MAGIC) - 4)
        footer_length = int.from_bytes(file.read(4), "little")
        tail = file.read(len(MAGIC))
    if head != MAGIC:
        raise _invalid(source, "it does not start with the parquet magic bytes PAR1")
    if tail != MAGIC:
        raise _invalid(source, "it does not end with the parquet magic bytes PAR1 (truncated?)")
    data_end = size - len(MAGIC) - 4 - footer_length
    if data_end < len(MAGIC):
        raise _invalid(source, f"its footer claims {footer_length} bytes, more than the file holds")
    if footer_length > max_footer_bytes:
        raise _invalid(source, f"its footer is {footer_length} bytes, above the limit of {max_footer_bytes}")
    try:
        metadata = pq.read_metadata(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _invalid(source, f"its footer cannot be read: {exc}") from None
    if metadata.num_columns > max_columns:
        raise _invalid(source, f"it has {metadata.num_columns} columns, above the limit of {max_columns}")
    uncompressed = _check_sizes(metadata, data_end, source)
    return Footer(rows=metadata.num_rows, uncompressed_bytes=uncompressed)


def _check_sizes(metadata: pq.FileMetaData, data_end: int, source: str) -> int:
    """The sum of the column chunks' uncompressed sizes, once each is checked."""
    group_rows = [metadata.row_group(index).num_rows for index in range(metadata.num_row_groups)]
    if any(rows < 0 for rows in group_rows) or metadata.num_rows != sum(group_rows):
        raise _invalid(
            source,
            f"its footer claims {metadata.num_rows} rows but its row groups hold {sum(group_rows)}",
        )
    uncompressed = 0
    for group_index in range(metadata.num_row_groups):
        group = metadata.row_group(group_index)
        for column_index in range(group.num_columns):
            chunk = group.column(column_index)
            offsets = [o for o in (chunk.dictionary_page_offset, chunk.data_page_offset) if o]
            start = min(offsets, default=0)
            where = f"column '{chunk.path_in_schema}' in row group {group_index}"
            if chunk.total_compressed_size < 0 or chunk.total_uncompressed_size < 0:
                raise _invalid(source, f"its footer gives {where} a negative size")
            if start < len(MAGIC) or start + chunk.total_compressed_size > data_end:
                raise _invalid(
                    source,
                    f"its footer places {where} at bytes {start}..{start + chunk.total_compressed_size}, "
                    f"outside the file's data (bytes {len(MAGIC)}..{data_end})",
                )
            uncompressed += chunk.total_uncompressed_size
    return uncompressed


def _invalid(source: str, reason: str) -> WorkerError:
    return WorkerError(ErrorType.VALIDATION, f"Not a valid parquet file: {source}: {reason}", url=source)
