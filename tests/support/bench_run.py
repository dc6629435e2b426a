"""Running `python -m bench` from a test: its tables parsed, so a smoke run proves the code still works
(no figure is judged: benchmarks inform, they do not gate)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.support.tools import run_ok

ROOT = Path(__file__).resolve().parents[2]
BENCH_TIMEOUT = 600


def run_bench(*args: str, env: dict[str, str] | None = None) -> str:
    """`python -m bench --size smoke ARGS`'s Markdown; fails the test with its stderr when it fails."""
    return run_ok(
        [sys.executable, "-m", "bench", "--size", "smoke", *args],
        timeout=BENCH_TIMEOUT,
        what=f"python -m bench {' '.join(args)}",
        cwd=ROOT,
        env=env if env is not None else dict(os.environ),
    )


def tables(markdown: str) -> list[list[list[str]]]:
    """Every Markdown table: its rows (header first, separator dropped), each a list of cells."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= {"-", ":"} for cell in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def section(markdown: str, heading: str) -> str:
    """The text of the `## heading...` section, up to the next `## `."""
    marker = f"\n## {heading}"
    assert marker in markdown, f"no section {heading!r} in:\n{markdown}"
    return markdown.split(marker, 1)[1].split("\n## ", 1)[0]


def assert_tables_filled(text: str) -> None:
    """Every table has data rows, and every cell of them that should be a figure is one."""
    found = tables(text)
    assert found, f"no table in:\n{text}"
    for table in found:
        header, *rows = table
        assert rows, f"table {header} has no rows"
        for row in rows:
            assert len(row) == len(header), (header, row)
            figures = [cell for cell in row[1:] if cell]
            assert all(_is_figure(cell) for cell in figures), (header, row)


def _is_figure(cell: str) -> bool:
    text = cell.strip("*").removesuffix("x").replace(",", "")
    try:
        float(text)
    except ValueError:
        return False
    return True
