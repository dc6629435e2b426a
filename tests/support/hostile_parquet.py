"""Hostile parquet files, generated rather than committed: `generate_hostile(directory)`.

Each is small on disk (the largest, `wide_5000.parquet`, under 2 MiB; all take 3 s to generate). The
lies are patched into the thrift footer of a real file, so everything but the lie stays valid.

===========================  ===========================================================================
lying_rows.parquet           10 rows; the footer's num_rows says 2**62
lying_chunk.parquet          the column chunk's total_compressed_size says 2**40 (polars 2.1 panics)
lying_uncompressed.parquet   the column chunk's total_uncompressed_size says 2**40 (polars ignores it)
footer_too_long.parquet      the footer length field says 0xFFFFFFF0 bytes
garbage_footer.parquet       magic bytes at both ends, a footer that is not thrift
negative_page.parquet        a data page header whose num_values is -64: polars 2.1 asks the
                             allocator for 2**61 bytes and aborts the process (SIGABRT)
wide_5000.parquet            one row, `WIDE_COLUMNS` Int64 columns
binary.parquet               a Binary column of bytes that are not UTF-8: `BINARY_VALUES`
bad_utf8.parquet             a String column whose bytes are not UTF-8
huge_cells.parquet           `HUGE_CELL_ROWS` rows, each one String cell of `HUGE_CELL_CHARS` "é"
zeros.parquet                `ZEROS_ROWS` Int64 zeros (1 GiB decoded) in 600 KiB: a decompression bomb
===========================  ===========================================================================
"""

from __future__ import annotations

import struct
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

WIDE_COLUMNS = 5000
BINARY_VALUES = [b"\xff\xfe\x00podq", b"\x80"]
HUGE_CELL_ROWS = 4
HUGE_CELL_CHARS = 100_000  # 200,000 bytes of UTF-8 each
ZEROS_ROWS = 2**27
_ZEROS_GROUP_ROWS = 2**23

# Thrift compact protocol: the header of an i64 (or i32) field whose id is one more than the previous one.
_NEXT_I64 = b"\x16"
_NEXT_I32 = b"\x15"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _zigzag(value: int) -> bytes:
    return _varint((value << 1) ^ (value >> 63))


def _patch_footer(data: bytes, old: bytes, new: bytes) -> bytes:
    """`data` with the first `old` in its footer replaced by `new`, the footer length rewritten."""
    length = struct.unpack("<I", data[-8:-4])[0]
    body, footer = data[: -8 - length], data[-8 - length : -8]
    assert old in footer, "the pattern to patch is not in the footer"
    footer = footer.replace(old, new, 1)
    return body + footer + struct.pack("<I", len(footer)) + b"PAR1"


def _lies(directory: Path) -> None:
    base = directory / "ten_rows.parquet"
    pl.DataFrame({"id": range(10)}).write_parquet(base, compression="uncompressed", statistics=False)
    data = base.read_bytes()
    chunk = pq.read_metadata(base).row_group(0).column(0)
    values, uncompressed, compressed = (
        chunk.num_values,
        chunk.total_uncompressed_size,
        chunk.total_compressed_size,
    )
    # FileMetaData's num_rows comes before its row groups, so it is the first i64 field holding 10.
    (directory / "lying_rows.parquet").write_bytes(
        _patch_footer(data, _NEXT_I64 + _zigzag(10), _NEXT_I64 + _zigzag(2**62))
    )
    # ColumnMetaData: num_values, total_uncompressed_size, total_compressed_size, in a row.
    sizes = _NEXT_I64 + _zigzag(values) + _NEXT_I64 + _zigzag(uncompressed) + _NEXT_I64 + _zigzag(compressed)
    (directory / "lying_chunk.parquet").write_bytes(
        _patch_footer(data, sizes, sizes[: -len(_zigzag(compressed))] + _zigzag(2**40))
    )
    lying = _NEXT_I64 + _zigzag(values) + _NEXT_I64 + _zigzag(2**40) + _NEXT_I64 + _zigzag(compressed)
    (directory / "lying_uncompressed.parquet").write_bytes(_patch_footer(data, sizes, lying))
    (directory / "footer_too_long.parquet").write_bytes(data[:-8] + struct.pack("<I", 0xFFFFFFF0) + b"PAR1")
    garbage = b"not thrift at all"
    (directory / "garbage_footer.parquet").write_bytes(
        b"PAR1" + b"\x00" * 32 + garbage + struct.pack("<I", len(garbage)) + b"PAR1"
    )
    # The data page header's DataPageHeader (field 5, a struct: 0x2c) starts with num_values (i32, 10).
    header = b"\x2c" + _NEXT_I32 + _zigzag(10)
    start = chunk.data_page_offset
    assert data.count(header, start) == 1, "the data page header is not where expected"
    at = data.index(header, start) + len(header) - 1
    (directory / "negative_page.parquet").write_bytes(data[:at] + _zigzag(-64) + data[at + 1 :])
    base.unlink()


def _strings(directory: Path) -> None:
    pq.write_table(pa.table({"b": pa.array(BINARY_VALUES, pa.binary())}), directory / "binary.parquet")
    raw = b"ok\xff\xfe"
    offsets = pa.py_buffer(struct.pack("<3i", 0, 2, len(raw)))
    not_utf8 = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(raw)])
    pq.write_table(pa.table({"s": not_utf8}), directory / "bad_utf8.parquet")
    cells = pl.DataFrame({"n": range(HUGE_CELL_ROWS), "cell": ["é" * HUGE_CELL_CHARS] * HUGE_CELL_ROWS})
    cells.write_parquet(directory / "huge_cells.parquet", compression="zstd")


def _zeros(directory: Path) -> None:
    zeros = pa.table({"x": pa.repeat(0, _ZEROS_GROUP_ROWS).cast(pa.int64())})
    with pq.ParquetWriter(directory / "zeros.parquet", zeros.schema, compression="zstd") as writer:
        for _ in range(ZEROS_ROWS // _ZEROS_GROUP_ROWS):
            writer.write_table(zeros)


def generate_hostile(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    _lies(directory)
    _strings(directory)
    _zeros(directory)
    pl.DataFrame({f"c{i}": [i] for i in range(WIDE_COLUMNS)}).write_parquet(directory / "wide_5000.parquet")
