"""The local launcher's classification of a worker's end, by table (controller/launchers/local_outcome)."""

from __future__ import annotations

import dataclasses
import signal
from typing import Any, NamedTuple

import pytest

from controller.launchers.local.outcome import MemoryEvidence, WorkerEnd, classify
from tests.support.outcomes import RESULT, assert_outcome
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

    assert_outcome(outcome, case.expected, case.details)


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
    outcome = classify(
        worker_end(
            start="warm",
            killed_for="zygote_lost",
            returncode=KILLED,
            envelope_line=None,
            stderr_tail="reading t.parquet\n",
        )
    )

    assert outcome.error is not None
    assert outcome.error["error_type"] == "crash"
    assert outcome.error["retryable"] is True
    assert outcome.error["message"] == "the worker's zygote died while the query was running"
    # The zygote's SIGKILL took the worker's exit status with it; what the worker wrote is the clue left.
    assert outcome.error["details"] == {"signal": "SIGKILL", "stderr_tail": "reading t.parquet"}


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


# The error as the user reads it ----------------------------------------------------------------------------


def test_a_deadline_kill_says_the_deadline_as_the_user_gave_it() -> None:
    outcome = classify(worker_end(killed_for="deadline", returncode=KILLED, timeout_seconds=2.5))

    assert outcome.error == error_info(
        ErrorType.TIMEOUT,
        "the query did not finish within its deadline of 2.5 seconds",
        {"phase": "run", "timeout_seconds": 2.5},
    )


def test_internal_is_retryable_when_the_launcher_stopped_and_not_when_the_result_is_too_large() -> None:
    # The same query runs again after a restart; an oversized result is as large the next time.
    shutdown = classify(worker_end(killed_for="shutdown", returncode=KILLED, envelope_line=None))
    oversized = classify(worker_end(envelope_line=None, envelope_oversized=True))

    assert shutdown.error == error_info(
        ErrorType.INTERNAL, "the controller stopped while the query was running", retryable=True
    )
    assert oversized.error == error_info(
        ErrorType.INTERNAL, "the worker's result is larger than the local launcher accepts", retryable=False
    )


def test_an_oversized_result_after_a_clean_exit_is_not_read_from_a_stale_line() -> None:
    # The launcher kept no line, but an older one must not stand in for it either.
    outcome = classify(worker_end(envelope_oversized=True))

    assert outcome.error is not None and outcome.error["error_type"] == "internal"


def test_a_memory_error_gives_the_limit_in_mib_and_the_peak_when_known() -> None:
    evidence = MemoryEvidence("cgroup", 384 * 2**20, oom_kills=1, peak_bytes=400_000_000)

    outcome = classify(worker_end(returncode=KILLED, envelope_line=None, memory=evidence))

    assert outcome.error == error_info(
        ErrorType.MEMORY,
        "the query ran out of memory (limit 384 MiB)",
        {"limit_bytes": 384 * 2**20, "enforcement": "cgroup", "signal": "SIGKILL", "peak_bytes": 400_000_000},
    )


def test_a_memory_error_under_rlimit_has_no_peak_and_keeps_a_fractional_limit() -> None:
    evidence = MemoryEvidence("rlimit", 3 * 2**19)

    outcome = classify(
        worker_end(returncode=1, envelope_line=None, stderr_tail="MemoryError\n", memory=evidence)
    )

    assert outcome.error == error_info(
        ErrorType.MEMORY,
        "the query ran out of memory (limit 1.5 MiB)",
        {"limit_bytes": 3 * 2**19, "enforcement": "rlimit", "exit_code": 1},
    )


@pytest.mark.parametrize(
    ("end", "message"),
    [
        (
            worker_end(returncode=1, envelope_line=None),
            "the worker exited with code 1 without a usable result",
        ),
        (
            worker_end(returncode=-signal.SIGSEGV, envelope_line=None),
            "the worker was killed by SIGSEGV without a usable result",
        ),
        (
            worker_end(returncode=-signal.SIGKILL),
            "the worker was killed by SIGKILL without a usable result",
        ),
    ],
)
def test_a_crash_says_how_the_worker_died(end: WorkerEnd, message: str) -> None:
    outcome = classify(end)

    assert outcome.error is not None
    assert outcome.error["message"] == message


def test_a_crash_after_a_result_then_a_signal_names_the_signal_in_the_envelope_problem() -> None:
    outcome = classify(worker_end(returncode=-signal.SIGSEGV))

    assert outcome.error is not None
    assert outcome.error["details"] == {
        "signal": "SIGSEGV",
        "envelope_problem": "the worker wrote a result but was killed by SIGSEGV",
        "stderr_tail": "",
    }


