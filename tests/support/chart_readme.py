"""The values table of helm/podq/README.md, generated from values.schema.json and values.yaml.

One row per value the schema declares, in the schema's order: the dotted key, its type as the schema
states it (with the allowed values of an enum), its default from values.yaml, and the comment above it in
values.yaml (every value has one: tests/chart/test_chart_values.py), or else the schema's description.
tests/chart/test_chart_readme.py fails when the README's table differs; rewrite it with

    python -m tests.support.chart_readme
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "podq"
README = CHART_DIR / "README.md"
START = "<!-- values-table:start (generated: python -m tests.support.chart_readme) -->"
END = "<!-- values-table:end -->"
_MISSING = object()


def _comments(text: str) -> dict[str, str]:
    """Dotted key -> the comment lines directly above it, joined, for every key reached through mappings."""
    lines = text.splitlines()
    found: dict[str, str] = {}

    def walk(node: yaml.Node, path: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key, value in node.value:
            dotted = f"{path}.{key.value}" if path else str(key.value)
            above: list[str] = []
            line = key.start_mark.line - 1
            while line >= 0 and lines[line].strip().startswith("#"):
                above.insert(0, lines[line].strip().lstrip("#").strip())
                line -= 1
            found[dotted] = " ".join(above)
            walk(value, dotted)

    walk(yaml.compose(text), "")
    return found


def _leaves(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    rows: list[tuple[str, dict[str, Any]]] = []
    for key, sub in schema.get("properties", {}).items():
        dotted = f"{path}.{key}" if path else key
        rows.extend(_leaves(sub, dotted) if "properties" in sub else [(dotted, sub)])
    return rows


def _type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if kind is None and "oneOf" in schema:
        kind = [option.get("type", "?") for option in schema["oneOf"]]
    text = " or ".join(kind) if isinstance(kind, list) else str(kind or "any")
    if "enum" in schema:
        text += ": " + ", ".join(json.dumps(value) for value in schema["enum"])
    return text


def _default(values: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(values, dict) or part not in values:
            return _MISSING
        values = values[part]
    return values


def _cell(text: str) -> str:
    # Markdown would take `<release>` for an HTML tag and `|` for a column.
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def table() -> str:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    text = (CHART_DIR / "values.yaml").read_text()
    values, comments = yaml.safe_load(text), _comments(text)
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for dotted, sub in _leaves(schema):
        default = _default(values, dotted)
        shown = "(unset)" if default is _MISSING else f"`{json.dumps(default, ensure_ascii=False)}`"
        description = comments.get(dotted) or sub.get("description", "")
        rows.append(f"| `{dotted}` | {_cell(_type(sub))} | {_cell(shown)} | {_cell(description)} |")
    return "\n".join(rows)


def rendered(readme: str) -> str:
    """`readme` with the text between the markers replaced by the current table."""
    head, start, rest = readme.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"{README} lacks the markers {START!r} and {END!r}")
    return f"{head}{START}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    README.write_text(rendered(README.read_text()))
    print(f"wrote the values table of {README}", file=sys.stderr)
