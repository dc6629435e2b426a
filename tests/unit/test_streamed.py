"""A pool pod's outcome from its worker's streamed stdout: only a whole, verified envelope counts."""

from __future__ import annotations

from typing import Any

import pytest

from controller.launchers.kubernetes.client.attach import has_line
from controller.launchers.kubernetes.streamed import streamed_outcome
from worker_image.protocol import ENVELOPE_MARKER, ErrorType, encode_envelope, error_info

pytestmark = pytest.mark.unit

POD: dict[str, Any] = {
    "metadata": {"name": "podq-warm-abc", "namespace": "ns"},
    "spec": {"nodeName": "node-1"},
    "status": {"phase": "Running", "startTime": "2024-05-06T07:00:00Z"},
}
RESULT = {"columns": [{"name": "one", "type": "Int32"}], "rows": [[1]], "total_rows": 1, "truncated": False}
MARKER = ENVELOPE_MARKER.encode()


def streamed(payload: dict[str, Any], noise: str = "") -> bytes:
    return f"{noise}\n{encode_envelope(payload)}\n".encode()


def test_a_verified_result_is_the_outcome_with_where_it_ran() -> None:
    outcome = streamed_outcome(streamed({"ok": True, "result": RESULT}, noise="stray"), POD)
    assert outcome is not None and outcome.result == RESULT and outcome.error is None
    assert outcome.placement["pod"] == "podq-warm-abc"
    assert outcome.placement["result_from"] == "attach"


def test_a_verified_user_error_is_the_outcome() -> None:
    error = error_info(ErrorType.SQL, "no column x")
    outcome = streamed_outcome(streamed({"ok": False, "error": error}), POD)
    assert outcome is not None and outcome.error == error


@pytest.mark.parametrize(
    "output",
    [
        b"",
        b"some output, then the worker died\n",
        streamed({"ok": True, "result": RESULT})[:-20],  # cut short
        streamed({"ok": True, "result": RESULT}).replace(b'"rows"', b'"ROWS"'),  # garbled
        streamed({"ok": False, "error": {"error_type": "nonsense"}}),
        streamed({"ok": True, "result": [1]}),
    ],
    ids=["nothing", "no-envelope", "cut", "garbled", "unknown-error", "result-not-an-object"],
)
def test_without_a_verified_envelope_the_pods_end_decides(output: bytes) -> None:
    assert streamed_outcome(output, POD) is None


@pytest.mark.parametrize(
    ("out", "whole"),
    [
        (MARKER + b" 2 abc {}\n", True),
        (b"noise\n" + MARKER + b" 2 abc {}\n", True),
        (b"noise\n" + MARKER + b" 2 abc {", False),
        (b"noise " + MARKER + b" 2 abc {}\n", False),
        (b"noise\n", False),
        (b"", False),
    ],
)
def test_the_attach_reads_until_a_whole_envelope_line(out: bytes, whole: bool) -> None:
    assert has_line(out, MARKER) is whole


def test_a_pool_pods_usage_is_the_workers_without_a_starting_phase() -> None:
    usage = {"peak_memory_bytes": 2**26, "cpu_seconds": 0.1, "phases": {"execute": 0.01}}
    outcome = streamed_outcome(streamed({"ok": True, "result": RESULT, "usage": usage}), POD)
    assert outcome is not None and outcome.usage is not None
    assert (outcome.usage["peak_memory_bytes"], outcome.usage["peak_memory_source"]) == (2**26, "worker")
    assert outcome.usage["phases"]["execute"] == 0.01
    assert outcome.usage["phases"]["starting"] is None, "the pod started before its query was claimed"
