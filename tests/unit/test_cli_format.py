import pytest

from controller.cli import format_table
from podq.render import cell

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


def test_a_wide_result_is_cut_to_the_width_with_notes() -> None:
    result = {
        "columns": [{"name": n, "type": "String"} for n in ("a", "b", "c")],
        "rows": [["x" * 50, "y" * 10, "z"]],
        "total_rows": 1,
        "truncated": False,
    }
    lines = format_table(result, width=56).splitlines()
    assert lines[2] == "x" * 39 + "… | " + "y" * 10
    assert all(len(line) <= 56 for line in lines[:3])
    assert lines[3:] == [
        "(1 rows)",
        "(1 more column not shown: c)",
        "(values over 40 characters cut)",
        "(--output json shows everything)",
    ]


def test_cells_stay_on_one_line_and_nested_values_are_json() -> None:
    assert cell("a\nb\tc") == "a\\nb\\tc"
    assert cell([1, {"k": None}]) == '[1,{"k":null}]'
    assert (cell(True), cell(None), cell(1.5)) == ("true", "NULL", "1.5")
