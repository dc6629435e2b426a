"""`PODQ_LOG_FORMAT=json`: every line the controller writes is one JSON object, the access log included,
and the lines about a query name it, its attempt and its error type."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from controller.settings import Settings
from controller.testing.process import REPO_ROOT, ControllerProcess
from podq.client import Client, SQLError

pytestmark = pytest.mark.integration


def lines(controller: ControllerProcess) -> list[dict[str, Any]]:
    text = controller.log_path.read_text()
    parsed = []
    for line in text.splitlines():
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert parsed and all(isinstance(p, dict) for p in parsed)
    return parsed


def test_json_lines_name_the_query_attempt_and_error_type(
    start_controller: Callable[..., ControllerProcess],
) -> None:
    controller = start_controller(log_format="json")
    with Client(controller.url) as podq:
        ok = podq.run("SELECT 1 AS x")
        with pytest.raises(SQLError) as failed:
            podq.run("SELEC 1")
    controller.stop()
    logged = lines(controller)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in logged)

    about_ok = [line for line in logged if line.get("query_id") == ok.id]
    assert any(line["message"].startswith(f"query {ok.id}: starting attempt 1") for line in about_ok)
    assert any(line.get("attempt") == 1 and "worker pid" in line["message"] for line in about_ok)
    failed_id = failed.value.record.id
    assert any(
        line.get("query_id") == failed_id and line.get("error_type") == "sql" and line.get("attempt") == 1
        for line in logged
    ), [line for line in logged if line.get("query_id") == failed_id]

    access = [line for line in logged if line["logger"] == "uvicorn.access"]
    assert any({"method": "POST", "path": "/v1/queries", "status": 202}.items() <= a.items() for a in access)
    assert any(line["path"].startswith(f"/v1/queries/{ok.id}") and line["status"] == 200 for line in access)


def test_text_stays_the_default(start_controller: Callable[..., ControllerProcess]) -> None:
    controller = start_controller()
    with Client(controller.url) as podq:
        podq.run("SELECT 1 AS x")
    controller.stop()
    text = controller.log_path.read_text()
    assert text.startswith("podq serving on http://")
    assert " INFO uvicorn.access: 127.0.0.1:" in text and '"POST /v1/queries HTTP/1.1" 202' in text
    assert not any(line.startswith("{") for line in text.splitlines())


def test_a_bad_log_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="log_format"):
        Settings(log_format="xml")  # type: ignore[arg-type]
    done = subprocess.run(
        [sys.executable, "-m", "controller", "serve"],
        env={"PODQ_LOG_FORMAT": "yaml", "PODQ_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == "podq: refusing to start: PODQ_LOG_FORMAT: Input should be 'text' or 'json'\n"
