"""The local launcher's classification of a worker's end, by table (controller/launchers/local_outcome)."""

from __future__ import annotations

import dataclasses
import json
import signal
from typing import Any, NamedTuple

import pytest

from controller.launchers.local.outcome import MemoryEvidence, WorkerEnd, classify
from worker_image.protocol import (
    EXIT_INTERNAL_ERROR,
    EXIT_USER_ERROR,
    ErrorType,
    compact_error,
    encode_envelope,
    error_info,
)

pytestmark = pytest.mark.unit

LIMIT = 256 * 2**20
RESULT = {"columns": [{"name": "n", "type": "Int64"}], "rows": [[1]], "total_rows": 1, "truncated": False}
SQL_ERROR = error_info(ErrorType.SQL, "column 'nope' not found", {"column": "nope"})
OK = encode_envelope({"ok": True, "result": RESULT})
FAILED = encode_envelope({"ok": False, "error": SQL_ERROR})
KILLED = -signal.SIGKILL
RUST_OOM = "memory allocation of 800008 bytes failed\nstack backtrace:\n"
CGROUP = MemoryEvidence("cgroup", LIMIT)
RLIMIT = MemoryEvidence("rlimit", LIMIT)


def worker_end(**changes: Any) -> WorkerEnd:
    base = WorkerEnd(
        pid=4242,
        start="cold",
        returncode=0,
        killed_for=None,
        timeout_seconds=2.0,
        envelope_line=OK,
        envelope_oversized=False,
        stderr_tail="",
        termination_message=None,
        memory=CGROUP,
    )
    return dataclasses.replace(base, **changes)


class Case(NamedTuple):
    name: str
    end: WorkerEnd
    # "result", or the expected error_type
    expected: str
    # a subset of the error's details
    details: dict[str, Any]


