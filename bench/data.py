"""Deterministic star-schema parquet: one `sales` fact table and the `customers` and `products` dimensions.

Values come from hashing the row number (no numpy, no random state), so a size always yields the same
files and the engines see identical inputs.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

CUSTOMERS = 50_000
PRODUCTS = 2_000
REGIONS = ["north", "south", "east", "west", "central"]
SEGMENTS = ["consumer", "corporate", "home_office"]
CATEGORIES = ["books", "garden", "toys", "food", "tools", "music", "sports", "beauty"]
TABLES = ("sales", "customers", "products")


def _pick(seed: int, modulus: int) -> pl.Expr:
    return (pl.col("row").hash(seed) % modulus).cast(pl.Int64)


def _label(seed: int, labels: list[str]) -> pl.Expr:
    return _pick(seed, len(labels)).replace_strict(dict(enumerate(labels)), return_dtype=pl.String)


def _rows(count: int) -> pl.DataFrame:
    return pl.DataFrame({"row": pl.int_range(count, dtype=pl.Int64, eager=True)})


def generate(directory: Path, fact_rows: int) -> dict[str, Path]:
    """Write the three tables under `directory` (kept if already there); returns table name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.parquet" for name in TABLES}
    if all(path.exists() for path in paths.values()):
        return paths
    sales = _rows(fact_rows).select(
        sale_id=pl.col("row"),
        customer_id=_pick(1, CUSTOMERS),
        product_id=_pick(2, PRODUCTS),
        day=pl.date(2024, 1, 1) + pl.duration(days=_pick(3, 730)),
        quantity=_pick(4, 20) + 1,
        unit_price=(_pick(5, 100_000) / 100).cast(pl.Float64),
    )
    customers = _rows(CUSTOMERS).select(
        customer_id=pl.col("row"), region=_label(6, REGIONS), segment=_label(7, SEGMENTS)
    )
    products = _rows(PRODUCTS).select(
        product_id=pl.col("row"),
        category=_label(8, CATEGORIES),
        list_price=(_pick(9, 50_000) / 100).cast(pl.Float64),
    )
    for name, frame in (("sales", sales), ("customers", customers), ("products", products)):
        frame.write_parquet(paths[name], row_group_size=256 * 1024)
    return paths
