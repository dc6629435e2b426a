"""The `podq` CLI against a real `podq serve` (the README's own examples: test_cli_readme.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.testing.process import REPO_ROOT, ControllerProcess, free_port

pytestmark = pytest.mark.integration


def podq(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("PODQ_URL", "PODQ_TOKEN")}
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        check=False,
        env={**base, **(env or {})},
    )


def test_submit_wait_prints_the_result_table(running_controller: ControllerProcess) -> None:
    done = podq("submit", "--url", running_controller.url, "--sql", "SELECT 1 AS x", "--wait")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["x", "-", "1", "(1 rows)"]


def test_submit_with_datasets_and_json_output(
    running_controller: ControllerProcess, file_server: str
) -> None:
    done = podq(
        "submit",
        "--url",
        running_controller.url,
        "--wait",
        "--json",
        "--max-rows",
        "3",
        "--sql",
        "SELECT id FROM big ORDER BY id",
        "--dataset",
        f"big={file_server}/large.parquet",
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["result"]["rows"] == [[0], [1], [2]]
    assert record["result"]["total_rows"] == 2000


def test_failed_query_exits_1_with_the_typed_error(running_controller: ControllerProcess) -> None:
    done = podq("submit", "--url", running_controller.url, "--sql", "SELEC 1", "--wait")
    assert done.returncode == 1
    assert "sql:" in done.stderr


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [("--memory", "1Pi", "limits.memory"), ("--queue-timeout", "1e9", "limits.queue_timeout_seconds")],
)
def test_refused_submission_exits_2_naming_the_field(
    running_controller: ControllerProcess, option: str, value: str, field: str
) -> None:
    done = podq("submit", "--url", running_controller.url, "--sql", "SELECT 1", option, value)
    assert done.returncode == 2
    assert f"HTTP 422: validation: {field}" in done.stderr


def test_result_json_states_the_cut_and_list_json_pages(
    running_controller: ControllerProcess, file_server: str, tmp_path: Path
) -> None:
    url = ("--url", running_controller.url)
    submitted = podq(
        "submit",
        *url,
        "--max-rows",
        "2",
        "--sql",
        "SELECT id FROM big",
        "--dataset",
        f"big={file_server}/large.parquet",
    )
    assert submitted.returncode == 0, submitted.stderr
    query_id = submitted.stdout.strip()
    done = podq("result", query_id, *url, "--format", "json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["columns"] == [{"name": "id", "type": "Int64"}] and len(result["rows"]) == 2
    assert "cut by max_rows: 2 of 2000 rows" in done.stderr
    page = json.loads(podq("list", *url, "--limit", "1", "--output", "json").stdout)
    assert [r["id"] for r in page["items"]] == [query_id] and page["next_cursor"]
    assert json.loads(podq("get", query_id, *url, "--output", "json").stdout)["status"] == "succeeded"
    out = tmp_path / "out.json"
    assert podq("result", query_id, *url, "--format", "json", "-o", str(out)).returncode == 0
    assert json.loads(out.read_text()) == result


def test_cancel_a_running_query_then_wait_exits_1(
    running_controller: ControllerProcess, file_server: str
) -> None:
    url = ("--url", running_controller.url)
    slow = f"t={file_server}/slow?seconds=60&drip=0.2"
    query_id = podq("submit", *url, "--sql", "SELECT * FROM t", "--dataset", slow).stdout.strip()
    cancelled = podq("cancel", query_id, *url)
    assert (cancelled.returncode, cancelled.stdout) == (0, f"query {query_id} cancelled\n")
    waited = podq("wait", query_id, *url)
    assert waited.returncode == 1 and f"query {query_id} cancelled: cancelled:" in waited.stderr
    assert podq("result", query_id, *url).returncode == 1


def test_token_comes_from_the_environment(start_controller: Callable[..., ControllerProcess]) -> None:
    controller = start_controller(api_tokens=json.dumps(["cli-token"]))
    refused = podq("list", "--url", controller.url)
    assert refused.returncode == 2 and "HTTP 401" in refused.stderr
    listed = podq("list", env={"PODQ_URL": controller.url, "PODQ_TOKEN": "cli-token"})
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[-1] == "(0 queries)"


def test_help_shows_examples_and_exit_codes() -> None:
    for args in (["--help"], ["result", "--help"]):
        done = podq(*args)
        assert done.returncode == 0
        assert "podq submit --sql" in done.stdout and "exit codes:" in done.stdout


def test_unreachable_controller_exits_2() -> None:
    done = podq("submit", "--url", f"http://127.0.0.1:{free_port()}", "--sql", "SELECT 1")
    assert done.returncode == 2
    assert "cannot reach" in done.stderr


def test_bad_dataset_argument_is_a_usage_error() -> None:
    done = podq("submit", "--sql", "SELECT 1", "--dataset", "no-equals-sign")
    assert done.returncode == 2
    assert "expected NAME=URL" in done.stderr
