"""A warm pod's worker as a real subprocess: it warms up, waits for one request line on stdin, runs it, and
treats anything that is not one line of JSON object as no request (exit 5, nothing printed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fixtures import REPO_ROOT, query_request
from worker_image.protocol import (
    ENVELOPE_MARKER,
    EXIT_NO_REQUEST,
    EXIT_USER_ERROR,
    REQUEST_STDIN_ENV,
    TERMINATION_MESSAGE_ENV,
    decode_envelope,
)

pytestmark = pytest.mark.integration

RUN_TIMEOUT_SECONDS = 60


def run_standby(stdin: bytes, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PODQ_")}
    env.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            REQUEST_STDIN_ENV: "1",
            TERMINATION_MESSAGE_ENV: str(tmp_path / "termination-log"),
            "TMPDIR": str(tmp_path),
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "worker_image"],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )


def test_one_request_line_runs_and_ends_the_worker(tmp_path: Path) -> None:
    request = json.dumps(query_request("SELECT 1 AS one", []))
    # A second line is never read: the worker serves exactly one request.
    done = run_standby(f"{request}\n{request}\n".encode(), tmp_path)
    assert done.returncode == 0, done.stderr
    envelope = decode_envelope(done.stdout.decode())
    assert envelope["ok"] is True
    assert envelope["result"]["rows"] == [[1]]
    assert done.stdout.decode().count(ENVELOPE_MARKER) == 1


def test_a_bad_request_in_good_json_is_a_validation_error(tmp_path: Path) -> None:
    done = run_standby(b'{"operation": "drop"}\n', tmp_path)
    assert done.returncode == EXIT_USER_ERROR
    envelope = decode_envelope(done.stdout.decode())
    assert envelope["error"]["error_type"] == "validation"


@pytest.mark.parametrize(
    "stdin",
    [b"", b'{"operation": "query"}', b"not json\n", b"[1, 2]\n", b"\xff\xfe\n"],
    ids=["eof", "no-newline", "not-json", "not-an-object", "not-utf8"],
)
def test_no_request_exits_5_and_prints_nothing(stdin: bytes, tmp_path: Path) -> None:
    done = run_standby(stdin, tmp_path)
    assert done.returncode == EXIT_NO_REQUEST, done.stderr
    assert done.stdout == b""
    assert not (tmp_path / "termination-log").exists()