CASES = [
    Case("ok envelope, exit 0", worker_end(), "result", {}),
    Case(
        "sql error envelope, user exit",
        worker_end(envelope_line=FAILED, returncode=EXIT_USER_ERROR),
        "sql",
        {},
    ),
    Case(
        "internal error envelope, internal exit",
        worker_end(
            envelope_line=encode_envelope({"ok": False, "error": error_info(ErrorType.INTERNAL, "bug")}),
            returncode=EXIT_INTERNAL_ERROR,
        ),
        "internal",
        {},
    ),
    Case(
        "killed at the deadline",
        worker_end(killed_for="deadline", returncode=KILLED, envelope_line=None),
        "timeout",
        {"timeout_seconds": 2.0},
    ),
    Case(
        "the deadline wins over an envelope written just before the kill",
        worker_end(killed_for="deadline", returncode=KILLED),
        "timeout",
        {},
    ),
    Case(
        "the deadline wins over OOM evidence",
        worker_end(killed_for="deadline", returncode=KILLED, memory=dataclasses.replace(CGROUP, oom_kills=1)),
        "timeout",
        {},
    ),
    Case(
        "killed because the launcher closed",
        worker_end(killed_for="shutdown", returncode=KILLED, envelope_line=None),
        "internal",
        {},
    ),
    Case(
        "cgroup OOM kill",
        worker_end(returncode=KILLED, envelope_line=None, memory=dataclasses.replace(CGROUP, oom_kills=1)),
        "memory",
        {"limit_bytes": LIMIT, "enforcement": "cgroup", "signal": "SIGKILL"},
    ),
    Case(
        "cgroup: SIGKILL nobody at podq sent, usage had hit the limit",
        worker_end(returncode=KILLED, envelope_line=None, memory=dataclasses.replace(CGROUP, failcnt=3)),
        "memory",
        {"signal": "SIGKILL"},
    ),
    Case(
        "cgroup: SIGKILL from elsewhere, no memory pressure",
        worker_end(returncode=KILLED, envelope_line=None),
        "crash",
        {"signal": "SIGKILL"},
    ),
    Case(
        "cgroup: an allocation failure message does not count (the kernel kills instead)",
        worker_end(returncode=-signal.SIGABRT, envelope_line=None, stderr_tail=RUST_OOM),
        "crash",
        {"signal": "SIGABRT"},
    ),
    Case(
        "rlimit: polars aborts on a failed allocation",
        worker_end(returncode=-signal.SIGABRT, envelope_line=None, stderr_tail=RUST_OOM, memory=RLIMIT),
        "memory",
        {"enforcement": "rlimit", "signal": "SIGABRT"},
    ),
    Case(
        "rlimit: arrow dies of std::bad_alloc",
        worker_end(
            returncode=-signal.SIGABRT,
            envelope_line=None,
            stderr_tail="terminate called after throwing an instance of 'std::bad_alloc'\n",
            memory=RLIMIT,
        ),
        "memory",
        {},
    ),
    Case(
        "rlimit: an uncaught MemoryError",
        worker_end(
            returncode=1, envelope_line=None, stderr_tail="Traceback...\nMemoryError\n", memory=RLIMIT
        ),
        "memory",
        {"exit_code": 1},
    ),
    Case(
        "rlimit: a SIGABRT without an allocation failure is a crash",
        worker_end(returncode=-signal.SIGABRT, envelope_line=None, memory=RLIMIT),
        "crash",
        {"signal": "SIGABRT"},
    ),
    Case(
        "rlimit: a SIGSEGV without an allocation failure is a crash",
        worker_end(
            returncode=-signal.SIGSEGV, envelope_line=None, stderr_tail="Fatal Python error", memory=RLIMIT
        ),
        "crash",
        {"signal": "SIGSEGV"},
    ),
    Case(
        "rlimit: the worker's own memory envelope passes through",
        worker_end(
            returncode=EXIT_USER_ERROR,
            envelope_line=encode_envelope(
                {"ok": False, "error": error_info(ErrorType.MEMORY, "out of memory")}
            ),
            stderr_tail="MemoryError",
            memory=RLIMIT,
        ),
        "memory",
        {},
    ),
    Case(
        "ok envelope but a non-zero exit",
        worker_end(returncode=1),
        "crash",
        {"exit_code": 1, "envelope_problem": "the worker wrote a result but exited with code 1"},
    ),
    Case(
        "ok envelope, then a segfault",
        worker_end(returncode=-signal.SIGSEGV),
        "crash",
        {"signal": "SIGSEGV"},
    ),
    Case(
        "error envelope but exit 0",
        worker_end(envelope_line=FAILED),
        "crash",
        {"exit_code": 0, "envelope_problem": "the worker wrote an error but exited with code 0"},
    ),
    Case(
        "ok envelope without a result",
        worker_end(envelope_line=encode_envelope({"ok": True})),
        "crash",
        {"envelope_problem": "the result envelope holds no result"},
    ),
    Case(
        "error envelope with an unknown error type",
        worker_end(
            envelope_line=encode_envelope({"ok": False, "error": {"error_type": "gremlins", "message": "?"}}),
            returncode=EXIT_USER_ERROR,
        ),
        "crash",
        {"envelope_problem": "the error envelope holds no valid error"},
    ),
    Case(
        "checksum mismatch",
        worker_end(envelope_line=OK.replace('"rows":[[1]]', '"rows":[[7]]')),
        "crash",
        {"envelope_problem": "result envelope checksum mismatch"},
    ),
    Case(
        "envelope cut short",
        worker_end(returncode=-signal.SIGKILL, envelope_line=OK[: len(OK) // 2]),
        "crash",
        {"signal": "SIGKILL"},
    ),
    Case(
        "no envelope, os._exit(1)",
        worker_end(returncode=1, envelope_line=None, stderr_tail="last words\n"),
        "crash",
        {
            "exit_code": 1,
            "envelope_problem": "no result envelope in the worker output",
            "stderr_tail": "last words",
        },
    ),
    Case(
        "no envelope, an unnamed real-time signal",
        worker_end(returncode=-40, envelope_line=None),
        "crash",
        {"signal": "signal 40"},
    ),
    Case(
        "no envelope, user exit, the termination message types the error",
        worker_end(
            returncode=EXIT_USER_ERROR, envelope_line=None, termination_message=compact_error(SQL_ERROR)
        ),
        "sql",
        {"column": "nope"},
    ),
    Case(
        "no envelope, a termination message but not a protocol exit",
        worker_end(returncode=1, envelope_line=None, termination_message=compact_error(SQL_ERROR)),
        "crash",
        {"exit_code": 1},
    ),
    Case(
        "no envelope, user exit, a garbled termination message",
        worker_end(returncode=EXIT_USER_ERROR, envelope_line=None, termination_message='{"error_ty'),
        "crash",
        {"exit_code": EXIT_USER_ERROR},
    ),
    Case(
        "result larger than the launcher keeps",
        worker_end(envelope_line=None, envelope_oversized=True),
        "internal",
        {},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_classify(case: Case) -> None:
    outcome = classify(case.end)

    if case.expected == "result":
        assert outcome.error is None
        assert outcome.result == RESULT
        return
    assert outcome.result is None
    assert outcome.error is not None
    assert outcome.error["error_type"] == case.expected
    assert outcome.error["message"]
    assert case.details.items() <= outcome.error["details"].items()
    json.dumps(outcome.error)


WATCHED = error_info(
    ErrorType.MEMORY,
    "the query ran out of memory (limit 256 MiB): stopped at 226 MiB, within 32 MiB of the limit",
    {"limit_bytes": LIMIT, "peak_bytes": 237 * 2**20, "threshold_bytes": 224 * 2**20, "stopped_by": "worker"},
)


@pytest.mark.parametrize("evidence", [CGROUP, dataclasses.replace(CGROUP, failcnt=7), RLIMIT])
def test_the_workers_own_memory_verdict_keeps_its_numbers_and_gains_the_enforcement(
    evidence: MemoryEvidence,
) -> None:
    # The cgroup's failcnt may well have moved (page cache reaches the limit): the worker exited by itself.
    end = worker_end(
        envelope_line=encode_envelope({"ok": False, "error": WATCHED}),
        returncode=EXIT_USER_ERROR,
        memory=evidence,
    )
    outcome = classify(end)

    details = {**WATCHED["details"], "enforcement": evidence.enforcement}
    assert outcome.error == {**WATCHED, "details": details}


def test_error_envelope_passes_through_unchanged() -> None:
    outcome = classify(worker_end(envelope_line=FAILED, returncode=EXIT_USER_ERROR))

    assert outcome.error == SQL_ERROR


@pytest.mark.parametrize(
    ("end", "exit_fields"),
    [
        (worker_end(), {"exit_code": 0}),
        (worker_end(returncode=-signal.SIGSEGV, envelope_line=None), {"signal": "SIGSEGV"}),
        (worker_end(killed_for="deadline", returncode=KILLED, memory=RLIMIT), {"signal": "SIGKILL"}),
    ],
)
def test_placement_names_the_process_and_how_it_ended(end: WorkerEnd, exit_fields: dict[str, Any]) -> None:
    placement = classify(end).placement

    assert placement == {
        "kind": "local",
        "pid": 4242,
        **exit_fields,
        "memory_enforcement": end.memory.enforcement,
        "start": "cold",
    }


def test_a_warm_worker_whose_zygote_died_is_a_retryable_crash() -> None:
    outcome = classify(worker_end(killed_for="zygote_lost", returncode=KILLED, envelope_line=None))

    assert outcome.error is not None
    assert outcome.error["error_type"] == "crash"
    assert outcome.error["retryable"] is True
    assert "zygote" in outcome.error["message"]


def test_memory_error_is_not_retryable_and_crash_is() -> None:
    memory = classify(
        worker_end(returncode=KILLED, envelope_line=None, memory=dataclasses.replace(CGROUP, oom_kills=1))
    )
    crash = classify(worker_end(returncode=1, envelope_line=None))

    assert memory.error is not None and memory.error["retryable"] is False
    assert crash.error is not None and crash.error["retryable"] is True


def test_crash_details_keep_only_the_end_of_a_long_stderr() -> None:
    stderr = "".join(f"line {i} " + "x" * 300 + "\n" for i in range(1000))

    outcome = classify(worker_end(returncode=1, envelope_line=None, stderr_tail=stderr))

    assert outcome.error is not None
    tail = outcome.error["details"]["stderr_tail"]
    assert len(tail) <= 2000
    assert tail.endswith("line 999 " + "x" * 300)
