"""What the `podq` CLI prints: results and records as terminal tables, results as CSV or JSON.

Tables fit the terminal: a value longer than `MAX_CELL` characters is cut, and the columns that do not
fit are left out, with a note under the table saying what is missing and how to see it all.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from typing import Any

from podq.client.records import Column, InspectionResult, QueryResult, Record

MAX_CELL = 40
SEPARATOR = " | "


def terminal_width() -> int:
    """$COLUMNS, else the terminal's width, else 80 (output to a pipe or file)."""
    return shutil.get_terminal_size((80, 24)).columns


def cell(value: Any) -> str:
    """One value as table text: NULL for null, JSON for booleans and nested values, on one line."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool | list | dict):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], width: int | None = None
) -> tuple[str, list[str]]:
    """Aligned text and the notes on what was left out; `width` defaults to the terminal's."""
    width = terminal_width() if width is None else width
    cut = any(len(c) > MAX_CELL for row in rows for c in row)
    cells = [[_cut(c, MAX_CELL) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    shown, used = 0, 0
    for w in widths:
        needed = w + (len(SEPARATOR) if shown else 0)
        if shown and used + needed > width:
            break
        shown, used = shown + 1, used + needed
    notes = []
    if shown < len(headers):
        hidden = list(headers[shown:])
        names = ", ".join(hidden[:5]) + (", …" if len(hidden) > 5 else "")
        notes.append(f"{len(hidden)} more column{'s' if len(hidden) > 1 else ''} not shown: {names}")
    if cut:
        notes.append(f"values over {MAX_CELL} characters cut")

    def line(values: Sequence[str]) -> str:
        return SEPARATOR.join(
            v.ljust(w) for v, w in zip(values[:shown], widths[:shown], strict=True)
        ).rstrip()

    rule = "-+-".join("-" * w for w in widths[:shown])
    return "\n".join([line(headers), rule, *(line(r) for r in cells)]), notes


def format_table(result: dict[str, Any] | QueryResult, width: int | None = None) -> str:
    """A query result as a table, with a footer counting rows and saying what was left out."""
    if isinstance(result, dict):
        result = QueryResult(
            [Column.from_json(c) for c in result["columns"]],
            result["rows"],
            result["total_rows"],
            result["truncated"],
            result.get("truncated_by"),
        )
    text, notes = table([c.name for c in result.columns], [[cell(v) for v in r] for r in result.rows], width)
    shown, total = len(result.rows), result.total_rows
    footer = f"({shown} of {total} rows)" if result.truncated else f"({total} rows)"
    if notes:
        footer += "\n" + "\n".join(f"({n})" for n in notes) + "\n(--output json shows everything)"
    return f"{text}\n{footer}"


def format_inspection(result: InspectionResult, width: int | None = None) -> str:
    text, _ = table(["column", "type"], [[c.name, c.type] for c in result.columns], width)
    validity = "valid parquet" if result.valid else "NOT valid parquet"
    return f"{text}\n({result.row_count} rows, {len(result.columns)} columns, {validity})"


def _when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else ""


def format_records(records: Sequence[Record], width: int | None = None) -> str:
    """`podq list`: one line per record, newest first; the SQL last, cut to what is left of the width."""
    width = terminal_width() if width is None else width
    rows = [
        [
            r.id,
            r.status,
            r.error.error_type if r.error else "",
            _when(r.submitted_at),
            cell(r.sql if r.operation == "query" else r.url),
        ]
        for r in records
    ]
    fixed = [
        max([len(h), *(len(r[i]) for r in rows)])
        for i, h in enumerate(["id", "status", "error", "submitted"])
    ]
    room = max(10, width - sum(fixed) - 4 * len(SEPARATOR))
    rows = [[*r[:4], _cut(r[4], room)] for r in rows]
    text, _ = table(["id", "status", "error", "submitted", "sql"], rows, width=max(width, sum(fixed) + 40))
    return f"{text}\n({len(records)} queries)"
