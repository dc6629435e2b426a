"""The SQL guard: one read-only query over registered tables passes; everything that could read a file or
change state is refused before polars sees it. Where it matters, polars itself is the oracle."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from controller.testing.fileserver import FileServer
from worker_image.protocol import ErrorType, WorkerError
from worker_image.sqlguard import MAX_DEPTH, READ_ONLY, check_query, table_key

pytestmark = pytest.mark.unit

TABLES = ["table1", "table2"]


def examples(n: int) -> int:
    """`n` examples, scaled like every other test's by the loaded hypothesis profile (100 by default; fewer
    under tests/mutation.sh, which runs these tests once per mutant)."""
    return max(10, n * settings.default.max_examples // 100)


def polars_context() -> pl.SQLContext[pl.LazyFrame]:
    return pl.SQLContext(
        {
            "table1": pl.LazyFrame({"id": [1, 2], "name": ["a", "b"]}),
            "table2": pl.LazyFrame({"id": [2, 3], "val": [4, 6]}),
        }
    )


def refusal(sql: str, tables: list[str] = TABLES) -> WorkerError:
    with pytest.raises(WorkerError) as caught:
        check_query(sql, tables)
    return caught.value


ALLOWED = [
    "SELECT * FROM table1",
    "SELECT * FROM TABLE1",
    'SELECT * FROM "table1"',
    'SELECT * FROM "TaBlE1"',
    "SELECT a.id FROM table1 AS a JOIN table2 AS b ON a.id = b.id",
    "SELECT * FROM table1, table2",
    "SELECT * FROM table1 LEFT JOIN table2 USING (id)",
    "SELECT * FROM table1 NATURAL JOIN table2",
    "SELECT * FROM table1 FULL OUTER JOIN table2 ON table1.id = table2.id",
    "SELECT * FROM table1 t1 SEMI JOIN table2 t2 ON t1.id = t2.id",
    "WITH c AS (SELECT id FROM table1) SELECT * FROM c",
    "WITH c AS (SELECT id FROM table1), d AS (SELECT * FROM c) SELECT * FROM d JOIN C USING (id)",
    "WITH v AS (VALUES (1)) SELECT * FROM v",
    "SELECT * FROM (SELECT id FROM table1) AS s",
    "SELECT * FROM (WITH inner_cte AS (SELECT 1 AS x) SELECT * FROM inner_cte) AS s",
    "SELECT id FROM table1 WHERE id IN (SELECT id FROM table2)",
    "SELECT id FROM table1 WHERE EXISTS (SELECT 1 FROM table2 WHERE table2.id = table1.id)",
    "SELECT id FROM table1 UNION ALL SELECT id FROM table2",
    "SELECT id FROM table1 INTERSECT SELECT id FROM table2",
    "SELECT id FROM table1 EXCEPT SELECT id FROM table2",
    "(SELECT id FROM table1) UNION (SELECT id FROM table2)",
    "SELECT 1",
    "SELECT 1;",
    "SELECT * FROM (VALUES (1, 'a')) AS v(x, y)",
    "SELECT UNNEST([1, 2]) AS x",
    "SELECT * FROM UNNEST([1, 2]) AS u(a)",
    "SELECT * FROM table1 AS read_csv",
    "SELECT 'read_csv(''/etc/passwd'')' AS s FROM table1",
    "SELECT $$read_csv('/etc/passwd')$$ AS s",
    "SELECT id -- read_csv('/etc/passwd')\nFROM table1",
    "SELECT id /* read_parquet('/x') /* nested */ still a comment */ FROM table1",
    "SELECT name, count(*) AS n FROM table1 GROUP BY name ORDER BY 2 DESC LIMIT 3",
    "SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS r FROM table1",
    "SELECT id::varchar AS s FROM table1 WHERE name ILIKE 'A%'",
    "SELECT * EXCLUDE (name) FROM table1",
    "SELECT date_part('year', DATE '2024-01-01') AS y",
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_read_only_queries_pass_and_polars_runs_them(sql: str) -> None:
    check_query(sql, TABLES)
    polars_context().execute(sql, eager=True)


TABLE_FUNCTIONS = [
    "read_csv('/etc/passwd')",
    "read_csv('http://169.254.169.254/latest/meta-data')",
    "read_parquet('/etc/passwd')",
    "read_ipc('/etc/passwd')",
    "read_json('/etc/passwd')",
    "read_ndjson('/etc/passwd')",
    "read_csv_auto('/etc/passwd')",
    "read_delta('/tmp/table')",
    "scan_csv('/etc/passwd')",
    "scan_parquet('/etc/passwd')",
    "READ_CSV('/etc/passwd')",
    "\"read_csv\"('/etc/passwd')",
    "generate_series(1, 10)",
    "range(10)",
    "some_future_table_function('x')",
]


READS_FILES = "is not allowed: SQL cannot read files or URLs"


@pytest.mark.parametrize("function", TABLE_FUNCTIONS)
@pytest.mark.parametrize(
    "template",
    [
        "SELECT * FROM {f}",
        "SELECT * FROM {f} AS x",
        "SELECT * FROM table1 JOIN {f} AS x ON true",
        "SELECT * FROM table1, {f}",
        "SELECT * FROM (SELECT * FROM {f}) AS s",
        "WITH c AS (SELECT * FROM {f}) SELECT * FROM c",
        "SELECT id FROM table1 UNION ALL SELECT * FROM {f}",
        "SELECT id FROM table1 WHERE id IN (SELECT * FROM {f})",
    ],
)
def test_table_functions_are_refused_wherever_they_appear(function: str, template: str) -> None:
    error = refusal(template.format(f=function))
    assert error.error_type is ErrorType.VALIDATION
    assert "table functions are not allowed" in error.message


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("CREATE TABLE x AS SELECT * FROM table1", "refused: CREATE TABLE x AS"),
        ("CREATE TABLE x (a INT)", "refused: CREATE TABLE x"),
        ("CREATE VIEW v AS SELECT 1", "refused: CREATE VIEW"),
        ("DROP TABLE table1", "refused: DROP TABLE table1"),
        ("SHOW TABLES", "refused: SHOW TABLES"),
        ("INSERT INTO table1 VALUES (1, 'x')", "refused: INSERT INTO"),
        ("DELETE FROM table1", "refused: DELETE FROM"),
        ("UPDATE table1 SET id = 1", "refused: UPDATE table1"),
        ("TRUNCATE table1", "refused: TRUNCATE"),
        ("EXPLAIN SELECT * FROM table1", "refused: EXPLAIN"),
        ("SET threads = 1", "refused: SET"),
        ("COPY table1 TO '/tmp/out.csv'", "refused: COPY"),
        ("DESCRIBE table1", "refused: DESCRIBE"),
        ("PRAGMA version", "refused: PRAGMA"),
        ("ATTACH 'other.db' AS other", "refused: ATTACH"),
        ("VALUES (1)", "refused: VALUES"),
        ("SELECT 1; SELECT 2", "found 2 statements"),
        ("SELECT * FROM table1; DROP TABLE table1", "found 2 statements"),
        ("SELECT * INTO copy FROM table1", "SELECT INTO is not allowed"),
        (
            "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x",
            "INSERT is not allowed in a query",
        ),
        ("SELECT * FROM table1, LATERAL (SELECT 1)", "LATERAL is not allowed in a query"),
        ("SELECT * FROM main.table1", "not the qualified name main.table1"),
        ('SELECT * FROM "main"."table1"', 'not the qualified name "main"."table1"'),
        ("SELECT * FROM a.b.table1", "not the qualified name a.b.table1"),
        ("-- nothing but a comment", "holds no statement"),
        (";", "holds no statement"),
        # Reader functions are refused outside FROM too.
        ("SELECT read_csv('/etc/passwd') AS x", READS_FILES),
        ("SELECT id FROM table1 WHERE name = read_parquet('/etc/passwd')", READS_FILES),
        ("SELECT scan_ipc('/x') AS x FROM table1", READS_FILES),
        ("SELECT length(read_json('/etc/passwd')) AS x", READS_FILES),
    ],
)
def test_anything_but_one_read_only_query_is_refused(sql: str, fragment: str) -> None:
    error = refusal(sql)
    assert error.error_type is ErrorType.VALIDATION
    assert fragment in error.message


@pytest.mark.parametrize(
    ("sql", "unknown"),
    [
        ("SELECT * FROM nope", "nope"),
        ("SELECT * FROM table1 JOIN other ON true", "other"),
        ("SELECT * FROM (SELECT * FROM hidden) AS s", "hidden"),
        ('SELECT * FROM "table1 "', "table1 "),
        ("SELECT * FROM (WITH c AS (SELECT 1) SELECT * FROM c) AS s, c", "c"),
        ("WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b WHERE 1 IN (SELECT * FROM a, d)", "d"),
    ],
)
def test_unknown_tables_are_named_with_the_registered_ones(sql: str, unknown: str) -> None:
    error = refusal(sql)
    assert error.error_type is ErrorType.VALIDATION
    assert error.message == f"unknown table '{unknown}'; registered tables: table1, table2"
    assert error.details == {"table": unknown, "registered_tables": TABLES}


def test_with_no_tables_registered_every_table_is_unknown() -> None:
    assert refusal("SELECT * FROM t", []).message == "unknown table 't'; registered tables: none"


@pytest.mark.parametrize(
    "sql",
    [
        "SELEC * FROM table1",
        "SELECT * FROM",
        "SELECT 'unterminated",
        "SELECT (1",
        "SELECT " + "(" * 500 + "1" + ")" * 500,
    ],
    ids=[
        "misspelt keyword",
        "missing table",
        "unterminated string",
        "unclosed parenthesis",
        "nested too deeply",
    ],
)
def test_unparseable_sql_is_an_sql_error_with_the_parser_message(sql: str) -> None:
    error = refusal(sql)
    assert error.error_type is ErrorType.SQL
    assert error.message.startswith("SQL syntax error: ")
    assert "\x1b[" not in error.message


def test_table_key_folds_ascii_case_only_like_polars() -> None:
    assert table_key("TaBle_1") == "table_1"
    assert table_key("ÄB") == "Äb"


# Names polars can register and SQL can quote: no NUL, no surrogates, no control characters.
identifiers = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@settings(max_examples=examples(300), deadline=None)
@given(registered=st.lists(identifiers, min_size=1, max_size=4, unique_by=table_key), data=st.data())
def test_guard_and_polars_agree_on_which_names_resolve(registered: list[str], data: st.DataObject) -> None:
    probe = data.draw(st.sampled_from(registered).map(_mangle_case(data)) | identifiers)
    sql = f"SELECT * FROM {quoted(probe)}"
    try:
        check_query(sql, registered)
        guard_accepts = True
    except WorkerError as error:
        assert error.message.startswith(f"unknown table '{probe}'")
        guard_accepts = False
    context = pl.SQLContext({name: pl.LazyFrame({"x": [1]}) for name in registered})
    try:
        context.execute(sql, eager=True)
        polars_resolves = True
    except pl.exceptions.SQLInterfaceError as error:
        assert "not found" in str(error)
        polars_resolves = False
    assert guard_accepts == polars_resolves


def _mangle_case(data: st.DataObject) -> Callable[[str], str]:
    def mangle(name: str) -> str:
        return "".join(data.draw(st.sampled_from([c, c.upper(), c.lower()])) for c in name)

    return mangle


@settings(max_examples=examples(200), deadline=None)
@given(st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,10}", fullmatch=True))
def test_unquoted_names_resolve_case_insensitively(name: str) -> None:
    assume(table_key(name) not in {"table1", "table2"})
    name = "t_" + name
    check_query(f"SELECT * FROM {name.upper()}", [name.lower()])
    assert refusal(f"SELECT * FROM {name}x", [name]).message.startswith("unknown table")


# Fragments that open or close strings, identifiers and comments in one SQL dialect or another.
LEXICAL_FRAGMENTS = [
    "'", '"', "`", "$$", "$a$", "/*", "*/", "--", "\n", "\\", "E'", ";", "#", "[", "]", "''", '""',
    "SELECT", "*", "FROM", "table1", ",", "(", ")", " ", "AS", "x", "UNION ALL", "WITH", "c", "U&", "X",
]  # fmt: skip


@pytest.fixture(scope="module")
def secret_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    """A server whose request log shows whether polars ever tried to read the secret."""
    directory = tmp_path_factory.mktemp("secret")
    (directory / "secret.csv").write_text("SECRET_MARKER\n42\n")
    with FileServer(directory) as server:
        yield server


def _lexical_sql(prefix: str, before: list[str], spelling: str, after: list[str], joiner: str) -> str:
    # NUL marks where the file server's URL goes; no fragment contains one.
    return prefix + joiner.join([*before, f"{spelling}('\0')", *after])


lexical_sql = st.builds(
    _lexical_sql,
    st.sampled_from(["", "SELECT ", "SELECT * FROM ", "SELECT * FROM table1 WHERE id IN (SELECT * FROM "]),
    st.lists(st.sampled_from(LEXICAL_FRAGMENTS), max_size=6),
    st.sampled_from(["read_csv", "READ_CSV", '"read_csv"', "`read_csv`"]),
    st.lists(st.sampled_from(LEXICAL_FRAGMENTS), max_size=6),
    st.sampled_from(["", " "]),
)


@settings(
    max_examples=examples(1000), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lexical_sql)
def test_no_lexical_trick_lets_polars_read_what_the_guard_passed(
    secret_server: FileServer, template: str
) -> None:
    sql = template.replace("\0", f"{secret_server.url}/secret.csv")
    logging.disable(logging.WARNING)  # sqlglot warns about every statement it falls back on
    try:
        check_query(sql, TABLES)
    except WorkerError:
        return
    finally:
        logging.disable(logging.NOTSET)
    with contextlib.suppress(Exception):
        polars_context().execute(sql, eager=True)
    assert not secret_server.requested("secret.csv"), sql


def _or_chain(terms: int) -> str:
    return "SELECT id FROM table1 WHERE " + " OR ".join(f"id = {i}" for i in range(terms))


@pytest.mark.parametrize(
    "sql",
    [
        _or_chain(MAX_DEPTH),
        "SELECT " + "+".join(["1"] * 30_000) + " AS x",
        " UNION ALL ".join(["SELECT id FROM table1"] * 1_000),
    ],
    ids=["OR chain just over", "30k chained +", "1k UNION ALL"],
)
def test_trees_deeper_than_the_limit_are_refused(sql: str) -> None:
    error = refusal(sql)
    assert error.error_type is ErrorType.VALIDATION
    assert error.message.startswith("the query is nested too deeply: ")
    assert f"above the limit of {MAX_DEPTH}" in error.message


def test_flat_lists_of_any_length_are_not_deep() -> None:
    check_query(_or_chain(MAX_DEPTH - 10), TABLES)
    check_query("SELECT id FROM table1 WHERE id IN (" + ", ".join(map(str, range(10_000))) + ")", TABLES)


# Bounds and the exact words a refused user reads -----------------------------------------------------------


def _union_chain(terms: int) -> str:
    return " UNION ALL ".join(["SELECT id FROM table1"] * terms)


def test_a_tree_exactly_at_the_depth_limit_passes_and_one_level_more_is_refused() -> None:
    # n UNION ALL terms are n - 1 set operations over a SELECT ... FROM table1 (4 levels): n + 3 levels.
    at_limit = MAX_DEPTH - 3

    check_query(_union_chain(at_limit), TABLES)
    error = refusal(_union_chain(at_limit + 1))

    assert error.error_type is ErrorType.VALIDATION
    assert error.message == (
        f"the query is nested too deeply: {MAX_DEPTH + 1} levels, above the limit of {MAX_DEPTH} (each "
        "chained AND, OR, operator or UNION adds one; use IN (...) for long lists of values)"
    )


def test_an_or_chain_at_the_depth_limit_passes() -> None:
    # n ORed comparisons in a WHERE: n - 1 ORs, an EQ, its column and identifier, under WHERE and SELECT.
    check_query(_or_chain(MAX_DEPTH - 4), TABLES)
    assert f"{MAX_DEPTH + 1} levels" in refusal(_or_chain(MAX_DEPTH - 3)).message


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "SELECT *\nFROM table1\nWHERE id = = 1",
            "SQL syntax error: Required keyword: 'expression' missing for EQ (line 3, column 12, near '=')",
        ),
        ("SELECT (1", "SQL syntax error: Expecting ) (line 1, column 9, near '1')"),
        (
            "SELECT id FROM table1 WHERE",
            "SQL syntax error: Required keyword: 'this' missing for Where (line 1, column 27, near 'WHERE')",
        ),
        ("SELECT 'unterminated", "SQL syntax error: Error tokenizing 'SELECT 'unterminate'"),
        ("SELECT " + "(" * 500 + "1" + ")" * 500, "SQL syntax error: the query is nested too deeply"),
        # sqlglot's parser raises a ValueError for a keyword argument with an empty name.
        ('SELECT f("" => 1) FROM t', "SQL syntax error: Cannot convert empty name into var."),
    ],
    ids=[
        "line and column",
        "unclosed parenthesis",
        "missing condition",
        "unterminated string",
        "too deep",
        "empty argument name",
    ],
)
def test_a_syntax_error_says_where(sql: str, message: str) -> None:
    error = refusal(sql)

    assert error.error_type is ErrorType.SQL
    assert error.message == message


def test_a_syntax_error_names_sqlglot_classes_by_their_short_name() -> None:
    # sqlglot says "missing for <class 'sqlglot.expressions.core.Add'>"; the user reads "Add".
    assert refusal("SELECT 1 +").message == (
        "SQL syntax error: Required keyword: 'expression' missing for Add (line 1, column 10, near '+')"
    )


@pytest.mark.parametrize(
    ("name_length", "shown"),
    [
        # "DROP TABLE " is 11 characters: a 69-character name makes 80 in all, shown whole.
        (69, "DROP TABLE " + "t" * 69),
        (70, "DROP TABLE " + "t" * 68 + "…"),
    ],
)
def test_a_refused_statement_is_quoted_up_to_80_characters(name_length: int, shown: str) -> None:
    error = refusal("DROP TABLE " + "t" * name_length)

    assert error.message == f"{READ_ONLY}; refused: {shown}"
    assert len(shown) <= 80


def test_a_refused_query_part_is_named_and_quoted() -> None:
    sql = "SELECT * FROM table1, LATERAL (SELECT 1)"

    assert refusal(sql).message.startswith("LATERAL is not allowed in a query: LATERAL (SELECT 1)")


def test_two_statements_are_counted() -> None:
    assert refusal("SELECT 1; SELECT 2; SELECT 3").message == f"{READ_ONLY}; found 3 statements"


def test_nothing_but_a_comment_is_refused_as_no_statement() -> None:
    error = refusal("-- nothing")

    assert (error.error_type, error.message) == (ErrorType.VALIDATION, "the SQL holds no statement")


def test_reader_functions_are_named_in_the_refusal() -> None:
    assert refusal("SELECT read_csv('/etc/passwd') AS x").message == (
        "function READ_CSV is not allowed: SQL cannot read files or URLs; "
        "pass each dataset in the request's datasets instead"
    )
    assert refusal("SELECT length(READ_JSON('/x')) AS x").message.startswith(
        "function READ_JSON is not allowed"
    )


def test_a_table_function_is_quoted_in_its_refusal() -> None:
    assert refusal("SELECT * FROM generate_series(1, 10)").message == (
        "table functions are not allowed: GENERATE_SERIES(1, 10); query a registered table"
    )


def test_select_into_is_refused_in_words() -> None:
    assert refusal("SELECT * INTO copy FROM table1").message == (
        "SELECT INTO is not allowed: a query cannot create tables"
    )


def test_a_cte_is_in_scope_only_below_its_with() -> None:
    # A CTE of a subquery in one branch is not visible from the other.
    sql = "SELECT * FROM (WITH c AS (SELECT 1 AS x) SELECT * FROM c) AS s UNION ALL SELECT * FROM c"

    assert refusal(sql).message.startswith("unknown table 'c'")
