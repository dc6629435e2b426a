"""Refuses every SQL text that is not one read-only query over the registered tables, before polars sees it.

Polars' SQL does more than query registered frames: its table functions (``read_csv``, ``read_parquet``,
``read_ipc``, ``read_json``, ...) read local files and URLs, and it runs CREATE TABLE, DROP TABLE,
SHOW TABLES, EXPLAIN and TRUNCATE. The guard parses the text with sqlglot and allows, over the parsed
tree, only:

- exactly one statement, and it is a SELECT, a set operation (UNION, INTERSECT, EXCEPT) or a
  parenthesised query, each optionally with WITH;
- as query parts: SELECT, set operations, subqueries, CTEs, VALUES and UNNEST;
- as table references: a plain, unqualified name of a registered table or of a CTE in scope.

Also refused: SELECT INTO; any function whose name starts with ``read_`` or ``scan_``, wherever it
appears; and a parsed tree deeper than `MAX_DEPTH` levels. Polars plans and runs a query recursively
on threads with small stacks: 800 UNION ALL terms or 30,000 chained ``+`` crash polars 2.1 with
SIGSEGV, and a few thousand chained AND take minutes to plan. A chain of n binary operators or set
operations is n levels deep; ``IN (...)`` lists and select lists are flat. A refusal is a `validation`
error; text sqlglot cannot parse is an `sql` error, including text nested too deeply for the parser's
own recursion (about 40 levels of parentheses; polars' parser stops at a similar depth).

Table names resolve the way polars resolves them: an exact match first, else an ASCII-case-insensitive
one, whether the name is quoted or not (see `table_key`). Identifiers are quoted with double quotes:
the parser does not take polars' backtick quoting.
"""

from __future__ import annotations

import re
import string
from collections.abc import Collection

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from worker_image.protocol import ErrorType, WorkerError

# Of sqlglot's dialects, DuckDB's is the closest to the SQL polars accepts (sqlparser-rs, generic dialect).
DIALECT = "duckdb"

READ_ONLY = "only one read-only query (SELECT, WITH … SELECT, UNION, INTERSECT, EXCEPT) is allowed"

_STATEMENTS = (exp.Select, exp.SetOperation, exp.Subquery)
# Every node sqlglot counts as selectable (row sources, and the statements that write rows) must be one
# of these. `Explode` is how the DuckDB dialect spells UNNEST in a select list.
_QUERY_PARTS = (
    exp.Select,
    exp.SetOperation,
    exp.Subquery,
    exp.CTE,
    exp.Values,
    exp.Unnest,
    exp.Explode,
    exp.Table,
)
_READER_PREFIXES = ("read_", "scan_")
# 128 UNION ALL terms plan in about 0.4 s in polars 2.1; 200 take 3 s, 800 crash it.
MAX_DEPTH = 128
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_CLASS_REPR = re.compile(r"<class '(?:\w+\.)*(\w+)'>")


def table_key(name: str) -> str:
    """The form under which polars finds a table: case folded in ASCII only, as polars does."""
    return name.translate(_ASCII_LOWER)


def check_query(sql: str, tables: Collection[str]) -> None:
    """Raises `WorkerError` unless `sql` is one read-only query reading only `tables` and its own CTEs."""
    statement = _parse_one(sql)
    if not isinstance(statement, _STATEMENTS):
        raise _refuse(f"{READ_ONLY}; refused: {_snippet(statement)}")
    depth = _depth(statement)
    if depth > MAX_DEPTH:
        raise _refuse(
            f"the query is nested too deeply: {depth} levels, above the limit of {MAX_DEPTH} (each "
            "chained AND, OR, operator or UNION adds one; use IN (...) for long lists of values)"
        )
    registered = {table_key(name) for name in tables}
    for node in statement.walk():
        if isinstance(node, exp.Selectable) and not isinstance(node, _QUERY_PARTS):
            raise _refuse(f"{node.key.upper()} is not allowed in a query: {_snippet(node)}")
        if isinstance(node, exp.Into):
            raise _refuse("SELECT INTO is not allowed: a query cannot create tables")
        if isinstance(node, exp.Func) and _function_name(node).lower().startswith(_READER_PREFIXES):
            raise _refuse(
                f"function {_function_name(node)} is not allowed: SQL cannot read files or URLs; "
                "pass each dataset in the request's datasets instead"
            )
        if isinstance(node, exp.Table):
            _check_table(node, registered, tables)


def _parse_one(sql: str) -> exp.Expr:
    try:
        statements = [s for s in sqlglot.parse(sql, read=DIALECT) if s is not None]
    except ParseError as exc:
        raise WorkerError(ErrorType.SQL, f"SQL syntax error: {_parse_error_message(exc)}") from None
    except TokenError as exc:
        raise WorkerError(ErrorType.SQL, f"SQL syntax error: {exc}") from None
    except RecursionError:
        raise WorkerError(ErrorType.SQL, "SQL syntax error: the query is nested too deeply") from None
    except ValueError as exc:
        # sqlglot's parser raises it for some malformed input (e.g. "Cannot convert empty name into var").
        raise WorkerError(ErrorType.SQL, f"SQL syntax error: {exc}") from None
    if not statements:
        raise _refuse("the SQL holds no statement")
    if len(statements) > 1:
        raise _refuse(f"{READ_ONLY}; found {len(statements)} statements")
    return statements[0]


def _depth(root: exp.Expr) -> int:
    """Levels of the tree under `root`, counted without recursion (the tree may be thousands deep)."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in node.iter_expressions())
    return deepest


def _parse_error_message(exc: ParseError) -> str:
    if not exc.errors:
        return _ANSI_ESCAPE.sub("", str(exc))
    first = exc.errors[0]
    description = _CLASS_REPR.sub(r"\1", first["description"])
    return f"{description} (line {first['line']}, column {first['col']}, near {first['highlight']!r})"


def _check_table(table: exp.Table, registered: set[str], tables: Collection[str]) -> None:
    if isinstance(table.this, exp.Func):
        raise _refuse(f"table functions are not allowed: {_snippet(table.this)}; query a registered table")
    if not isinstance(table.this, exp.Identifier) or table.args.get("db") or table.args.get("catalog"):
        name = ".".join(part.sql(DIALECT) for part in table.parts)
        raise _refuse(f"only plain table names are allowed, not the qualified name {name}")
    key = table_key(table.name)
    if key in registered or key in _ctes_in_scope(table):
        return
    listing = ", ".join(tables) if tables else "none"
    raise WorkerError(
        ErrorType.VALIDATION,
        f"unknown table '{table.name}'; registered tables: {listing}",
        table=table.name,
        registered_tables=list(tables),
    )


def _ctes_in_scope(node: exp.Expr) -> set[str]:
    """Names of the CTEs of every WITH on the way from `node` to the root: the ones it may refer to."""
    names: set[str] = set()
    ancestor = node.parent
    while ancestor is not None:
        for value in ancestor.args.values():
            if isinstance(value, exp.With):
                names.update(table_key(cte.alias) for cte in value.expressions)
        ancestor = ancestor.parent
    return names


def _function_name(node: exp.Func) -> str:
    return node.name if isinstance(node, exp.Anonymous) else node.sql_name()


def _snippet(node: exp.Expr, limit: int = 80) -> str:
    text = node.sql(DIALECT)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _refuse(message: str) -> WorkerError:
    return WorkerError(ErrorType.VALIDATION, message)
