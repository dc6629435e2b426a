"""The fixture datasets, generated rather than committed: `generate(directory)`, or from a shell
``python -m tests.support.parquet_files OUTDIR``.

=================  ===================================================================================
simple.parquet     10 rows: id Int64 0..9, name String "item_<id>", value Float64 id * 1.5
empty.parquet      0 rows; a Int64, b String
wide.parquet       5 rows, 100 Int64 columns col_0 .. col_99
large.parquet      2000 rows: id Int64 0..1999, val Int64 id * 2
types.parquet      `TYPES_ROWS` rows, one column per type with a JSON encoding of note (see encode.py)
not_parquet.csv    simple's rows as CSV
fake.parquet       the same CSV under a parquet name
truncated.parquet  the first half of simple.parquet's bytes
=================  ===================================================================================
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
from decimal import Decimal
from pathlib import Path

import polars as pl

TYPES_ROWS = 4
# Row i of types.parquet's "float" column; every other column repeats one value (or null).
TYPES_FLOATS = [1.5, float("nan"), float("inf"), float("-inf")]
TYPES_VALUES = {
    "date": dt.date(2024, 1, 31),
    "datetime_tz": dt.datetime(2024, 1, 31, 12, 34, 56, 789000),
    "time": dt.time(12, 34, 56, 789000),
    "duration": dt.timedelta(days=1, hours=2, minutes=3, seconds=4, microseconds=500000),
    "decimal": Decimal("12.50"),
    "binary": b"\x00\xffpodq",
    "list": [1, 2, None],
    "struct": {"a": 1, "b": "x"},
    "categorical": "red",
    "big": 2**64 - 1,
}
TYPES_TIME_ZONE = "Europe/Amsterdam"


def simple_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {"id": range(10), "name": [f"item_{i}" for i in range(10)], "value": [i * 1.5 for i in range(10)]},
        schema={"id": pl.Int64, "name": pl.String, "value": pl.Float64},
    )


def types_frame() -> pl.DataFrame:
    def repeat(name: str) -> list[object]:
        return [TYPES_VALUES[name]] * TYPES_ROWS

    return pl.DataFrame(
        {
            "date": repeat("date"),
            "datetime_tz": pl.Series(repeat("datetime_tz")).dt.replace_time_zone(TYPES_TIME_ZONE),
            "time": repeat("time"),
            "duration": repeat("duration"),
            "decimal": pl.Series(repeat("decimal"), dtype=pl.Decimal(10, 2)),
            "float": TYPES_FLOATS,
            "nothing": pl.Series([None] * TYPES_ROWS, dtype=pl.Int64),
            "binary": repeat("binary"),
            "list": repeat("list"),
            "struct": repeat("struct"),
            "categorical": pl.Series(repeat("categorical"), dtype=pl.Categorical),
            "big": pl.Series(repeat("big"), dtype=pl.UInt64),
        }
    )


def generate(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    simple = simple_frame()
    simple.write_parquet(directory / "simple.parquet")
    pl.DataFrame(schema={"a": pl.Int64, "b": pl.String}).write_parquet(directory / "empty.parquet")
    pl.DataFrame({f"col_{i}": range(5) for i in range(100)}).write_parquet(directory / "wide.parquet")
    pl.DataFrame({"id": range(2000), "val": range(0, 4000, 2)}).write_parquet(directory / "large.parquet")
    types_frame().write_parquet(directory / "types.parquet")
    simple.write_csv(directory / "not_parquet.csv")
    shutil.copyfile(directory / "not_parquet.csv", directory / "fake.parquet")
    whole = (directory / "simple.parquet").read_bytes()
    (directory / "truncated.parquet").write_bytes(whole[: len(whole) // 2])


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.support.parquet_files OUTDIR")
    generate(Path(sys.argv[1]))
