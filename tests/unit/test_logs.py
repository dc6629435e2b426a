"""The JSON log formatter: fields bound for a query's run, given as extra, or read from the convention."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from controller.logs import JsonFormatter, bind_pod, bind_query

pytestmark = pytest.mark.unit


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("controller.x", logging.INFO, __file__, 1, msg, args, None)
    made.__dict__.update(extra)
    return made


def test_a_query_run_binds_its_id_attempt_and_pod_for_its_task_only() -> None:
    async def run() -> dict[str, object]:
        bind_query("q1", 2)
        bind_pod("podq-q1")
        return json.loads(JsonFormatter().format(record("pod %s created", "podq-q1")))

    line = asyncio.run(run())
    assert line["query_id"] == "q1" and line["attempt"] == 2 and line["pod"] == "podq-q1"
    assert line["message"] == "pod podq-q1 created" and line["level"] == "INFO"
    outside = json.loads(JsonFormatter().format(record("idle")))
    assert not {"query_id", "attempt", "pod"} & set(outside)


def test_extra_and_the_query_convention() -> None:
    line = json.loads(JsonFormatter().format(record("query %s: failed", "q2", error_type="sql")))
    assert line["query_id"] == "q2" and line["error_type"] == "sql"


def test_access_lines_and_exceptions() -> None:
    access = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/healthz", "1.1", 200), None,
    )  # fmt: skip
    line = json.loads(JsonFormatter().format(access))
    assert (line["method"], line["path"], line["status"], line["client"]) == (
        "GET",
        "/healthz",
        200,
        "127.0.0.1:5",
    )
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord("c", logging.ERROR, __file__, 1, "bad", (), sys.exc_info())
    text = JsonFormatter().format(failed)
    assert "\n" not in text and "ValueError: boom" in json.loads(text)["exception"]
