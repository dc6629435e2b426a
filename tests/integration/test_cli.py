"""`podq submit` against a real `podq serve`, as the README's quickstart uses it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from controller.testing.process import REPO_ROOT, ControllerProcess, free_port

pytestmark = pytest.mark.integration


def podq(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        check=False,
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


def test_refused_submission_exits_1_naming_the_field(running_controller: ControllerProcess) -> None:
    done = podq("submit", "--url", running_controller.url, "--sql", "SELECT 1", "--memory", "1Pi")
    assert done.returncode == 1
    assert "HTTP 422: validation: limits.memory" in done.stderr


def test_unreachable_controller_exits_2() -> None:
    done = podq("submit", "--url", f"http://127.0.0.1:{free_port()}", "--sql", "SELECT 1")
    assert done.returncode == 2
    assert "cannot reach" in done.stderr


def test_bad_dataset_argument_is_a_usage_error() -> None:
    done = podq("submit", "--sql", "SELECT 1", "--dataset", "no-equals-sign")
    assert done.returncode == 2
    assert "expected NAME=URL" in done.stderr