# Memory evidence, at its bounds ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("evidence", "returncode", "expected"),
    [
        # One OOM kill in the job cgroup is enough, whatever the worker's own end.
        (MemoryEvidence("cgroup", LIMIT, oom_kills=1), 0, "memory"),
        (MemoryEvidence("cgroup", LIMIT, oom_kills=1), EXIT_USER_ERROR, "memory"),
        # A SIGKILL podq did not send counts once usage has hit the limit at least once.
        (MemoryEvidence("cgroup", LIMIT, failcnt=1), KILLED, "memory"),
        (MemoryEvidence("cgroup", LIMIT, failcnt=0), KILLED, "crash"),
        # Having hit the limit is no evidence of a kill by itself: the kernel reclaims and the query goes on.
        (MemoryEvidence("cgroup", LIMIT, failcnt=5), 0, "result"),
        (MemoryEvidence("cgroup", LIMIT, failcnt=5), -signal.SIGSEGV, "crash"),
        (MemoryEvidence("cgroup", LIMIT, failcnt=5), -signal.SIGTERM, "crash"),
    ],
)
def test_cgroup_memory_evidence(evidence: MemoryEvidence, returncode: int, expected: str) -> None:
    outcome = classify(worker_end(returncode=returncode, memory=evidence))

    assert (outcome.error or {"error_type": "result"})["error_type"] == expected


@pytest.mark.parametrize(
    "line",
    [
        "memory allocation of 800008 bytes failed",
        "terminate called after throwing an instance of 'std::bad_alloc'",
        "MemoryError",
        "OSError: [Errno 12] Cannot allocate memory",
    ],
)
def test_rlimit_each_allocation_failure_marker_counts(line: str) -> None:
    outcome = classify(
        worker_end(
            returncode=-signal.SIGABRT, envelope_line=None, stderr_tail=f"before\n{line}\n", memory=RLIMIT
        )
    )

    assert outcome.error is not None and outcome.error["error_type"] == "memory"


@pytest.mark.parametrize("returncode", [0, EXIT_USER_ERROR, EXIT_INTERNAL_ERROR])
def test_rlimit_an_allocation_failure_the_worker_survived_is_not_a_memory_error(returncode: int) -> None:
    # The worker caught it and said so itself (or went on): its own envelope stands.
    envelope = OK if returncode == 0 else encode_envelope({"ok": False, "error": SQL_ERROR})

    outcome = classify(
        worker_end(returncode=returncode, envelope_line=envelope, stderr_tail="MemoryError\n", memory=RLIMIT)
    )

    if returncode == 0:
        assert outcome.error is None and outcome.result == RESULT
    else:
        assert outcome.error == SQL_ERROR


# ---------------------------------------------------------------- usage

WORKER_USAGE = {"peak_memory_bytes": 100 * 2**20, "cpu_seconds": 0.5, "phases": {"execute": 0.2}}


def test_the_workers_usage_is_completed_by_the_cgroups_figures() -> None:
    envelope = encode_envelope({"ok": True, "result": RESULT, "usage": WORKER_USAGE})
    evidence = MemoryEvidence("cgroup", LIMIT, peak_bytes=110 * 2**20)
    end = worker_end(envelope_line=envelope, memory=evidence, cpu_seconds=0.75, starting_seconds=0.01)

    usage = classify(end).usage

    assert usage is not None
    assert usage["peak_memory_bytes"] == WORKER_USAGE["peak_memory_bytes"]
    assert usage["peak_memory_source"] == "worker"
    assert usage["cgroup_peak_memory_bytes"] == evidence.peak_bytes
    assert usage["cpu_seconds"] == end.cpu_seconds, "the cgroup's CPU time counts everything the job ran"
    assert usage["phases"]["starting"] == end.starting_seconds
    assert usage["phases"]["execute"] == WORKER_USAGE["phases"]["execute"]


def test_a_worker_the_kernel_killed_at_its_limit_gets_the_cgroups_peak() -> None:
    evidence = MemoryEvidence("cgroup", LIMIT, oom_kills=1, failcnt=3, peak_bytes=LIMIT)
    outcome = classify(worker_end(returncode=KILLED, envelope_line=None, memory=evidence))

    assert outcome.error is not None and outcome.error["error_type"] == "memory"
    assert outcome.usage is not None
    assert (outcome.usage["peak_memory_bytes"], outcome.usage["peak_memory_source"]) == (LIMIT, "cgroup")


def test_an_allocation_refused_under_rlimit_records_the_limit() -> None:
    end = worker_end(returncode=-signal.SIGABRT, envelope_line=None, stderr_tail=RUST_OOM, memory=RLIMIT)
    outcome = classify(end)

    assert outcome.error is not None and outcome.error["error_type"] == "memory"
    assert outcome.usage is not None
    assert (outcome.usage["peak_memory_bytes"], outcome.usage["peak_memory_source"]) == (LIMIT, "limit")
    assert outcome.usage["cgroup_peak_memory_bytes"] is None


def test_a_worker_that_failed_otherwise_than_memory_has_no_peak_but_what_was_measured() -> None:
    end = worker_end(returncode=-signal.SIGSEGV, envelope_line=None, memory=RLIMIT)
    outcome = classify(end)

    assert outcome.error is not None and outcome.error["error_type"] == "crash"
    assert outcome.usage is not None
    assert (outcome.usage["peak_memory_bytes"], outcome.usage["peak_memory_source"]) == (None, None)
