import pytest

from controller.cli import format_table

pytestmark = pytest.mark.unit


def test_table_aligns_columns_and_shows_nulls() -> None:
    result = {
        "columns": [{"name": "name", "type": "String"}, {"name": "n", "type": "Int64"}],
        "rows": [["alpha", 1], [None, 12345]],
        "total_rows": 2,
        "truncated": False,
    }
    assert format_table(result).splitlines() == [
        "name  | n",
        "------+------",
        "alpha | 1",
        "NULL  | 12345",
        "(2 rows)",
    ]


def test_truncated_footer_counts_shown_and_total() -> None:
    result = {"columns": [{"name": "x", "type": "Int64"}], "rows": [[1]], "total_rows": 50, "truncated": True}
    assert format_table(result).splitlines()[-1] == "(1 of 50 rows)"
