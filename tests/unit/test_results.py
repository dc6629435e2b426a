"""Typed results: the worker's cut of rows and Arrow stream to one byte budget (worker_image/encode.py),
and the controller's content negotiation and renderings (controller/http/results.py)."""

from __future__ import annotations

import base64
import io

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from controller.http.results import NotAcceptable, negotiate, render, truncation_headers
from worker_image.encode import arrow_stream, json_bytes, parquet_file, to_rows, typed_within

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("format_param", "accept", "expected"),
    [
        (None, None, "json"),
        (None, "", "json"),
        (None, "*/*", "json"),
        (None, "text/csv", "csv"),
        (None, "application/vnd.apache.arrow.stream", "arrow"),
        (None, "application/vnd.apache.parquet", "parquet"),
        (None, "application/x-parquet", "parquet"),
        (None, "text/csv;q=0.5, application/vnd.apache.parquet;q=0.9", "parquet"),
        (None, "*/*, text/csv", "csv"),  # a named type beats a wildcard of the same quality
        (None, "text/html, text/csv;q=0.1", "csv"),
        (None, "application/json, text/csv", "json"),  # equals: the client's order
        ("parquet", "text/csv", "parquet"),  # the parameter wins
    ],
)
def test_negotiate(format_param: str | None, accept: str | None, expected: str) -> None:
    assert negotiate(format_param, accept) == expected


@pytest.mark.parametrize(
    ("format_param", "accept"), [("xlsx", None), (None, "text/html"), (None, "text/csv;q=0"), ("", None)]
)
def test_negotiate_refuses_what_podq_does_not_serve(format_param: str | None, accept: str | None) -> None:
    with pytest.raises(NotAcceptable):
        negotiate(format_param, accept)


def _result(frame: pl.DataFrame, **cut: object) -> dict[str, object]:
    return {
        "columns": [{"name": n, "type": str(t)} for n, t in frame.schema.items()],
        "rows": to_rows(frame),
        "total_rows": cut.get("total_rows", frame.height),
        "truncated": bool(cut.get("truncated_by")),
        "truncated_by": cut.get("truncated_by"),
        "arrow": base64.b64encode(arrow_stream(frame)).decode(),
        "parquet": base64.b64encode(parquet_file(frame)).decode(),
    }


def test_csv_leaves_null_empty_and_writes_nested_values_as_json() -> None:
    frame = pl.DataFrame({"s": ["a,b", None], "l": [[1, 2], None], "b": [True, None]})
    body = render("q", _result(frame), "csv").body.decode()
    assert body == 's,l,b\n"a,b","[1, 2]",true\n,,\n'


def test_every_rendering_holds_the_same_rows_and_states_the_cut() -> None:
    frame = pl.DataFrame({"x": [1, 2, 3]})
    result = _result(frame, total_rows=10, truncated_by="rows")
    expected_headers = {
        "Podq-Total-Rows": "10",
        "Podq-Returned-Rows": "3",
        "Podq-Truncated": "true",
        "Podq-Truncated-By": "rows",
    }
    assert truncation_headers(result) == expected_headers
    json_body = render("q", result, "json")
    assert json_body.media_type == "application/json"
    assert b"arrow" not in json_body.body and b"parquet" not in json_body.body
    arrow = render("q", result, "arrow")
    assert arrow.headers["Content-Disposition"] == 'attachment; filename="q.arrows"'
    assert_frame_equal(pl.read_ipc_stream(arrow.body), frame)
    assert_frame_equal(pl.read_parquet(io.BytesIO(render("q", result, "parquet").body)), frame)
    for name in ("json", "csv", "arrow", "parquet"):
        assert render("q", result, name).headers.items() >= expected_headers.items()
    uncut = truncation_headers(_result(frame))
    assert uncut["Podq-Truncated"] == "false" and "Podq-Truncated-By" not in uncut


@pytest.mark.parametrize("max_bytes", [2500, 3000, 4000, 6000, 100_000])
def test_typed_within_is_the_longest_prefix_whose_rows_and_typed_forms_fit(max_bytes: int) -> None:
    frame = pl.DataFrame({"s": [f"value {i} " * (i % 7) for i in range(60)], "i": range(60)})
    rows, forms = typed_within(frame, max_bytes, batch_rows=7)
    count = len(rows)

    def size(n: int) -> int:
        head = frame.head(n)
        typed = base64.b64encode(arrow_stream(head)) + base64.b64encode(parquet_file(head))
        return len(json_bytes(to_rows(head))) + len(typed)

    assert rows == to_rows(frame.head(count))
    assert_frame_equal(pl.read_ipc_stream(base64.b64decode(forms["arrow"])), frame.head(count))
    assert_frame_equal(pl.read_parquet(io.BytesIO(base64.b64decode(forms["parquet"]))), frame.head(count))
    assert size(count) <= max_bytes
    assert count == frame.height or size(count + 1) > max_bytes


def test_typed_within_refuses_a_budget_below_the_schema() -> None:
    with pytest.raises(ValueError, match="schema alone"):
        typed_within(pl.DataFrame({"x": [1]}), 500)
