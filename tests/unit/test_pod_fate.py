"""Pod state -> verdict (pod_progress) and outcome (pod_fate), over pods captured from a real cluster.

The pods under ``pods/`` were captured with ``kubectl get pod -o json`` on the e2e cluster (v1.33) and
stripped to what classification reads; the few that cannot be produced safely there (node-pressure
eviction, node shutdown, preemption, taint deletion) are hand-written from the Kubernetes source, and
their ``_comment`` says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from controller.launchers.base import QueueDeadline
from controller.launchers.kubernetes.pod_fate import decide, log_tail, placement, starting_seconds
from controller.launchers.kubernetes.pod_progress import Ended, Failed, Waiting, observe
from controller.launchers.kubernetes.pod_status import parse_time
from controller.launchers.kubernetes.podspec import ANNOTATION_TIMEOUT
from controller.quantity import parse_memory_bytes
from tests.support.captured_pods import PODS, load
from tests.support.outcomes import RESULT, assert_outcome, assert_typed_error
from worker_image.protocol import (
    ENVELOPE_MARKER,
    EXIT_USER_ERROR,
    EnvelopeError,
    ErrorType,
    decode_envelope,
    encode_envelope,
    error_info,
)

pytestmark = pytest.mark.unit

UNSCHEDULABLE_AFTER = 120.0
IMAGE_PULL_GRACE = 60.0
SQL_ERROR = error_info(ErrorType.SQL, "column nope not found", {"column": "nope"})
OK = encode_envelope({"ok": True, "result": RESULT})
FAILED = encode_envelope({"ok": False, "error": SQL_ERROR})
NOISE = 'reading dataset t\nTraceback (most recent call last):\n  File "worker.py", line 1\n'


def created(pod: dict[str, Any]) -> float:
    return parse_time(pod["metadata"]["creationTimestamp"])


def watch(pod: dict[str, Any] | None, *, after: float = 1.0) -> Waiting | Ended | Failed:
    """`observe` as the launcher calls it, `after` seconds past the pod's creation."""
    now = created(pod) + after if pod is not None else 0.0
    return observe(pod, now=now, unschedulable_after=UNSCHEDULABLE_AFTER, image_pull_grace=IMAGE_PULL_GRACE)


def oomkilled_details(container: str, limit_mib: int) -> dict[str, Any]:
    """An out-of-memory error's details: the container the kernel killed (exit 137, SIGKILL), its limit."""
    return {
        "container": container,
        "limit": f"{limit_mib}Mi",
        "limit_bytes": limit_mib * 2**20,
        "reason": "OOMKilled",
        "exit_code": 137,
        "signal": "SIGKILL",
    }


def oomkilled_placement(pod: str, phase: str) -> dict[str, Any]:
    """The placement of a captured pod whose worker the kernel killed for memory."""
    return {
        "kind": "kubernetes",
        "namespace": "podq-h-classify-1",
        "pod": pod,
        "node": "podq-e2e",
        "phase": phase,
        "container_reason": "OOMKilled",
        "exit_code": 137,
        "signal": "SIGKILL",
        "started_at": "2026-11-21T21:20:18Z",
        "finished_at": "2026-11-21T21:20:20Z",
    }


def worker(pod: dict[str, Any]) -> dict[str, Any]:
    status: dict[str, Any] = pod["status"]["containerStatuses"][0]
    return status


class Case(NamedTuple):
    pod: str
    # observe's verdict
    verdict: type[Waiting | Ended | Failed]
    # Waiting: its reason; Failed: the error_type; Ended: decide's error_type, or "result"
    expected: str
    # Ended only: the log decide is given
    log: str | None = None
    # a subset of the error's details
    details: Mapping[str, Any] = MappingProxyType({})


CASES = [
    Case("pending-no-status", Waiting, "Pending"),
    Case("unschedulable", Waiting, "Unschedulable"),
    Case("containercreating", Waiting, "ContainerCreating"),
    Case("podinitializing", Waiting, "PodInitializing"),
    Case("errimagepull", Waiting, "ErrImagePull"),
    Case("imagepullbackoff", Waiting, "ImagePullBackOff"),
    Case("running", Waiting, "Running"),
    Case("terminating", Waiting, "Terminating"),
    Case("evicted-api-terminating", Waiting, "Terminating"),
    Case(
        "errimageneverpull",
        Failed,
        "image",
        details={"image": "podq.local/podq-worker:does-not-exist", "reason": "ErrImageNeverPull"},
    ),
    Case(
        "invalidimagename",
        Failed,
        "image",
        details={"image": "UPPER CASE::bad", "reason": "InvalidImageName"},
    ),
    Case(
        "createcontainerconfigerror-configmap",
        Failed,
        "image",
        details={
            "reason": "CreateContainerConfigError",
            "message": 'configmap "podq-missing-configmap" not found',
        },
    ),
    Case(
        "createcontainerconfigerror-secret",
        Failed,
        "image",
        details={"reason": "CreateContainerConfigError", "message": 'secret "podq-missing-secret" not found'},
    ),
    Case("succeeded", Ended, "result", log=f"hello\n{OK}\n"),
    Case(
        "succeeded", Ended, "crash", log="hello\ndone\n", details={"exit_code": 0, "log_tail": "hello\ndone"}
    ),
    Case(
        "oomkilled",
        Ended,
        "memory",
        log=NOISE,
        details={"limit": "32Mi", "exit_code": 137, "signal": "SIGKILL"},
    ),
    Case(
        "oomkilled-exit0",
        Ended,
        "memory",
        log=f"survived\n{OK}\n",
        details={"limit": "32Mi", "limit_bytes": 32 * 2**20, "exit_code": 0, "reason": "OOMKilled"},
    ),
    Case(
        "deadline-exceeded",
        Ended,
        "timeout",
        log="",
        details={"active_deadline_seconds": 3, "reason": "DeadlineExceeded"},
    ),
    Case("exit1", Ended, "crash", log=NOISE, details={"exit_code": 1, "container_reason": "Error"}),
    Case("exit1-termmsg", Ended, "crash", log=NOISE, details={"termination_message": "plain words"}),
    Case("exit1-silent", Ended, "crash", log="", details={"exit_code": 1, "log_tail": ""}),
    Case("exit2", Ended, "crash", log=NOISE, details={"exit_code": 2}),
    Case(
        "exit2-termmsg",
        Ended,
        "crash",
        log=NOISE,
        details={"exit_code": 2, "termination_message": "usage error"},
    ),
    Case("exit3-termmsg", Ended, "sql", log=NOISE, details={"column": "nope"}),
    Case("exit3-logtail", Ended, "crash", log=NOISE, details={"exit_code": EXIT_USER_ERROR}),
    Case("exit137", Ended, "crash", log=NOISE + "Killed\n", details={"exit_code": 137, "signal": "SIGKILL"}),
    Case("exit137-termmsg", Ended, "crash", log=NOISE, details={"signal": "SIGKILL"}),
    Case("exit139", Ended, "crash", log=NOISE, details={"exit_code": 139, "signal": "SIGSEGV"}),
    Case("exit139-termmsg", Ended, "crash", log=NOISE, details={"termination_message": "about to segfault"}),
    Case("starterror", Ended, "image", log=None, details={"reason": "StartError", "exit_code": 128}),
    Case(
        "evicted-emptydir",
        Ended,
        "evicted",
        log="filling scratch\nfilled\n",
        details={"reason": "Evicted", "message": 'Usage of EmptyDir volume "tmp" exceeds the limit "16Mi". '},
    ),
    Case(
        "evicted-memory",
        Ended,
        "evicted",
        log=NOISE,
        details={"reason": "Evicted", "disruption_reason": "TerminationByKubelet"},
    ),
    Case("evicted-api", Ended, "evicted", log="", details={"disruption_reason": "EvictionByEvictionAPI"}),
    Case("preempted", Ended, "evicted", log="", details={"disruption_reason": "PreemptionByScheduler"}),
    Case("taint-deleted", Ended, "evicted", log="", details={"disruption_reason": "DeletionByTaintManager"}),
    Case(
        "node-shutdown",
        Ended,
        "evicted",
        log=NOISE,
        details={
            "reason": "Terminated",
            "message": "Pod was terminated in response to imminent node shutdown.",
        },
    ),
    Case("node-shutdown-rejected", Ended, "evicted", log=None, details={"reason": "NodeShutdown"}),
    Case("node-shutdown-after-success", Ended, "result", log=OK),
    Case("scheduling-gated", Waiting, "SchedulingGated"),
    Case(
        "oomkilled-behind-sidecar",
        Ended,
        "memory",
        log=NOISE,
        details={"container": "worker", "limit": "32Mi", "limit_bytes": 32 * 2**20, "exit_code": 137},
    ),
    Case(
        "init-oomkilled",
        Ended,
        "memory",
        log=None,
        details={"container": "istio-init", "limit": "64Mi", "limit_bytes": 64 * 2**20, "exit_code": 137},
    ),
]


def case_id(case: Case) -> str:
    return f"{case.pod}-{case.expected}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(case) for case in CASES])
def test_pod(case: Case) -> None:
    pod = load(case.pod)

    verdict = watch(pod)

    assert isinstance(verdict, case.verdict)
    if isinstance(verdict, Waiting):
        assert verdict.reason == case.expected
    elif isinstance(verdict, Failed):
        assert_typed_error(verdict.error, case.expected, case.details)
    else:
        assert_outcome(decide(pod, case.log), case.expected, case.details)


def test_every_captured_pod_is_in_the_table() -> None:
    assert {path.stem for path in PODS.glob("*.json")} == {case.pod for case in CASES}


def test_a_pod_deleted_under_podq_is_a_retryable_crash() -> None:
    verdict = watch(None)

    assert isinstance(verdict, Failed)
    assert verdict.error["error_type"] == "crash"
    assert verdict.error["retryable"] is True
    assert verdict.error["message"] == "the worker pod was deleted before podq read its outcome"


# Time-based waits, on both sides of the bound ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "grace", "error_type"),
    [
        ("unschedulable", UNSCHEDULABLE_AFTER, "unschedulable"),
        ("errimagepull", IMAGE_PULL_GRACE, "image"),
        ("imagepullbackoff", IMAGE_PULL_GRACE, "image"),
    ],
)
def test_a_wait_ends_in_failure_when_its_grace_period_does(name: str, grace: float, error_type: str) -> None:
    pod = load(name)

    before = watch(pod, after=grace - 0.001)
    after = watch(pod, after=grace)

    assert isinstance(before, Waiting)
    assert before.recheck_at == created(pod) + grace
    assert isinstance(after, Failed)
    assert after.error["error_type"] == error_type
    assert after.error["details"]["waited_seconds"] == grace


def test_unschedulable_failure_carries_the_schedulers_message() -> None:
    verdict = watch(load("unschedulable"), after=UNSCHEDULABLE_AFTER)

    assert isinstance(verdict, Failed)
    scheduler = "0/1 nodes are available: 1 Insufficient cpu."
    assert scheduler in verdict.error["message"]
    assert verdict.error["details"]["scheduler_message"].startswith(scheduler)


def test_image_pull_failure_names_the_image_and_the_kubelets_message() -> None:
    verdict = watch(load("imagepullbackoff"), after=IMAGE_PULL_GRACE)

    assert isinstance(verdict, Failed)
    assert "127.0.0.1:5999/podq/does-not-exist:1" in verdict.error["message"]
    assert "connection refused" in verdict.error["message"]


@pytest.mark.parametrize(
    "name", ["invalidimagename", "createcontainerconfigerror-secret", "errimageneverpull"]
)
def test_image_errors_that_cannot_heal_fail_at_once(name: str) -> None:
    assert isinstance(watch(load(name), after=0.0), Failed)


@pytest.mark.parametrize("name", ["running", "containercreating", "podinitializing", "pending-no-status"])
def test_waits_without_a_grace_period_need_no_recheck(name: str) -> None:
    verdict = watch(load(name), after=10 * UNSCHEDULABLE_AFTER)

    assert isinstance(verdict, Waiting)
    assert verdict.recheck_at is None


def test_a_worker_that_terminated_has_ended_even_while_the_pod_runs_on() -> None:
    pod = load("exit1")
    pod["status"]["phase"] = "Running"  # a sidecar still running

    assert isinstance(watch(pod), Ended)


# A pod with its log, in decide's fixed order -------------------------------------------------------------


def test_oomkilled_wins_over_a_valid_success_envelope() -> None:
    for name in ("oomkilled", "oomkilled-exit0"):
        outcome = decide(load(name), OK)

        assert outcome.error is not None and outcome.error["error_type"] == "memory", name


def test_deadline_exceeded_wins_over_oomkilled() -> None:
    pod = load("deadline-exceeded")
    worker(pod)["state"]["terminated"]["reason"] = "OOMKilled"

    outcome = decide(pod, "")

    assert outcome.error is not None and outcome.error["error_type"] == "timeout"


def test_a_disruption_wins_over_a_failed_exit() -> None:
    outcome = decide(load("evicted-memory"), FAILED)

    assert outcome.error is not None and outcome.error["error_type"] == "evicted"


def test_eviction_for_the_pods_own_scratch_use_is_not_retryable_and_node_pressure_is() -> None:
    own = decide(load("evicted-emptydir"), "").error
    pressure = decide(load("evicted-memory"), "").error

    assert own is not None and own["retryable"] is False
    assert pressure is not None and pressure["retryable"] is True


def test_exit_0_and_a_valid_envelope_is_the_result() -> None:
    outcome = decide(load("succeeded"), f"stray library output\n{OK}\n")

    assert outcome.error is None
    assert outcome.result == RESULT


def test_an_error_envelope_with_a_user_exit_passes_through_unchanged() -> None:
    outcome = decide(load("exit3-logtail"), f"{NOISE}{FAILED}\n")

    assert outcome.error == SQL_ERROR


def test_a_garbled_envelope_falls_back_to_the_termination_message() -> None:
    garbled = FAILED.replace("nope", "nape", 1)

    outcome = decide(load("exit3-termmsg"), f"{NOISE}{garbled}\n")

    assert outcome.error is not None
    assert outcome.error["error_type"] == "sql"
    assert outcome.error["details"] == {"column": "nope"}


def test_the_termination_message_types_the_error_when_the_log_is_gone() -> None:
    outcome = decide(load("exit3-termmsg"), None, log_problem="pods/log answered 404")

    assert outcome.error is not None and outcome.error["error_type"] == "sql"


def test_a_cut_envelope_without_a_termination_error_is_a_crash_naming_the_problem() -> None:
    pod = load("exit3-logtail")
    del worker(pod)["state"]["terminated"]["message"]

    outcome = decide(pod, NOISE + OK[: len(OK) // 2])

    assert outcome.result is None
    assert outcome.error is not None
    assert outcome.error["error_type"] == "crash"
    assert outcome.error["details"]["envelope_problem"].startswith("result envelope length mismatch")


def test_a_log_tail_in_the_termination_message_is_not_read_as_an_error() -> None:
    # FallbackToLogsOnError put the log's end there; even JSON-looking text that is no ErrorInfo is ignored.
    pod = load("exit3-logtail")
    worker(pod)["state"]["terminated"]["message"] = '{"error_type": "gremlins", "message": "?"}'

    outcome = decide(pod, NOISE)

    assert outcome.error is not None and outcome.error["error_type"] == "crash"


def test_a_success_envelope_from_a_worker_that_then_failed_is_not_trusted() -> None:
    outcome = decide(load("exit1"), f"{NOISE}{OK}\n")

    assert outcome.error is not None
    assert outcome.error["error_type"] == "crash"
    assert outcome.error["details"]["envelope_problem"] == "the worker wrote a result but exited with code 1"


def test_a_crash_carries_the_end_of_a_long_log() -> None:
    log = "".join(f"line {i} " + "x" * 300 + "\n" for i in range(1000))

    outcome = decide(load("exit1"), log)

    assert outcome.error is not None
    details = outcome.error["details"]
    assert details["envelope_problem"] == "no result envelope in the worker output"
    assert len(details["log_tail"]) <= 2000
    assert details["log_tail"].endswith("line 999 " + "x" * 300)


def test_a_crash_without_a_log_says_why() -> None:
    outcome = decide(load("exit139"), None, log_problem="the pod was deleted before its log was read")

    assert outcome.error is not None
    assert outcome.error["message"] == "the worker exited with code 139 (SIGSEGV) without a usable result"
    assert outcome.error["details"]["envelope_problem"] == "the pod was deleted before its log was read"
    assert "log_tail" not in outcome.error["details"]


@given(st.text())
def test_no_result_without_a_valid_envelope(log: str) -> None:
    outcome = decide(load("succeeded"), log)

    if outcome.result is not None:
        assert decode_envelope(log)["result"] == outcome.result


@given(st.text(), st.integers(min_value=1, max_value=len(OK) - 1), st.text())
def test_a_cut_envelope_is_never_a_result(before: str, cut: int, after: str) -> None:
    log = f"{before}\n{OK[:cut]}{after}"
    try:
        decode_envelope(log)
    except EnvelopeError:
        pass
    else:
        assume(False)  # the surrounding text completed an envelope of its own

    outcome = decide(load("succeeded"), log)

    assert outcome.result is None


# Placement -------------------------------------------------------------------------------------------------


def test_placement_names_the_pod_and_how_it_ended() -> None:
    assert placement(load("oomkilled")) == oomkilled_placement("podq-oomkilled", "Failed")


def test_placement_of_a_pod_ended_by_its_deadline_keeps_the_pods_reason() -> None:
    fields = placement(load("deadline-exceeded"))

    assert fields["reason"] == "DeadlineExceeded"
    assert fields["message"] == "Pod was active on the node longer than the specified deadline"


def test_placement_of_a_pod_that_never_ran() -> None:
    assert placement(load("unschedulable")) == {
        "kind": "kubernetes",
        "namespace": "podq-h-classify-1",
        "pod": "podq-unschedulable",
        "phase": "Pending",
    }


def test_decide_records_the_placement_and_the_logs_last_lines() -> None:
    pod = load("exit1")

    assert decide(pod, NOISE).placement == {**placement(pod), "log_tail": NOISE.rstrip("\n")}
    assert decide(pod, None, log_problem="gone").placement == {**placement(pod), "log_tail": ""}


def test_the_log_tail_shows_a_result_envelope_by_its_size_only() -> None:
    envelope = ENVELOPE_MARKER + " 5 " + "0" * 64 + " {}"
    lines = [f"line {i}" for i in range(30)]

    assert log_tail("\n".join([*lines, envelope]) + "\n") == "\n".join(
        [*lines[-19:], f"[result envelope, {len(envelope)} bytes]"]
    )


# What the user reads -------------------------------------------------------------------------------------

# pod -> (the log decide is given, the error's message, whether a retry may help): the whole message, since
# it is often all the user sees of a failed query.
MESSAGES = {
    "succeeded": ("hello\ndone\n", "the worker exited with code 0 without a usable result", True),
    "oomkilled": (NOISE, "the query ran out of memory (limit 32Mi)", False),
    "oomkilled-behind-sidecar": (NOISE, "the query ran out of memory (limit 32Mi)", False),
    "deadline-exceeded": ("", "the query did not finish within its deadline of 3 seconds", False),
    "exit1": (NOISE, "the worker exited with code 1 without a usable result", True),
    "exit3-termmsg": (NOISE, "column nope not found", False),
    "exit137": (NOISE, "the worker exited with code 137 (SIGKILL) without a usable result", True),
    "starterror": (
        None,
        "the worker container could not start: failed to create containerd task: failed to create shim task: "
        "OCI runtime create failed: runc create failed: unable to start container process: exec: "
        '"/usr/bin/python3": stat /usr/bin/python3: no such file or directory: unknown',
        False,
    ),
    "evicted-emptydir": (
        "",
        'the worker pod was evicted by the kubelet: Usage of EmptyDir volume "tmp" exceeds the limit "16Mi".',
        False,
    ),
    "evicted-memory": (
        "",
        "the worker pod was evicted by the kubelet: The node was low on resource: memory. "
        "Threshold quantity: 100Mi, available: 91324Ki.",
        True,
    ),
    "evicted-api": (
        "",
        "the worker pod was evicted through the eviction API (a node drain, an autoscaler): "
        "Eviction API: evicting",
        True,
    ),
    "preempted": (
        "",
        "the worker pod was preempted by the scheduler for a higher-priority pod: "
        "default-scheduler: preempting to accommodate a higher priority pod",
        True,
    ),
    "taint-deleted": (
        "",
        "the worker pod was deleted by the taint manager (NoExecute taint): "
        "Taint manager: deleting due to NoExecute taint",
        True,
    ),
    "node-shutdown": (
        "",
        "the worker pod was stopped for a node shutdown: "
        "Pod was terminated in response to imminent node shutdown.",
        True,
    ),
    "node-shutdown-rejected": (
        None,
        "the worker pod was refused by a node that is shutting down: "
        "Pod was rejected: Pod was rejected as the node is shutting down.",
        True,
    ),
}


@pytest.mark.parametrize(("name", "log", "message", "retryable"), [(k, *v) for k, v in MESSAGES.items()])
def test_an_ended_pods_error_says_what_happened(
    name: str, log: str | None, message: str, retryable: bool
) -> None:
    error = decide(load(name), log).error

    assert error is not None
    assert (error["message"], error["retryable"]) == (message, retryable)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "unschedulable",
            "no node can run the worker pod: 0/1 nodes are available: 1 Insufficient cpu. "
            "preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
        ),
        (
            "errimageneverpull",
            "the worker image podq.local/podq-worker:does-not-exist cannot be run: ErrImageNeverPull: "
            'Container image "podq.local/podq-worker:does-not-exist" '
            "is not present with pull policy of Never",
        ),
        (
            "createcontainerconfigerror-secret",
            "the worker image podq.local/busybox:1.35.0-podq1 cannot be run: CreateContainerConfigError: "
            'secret "podq-missing-secret" not found',
        ),
    ],
)
def test_a_pod_that_never_ran_says_why(name: str, message: str) -> None:
    verdict = watch(load(name), after=UNSCHEDULABLE_AFTER)

    assert isinstance(verdict, Failed)
    assert verdict.error["message"] == message


def test_an_image_that_never_arrives_is_not_worth_retrying_and_says_how_long_podq_waited() -> None:
    verdict = watch(load("errimagepull"), after=IMAGE_PULL_GRACE)

    assert isinstance(verdict, Failed)
    assert verdict.error["retryable"] is False
    assert verdict.error["details"] == {
        "container": "worker",
        "image": "127.0.0.1:5999/podq/does-not-exist:1",
        "reason": "ErrImagePull",
        "message": worker(load("errimagepull"))["state"]["waiting"]["message"],
        "waited_seconds": IMAGE_PULL_GRACE,
    }


def test_an_image_error_without_a_grace_period_has_no_waited_seconds() -> None:
    verdict = watch(load("invalidimagename"))

    assert isinstance(verdict, Failed)
    assert "waited_seconds" not in verdict.error["details"]


def test_an_unschedulable_pod_waits_with_the_schedulers_words() -> None:
    pod = load("unschedulable")

    verdict = watch(pod)

    assert verdict == Waiting(
        "Unschedulable",
        pod["status"]["conditions"][0]["message"],
        created(pod) + UNSCHEDULABLE_AFTER,
    )


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("oomkilled", "OOMKilled"),
        ("succeeded", "Completed"),
        ("exit1", "Error"),
        ("starterror", "StartError"),
        ("deadline-exceeded", "DeadlineExceeded"),
        ("evicted-emptydir", "Evicted"),
        ("node-shutdown", "Terminated"),
        # The worker never ran: the pod's phase is all there is.
        ("init-oomkilled", "Failed"),
    ],
)
def test_ended_carries_the_pods_reason_else_the_workers_else_the_phase(name: str, reason: str) -> None:
    assert watch(load(name)) == Ended(reason)


def test_a_terminating_pod_says_so() -> None:
    assert watch(load("terminating")) == Waiting("Terminating", "the worker pod is being deleted", None)


# Pods with more containers than the worker: injected init containers and sidecars -----------------------


def test_a_worker_oomkilled_behind_a_sidecar_ran_out_of_memory() -> None:
    # The sidecar's status comes first and is running; the worker's ends the query.
    pod = load("oomkilled-behind-sidecar")

    verdict = watch(pod)
    outcome = decide(pod, NOISE)

    assert verdict == Ended("OOMKilled")
    assert outcome.error is not None
    assert outcome.error["details"] == oomkilled_details("worker", 32)


def test_placement_behind_a_sidecar_is_the_workers() -> None:
    assert placement(load("oomkilled-behind-sidecar")) == oomkilled_placement(
        "podq-oomkilled-behind-sidecar", "Running"
    )


def test_a_worker_that_succeeded_behind_a_sidecar_is_its_result() -> None:
    pod = load("oomkilled-behind-sidecar")
    terminated = pod["status"]["containerStatuses"][1]["state"]["terminated"]
    terminated.update({"exitCode": 0, "reason": "Completed"})

    outcome = decide(pod, f"{NOISE}{OK}\n")

    assert outcome.error is None and outcome.result == RESULT


def test_an_oomkilled_injected_init_container_is_named_with_its_own_limit() -> None:
    # The worker never started: raising the query's memory would not help, and the message must not say so.
    outcome = decide(load("init-oomkilled"), None, log_problem="the worker never started")

    assert outcome.error is not None
    assert outcome.error["error_type"] == "memory"
    assert outcome.error["message"] == "the istio-init container ran out of memory (limit 64Mi)"
    assert outcome.error["details"] == oomkilled_details("istio-init", 64)


def test_an_init_container_that_pulls_its_image_too_long_fails_the_pod_as_an_image_error() -> None:
    pod = load("init-oomkilled")
    pod["status"]["phase"] = "Pending"
    init = pod["status"]["initContainerStatuses"][0]
    init["state"] = {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}

    waiting = watch(pod)
    failed = watch(pod, after=IMAGE_PULL_GRACE)

    assert waiting == Waiting("ImagePullBackOff", "Back-off pulling image", created(pod) + IMAGE_PULL_GRACE)
    assert isinstance(failed, Failed)
    assert failed.error["details"]["container"] == "istio-init"
    assert failed.error["message"] == (
        "the worker image docker.io/istio/proxyv2:1.22.0 cannot be run: "
        "ImagePullBackOff: Back-off pulling image"
    )


# Memory limits that are not there or not numbers ---------------------------------------------------------


def test_an_oomkilled_worker_without_a_memory_limit_is_still_out_of_memory() -> None:
    pod = load("oomkilled")
    del pod["spec"]["containers"][0]["resources"]["limits"]["memory"]

    outcome = decide(pod, NOISE)

    assert outcome.error is not None
    assert outcome.error["message"] == "the query ran out of memory (limit unset)"
    assert outcome.error["details"]["limit"] is None
    assert outcome.error["details"]["limit_bytes"] is None


def test_an_oomkilled_worker_whose_limit_is_no_quantity_keeps_the_text() -> None:
    pod = load("oomkilled")
    pod["spec"]["containers"][0]["resources"]["limits"]["memory"] = "lots"

    outcome = decide(pod, NOISE)

    assert outcome.error is not None
    assert outcome.error["message"] == "the query ran out of memory (limit lots)"
    assert outcome.error["details"]["limit_bytes"] is None


# Scheduling ----------------------------------------------------------------------------------------------


def test_a_scheduling_gated_pod_waits_without_a_deadline_of_its_own() -> None:
    # Only `Unschedulable` means the scheduler tried and failed; a gate is lifted by whoever set it.
    pod = load("scheduling-gated")

    verdict = watch(pod, after=10 * UNSCHEDULABLE_AFTER)

    assert verdict == Waiting(
        "SchedulingGated", "Scheduling is blocked due to non-empty scheduling gates", None
    )


def test_a_pod_not_scheduled_for_no_stated_reason_waits_in_its_phase() -> None:
    pod = load("scheduling-gated")
    condition = pod["status"]["conditions"][0]
    del condition["reason"], condition["message"]

    assert watch(pod, after=10 * UNSCHEDULABLE_AFTER) == Waiting("Pending", "", None)


def test_a_pod_without_a_creation_time_has_no_grace_period_left() -> None:
    pod = load("unschedulable")
    del pod["metadata"]["creationTimestamp"]

    verdict = observe(
        pod, now=0.0, unschedulable_after=UNSCHEDULABLE_AFTER, image_pull_grace=IMAGE_PULL_GRACE
    )

    assert isinstance(verdict, Failed)
    assert verdict.error["error_type"] == "unschedulable"


# Exit codes and signals, at their bounds ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exit_code", "death", "signal_fields"),
    [
        (128, "exited with code 128", {}),
        (129, "exited with code 129 (SIGHUP)", {"signal": "SIGHUP"}),
        (143, "exited with code 143 (SIGTERM)", {"signal": "SIGTERM"}),
        (128 + 64, "exited with code 192 (SIGRTMAX)", {"signal": "SIGRTMAX"}),
        (128 + 65, "exited with code 193", {}),
        (255, "exited with code 255", {}),
    ],
)
def test_an_exit_code_above_128_is_a_signal_up_to_the_last_one(
    exit_code: int, death: str, signal_fields: dict[str, str]
) -> None:
    pod = load("exit1")
    worker(pod)["state"]["terminated"]["exitCode"] = exit_code

    outcome = decide(pod, NOISE)

    assert outcome.error is not None
    assert outcome.error["message"] == f"the worker {death} without a usable result"
    assert outcome.error["details"] == {
        "exit_code": exit_code,
        **signal_fields,
        "container_reason": "Error",
        "envelope_problem": "no result envelope in the worker output",
        "log_tail": NOISE.rstrip("\n"),
        # FallbackToLogsOnError: the kubelet put the log's end there.
        "termination_message": NOISE.rstrip("\n"),
    }
    assert placement(pod)["exit_code"] == exit_code
    assert {key: value for key, value in placement(pod).items() if key == "signal"} == signal_fields


def test_a_worker_with_no_exit_code_says_so() -> None:
    pod = load("init-oomkilled")
    pod["status"]["initContainerStatuses"][0]["state"]["terminated"].update(
        {"exitCode": 1, "reason": "Error"}
    )

    outcome = decide(pod, None, log_problem="the worker never started")

    assert outcome.error is not None
    assert outcome.error["message"] == "the worker left no exit code without a usable result"
    assert outcome.error["details"] == {
        "container_reason": None,
        "envelope_problem": "the worker never started",
    }


# Partial pods, placements before the end -----------------------------------------------------------------


def test_a_pod_with_no_status_yet_is_pending() -> None:
    # Just created: the API server has not written a status, or only a phase.
    for pod in ({"metadata": {"name": "p"}, "spec": {}}, {"status": {}}, {"status": {"phase": None}}):
        assert watch_at(pod, 0.0) == Waiting("Pending", "", None)
        assert placement(pod) == {"kind": "kubernetes", **({"pod": "p"} if "metadata" in pod else {})}


def test_a_succeeded_pod_has_ended_even_without_container_statuses() -> None:
    assert watch_at({"status": {"phase": "Succeeded"}}, 0.0) == Ended("Succeeded")
    assert watch_at({"status": {"phase": "Failed"}}, 0.0) == Ended("Failed")


def test_a_running_pod_waits_with_no_message() -> None:
    assert watch(load("running")) == Waiting("Running", "", None)


def test_a_waiting_worker_says_why_it_waits() -> None:
    pod = load("containercreating")
    worker(pod)["state"]["waiting"]["message"] = "pulling the image"

    assert watch(pod) == Waiting("ContainerCreating", "pulling the image", None)


def test_placement_of_a_running_pod_has_its_start_and_no_end() -> None:
    assert placement(load("running")) == {
        "kind": "kubernetes",
        "namespace": "podq-h-classify-1",
        "pod": "podq-running",
        "node": "podq-e2e",
        "phase": "Running",
        "started_at": "2026-11-21T21:20:17Z",
    }


def test_placement_of_a_waiting_worker_names_what_it_waits_for() -> None:
    fields = placement(load("containercreating"))

    assert fields["container_reason"] == "ContainerCreating"
    assert fields["started_at"] == "2026-11-21T21:20:15Z", "the pod's start, the worker has none"
    assert "exit_code" not in fields and "finished_at" not in fields


def watch_at(pod: dict[str, Any], now: float) -> Waiting | Ended | Failed:
    return observe(pod, now=now, unschedulable_after=UNSCHEDULABLE_AFTER, image_pull_grace=IMAGE_PULL_GRACE)


# Disruptions: the pod's reason, the DisruptionTarget condition, or both ----------------------------------


def disrupted(
    reason: str | None, condition: dict[str, Any] | None, message: str | None = None
) -> dict[str, Any]:
    pod = load("exit137")
    status = pod["status"]
    status["phase"] = "Failed"
    status.pop("reason", None)
    status.pop("message", None)
    if reason is not None:
        status["reason"] = reason
    if message is not None:
        status["message"] = message
    if condition is not None:
        status["conditions"] = [*status.get("conditions", []), {"type": "DisruptionTarget", **condition}]
    return pod


def test_a_disruption_condition_gives_its_message_when_the_pod_has_none() -> None:
    pod = disrupted(None, {"status": "True", "reason": "DeletionByPodGC", "message": "PodGC: node gone"})

    error = decide(pod, "").error

    assert error is not None
    assert error["message"] == (
        "the worker pod was deleted by the pod garbage collector (its node is gone): PodGC: node gone"
    )
    assert error["details"] == {
        "reason": None,
        "message": "PodGC: node gone",
        "disruption_reason": "DeletionByPodGC",
    }
    assert error["retryable"] is True


def test_the_pods_own_message_wins_over_the_conditions() -> None:
    pod = disrupted(
        "Evicted", {"status": "True", "reason": "TerminationByKubelet", "message": "cond"}, "pod says"
    )

    error = decide(pod, "").error

    assert error is not None
    assert error["message"] == "the worker pod was evicted by the kubelet: pod says"
    assert error["details"]["message"] == "pod says"


def test_a_disruption_condition_that_is_not_true_is_no_disruption() -> None:
    pod = disrupted(None, {"status": "False", "reason": "PreemptionByScheduler", "message": "no"})

    error = decide(pod, "").error

    assert error is not None and error["error_type"] == "crash"


def test_an_unknown_disruption_reason_is_named_as_it_came() -> None:
    pod = disrupted(None, {"status": "True", "reason": "SomethingNew"})

    error = decide(pod, "").error

    assert error is not None
    assert error["message"] == "the worker pod was disrupted (SomethingNew)"
    assert error["details"] == {"reason": None, "message": "", "disruption_reason": "SomethingNew"}


def test_a_disruption_without_words_says_what_without_a_colon() -> None:
    error = decide(disrupted("Shutdown", None), "").error

    assert error is not None
    assert error["message"] == "the worker pod was stopped for a node shutdown"
    assert error["details"] == {"reason": "Shutdown", "message": ""}


def test_an_eviction_for_ephemeral_storage_is_not_retryable() -> None:
    for said in (
        "Pod ephemeral local storage usage exceeds the total limit of containers 1Gi.",
        'Container worker exceeded its local ephemeral storage limit "1Gi".',
    ):
        error = decide(disrupted("Evicted", None, said), "").error

        assert error is not None and error["retryable"] is False, said


def test_a_deadline_says_its_seconds_and_the_kubelets_words() -> None:
    error = decide(load("deadline-exceeded"), "").error

    assert error is not None
    assert error["details"] == {
        "phase": "run",
        "active_deadline_seconds": 3,
        "reason": "DeadlineExceeded",
        "message": "Pod was active on the node longer than the specified deadline",
    }


# A crash, with everything the user and the operator have to go on ----------------------------------------


def test_a_crash_of_a_pod_with_a_reason_of_its_own_keeps_it() -> None:
    pod = load("exit1")
    pod["status"]["reason"] = "UnexpectedAdmissionError"
    pod["status"]["message"] = "Allocate failed due to no healthy devices present"

    error = decide(pod, NOISE, log_problem="the log was cut at 10 MiB").error

    assert error is not None
    assert error["details"] == {
        "exit_code": 1,
        "container_reason": "Error",
        "envelope_problem": "no result envelope in the worker output",
        "log_tail": NOISE.rstrip("\n"),
        "log_problem": "the log was cut at 10 MiB",
        "termination_message": NOISE.rstrip("\n"),
        "pod_reason": "UnexpectedAdmissionError",
        "pod_message": "Allocate failed due to no healthy devices present",
    }


def test_a_crash_without_a_log_or_a_reason_why() -> None:
    error = decide(load("exit139"), None).error

    assert error is not None
    assert error["details"]["envelope_problem"] == "the pod log was not read"


def test_a_start_error_keeps_the_runtimes_words_and_the_exit_code() -> None:
    pod = load("starterror")
    terminated = worker(pod)["state"]["terminated"]

    error = decide(pod, None).error

    assert error is not None
    assert error["details"] == {"reason": "StartError", "message": terminated["message"], "exit_code": 128}


# Image errors with the kubelet's words missing -----------------------------------------------------------


def test_an_image_error_without_a_message_or_image_is_still_named() -> None:
    pod = load("errimageneverpull")
    del worker(pod)["state"]["waiting"]["message"], worker(pod)["image"]

    verdict = watch(pod)

    assert isinstance(verdict, Failed)
    assert verdict.error["message"] == "the worker image  cannot be run: ErrImageNeverPull: "
    assert verdict.error["details"] == {
        "container": "worker",
        "image": "",
        "reason": "ErrImageNeverPull",
        "message": "",
    }


def test_an_image_pull_wait_without_a_message_waits_with_none() -> None:
    pod = load("errimagepull")
    del worker(pod)["state"]["waiting"]["message"]

    assert watch(pod) == Waiting("ErrImagePull", "", created(pod) + IMAGE_PULL_GRACE)


def test_a_crash_of_a_pod_with_a_reason_and_no_message() -> None:
    pod = load("exit1")
    pod["status"]["reason"] = "UnexpectedAdmissionError"

    error = decide(pod, NOISE).error

    assert error is not None
    assert (error["details"]["pod_reason"], error["details"]["pod_message"]) == (
        "UnexpectedAdmissionError",
        "",
    )


def test_a_start_error_without_the_runtimes_words() -> None:
    pod = load("starterror")
    del worker(pod)["state"]["terminated"]["message"]

    error = decide(pod, None).error

    assert error is not None
    assert error["message"] == "the worker container could not start: "
    assert error["details"]["message"] == ""


def test_a_running_worker_runs_on_whatever_a_sidecar_waits_for() -> None:
    pod = load("oomkilled-behind-sidecar")
    worker_status = pod["status"]["containerStatuses"][1]
    worker_status["state"] = {"running": {"startedAt": "2026-11-21T21:20:18Z"}}
    sidecar = pod["status"]["containerStatuses"][0]
    sidecar["state"] = {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}

    assert watch(pod, after=10 * IMAGE_PULL_GRACE) == Waiting("Running", "", None)


def test_an_oomkilled_worker_with_requests_only_has_no_limit() -> None:
    pod = load("oomkilled")
    del pod["spec"]["containers"][0]["resources"]["limits"]

    error = decide(pod, NOISE).error

    assert error is not None
    assert error["message"] == "the query ran out of memory (limit unset)"


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        ({"phase": "Failed", "reason": "DeadlineExceeded"}, "timeout"),
        (
            {
                "phase": "Failed",
                "containerStatuses": [{"name": "worker", "state": {"terminated": {"reason": "OOMKilled"}}}],
            },
            "memory",
        ),
        (
            {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
            },
            "unschedulable",
        ),
    ],
    ids=["deadline", "oomkilled", "unschedulable"],
)
def test_a_pod_with_only_a_status_is_still_decided(status: dict[str, Any], error_type: str) -> None:
    # Hand-made pods (and any API object missing its metadata or spec) never raise.
    pod = {"status": status}

    verdict = watch_at(pod, 0.0)
    error = verdict.error if isinstance(verdict, Failed) else decide(pod, "").error

    assert error is not None and error["error_type"] == error_type


def test_the_log_tail_keeps_the_last_lines_own_trailing_characters() -> None:
    assert log_tail("first\nindented  \n\n") == "first\nindented  "
    assert log_tail("first\nprogress: XX\n") == "first\nprogress: XX"


def test_a_pool_pods_timeout_is_its_querys_own_not_its_deadline() -> None:
    """A pool pod's activeDeadlineSeconds also counts the time it stood idle before its query claimed it."""
    pod = load("deadline-exceeded")
    pod["metadata"].setdefault("annotations", {})[ANNOTATION_TIMEOUT] = "3"
    pod["spec"]["activeDeadlineSeconds"] = 63
    error = decide(pod, "").error
    assert error is not None
    assert error["error_type"] == "timeout"
    assert error["message"] == "the query did not finish within its deadline of 3 seconds"
    assert error["details"]["active_deadline_seconds"] == 63


# A pending pod held to its query's queue deadline -----------------------------------------------------------


def held_to(pod: dict[str, Any], now: float, deadline: QueueDeadline | None) -> Waiting | Ended | Failed:
    return observe(
        pod,
        now=now,
        unschedulable_after=UNSCHEDULABLE_AFTER,
        image_pull_grace=IMAGE_PULL_GRACE,
        queue_deadline=deadline,
    )


@pytest.mark.parametrize("name", ["unschedulable", "containercreating", "pending-no-status", "errimagepull"])
def test_a_pod_pending_past_the_queue_deadline_fails_as_a_queue_timeout(name: str) -> None:
    pod = load(name)
    deadline = QueueDeadline(at=created(pod) + 5, seconds=5)
    before = held_to(pod, created(pod) + 1, deadline)
    assert isinstance(before, Waiting) and before.recheck_at == deadline.at
    after = held_to(pod, deadline.at, deadline)
    assert isinstance(after, Failed)
    assert (after.error["error_type"], after.error["retryable"]) == ("timeout", True)
    # Why the pod was still pending is the user's clue: the scheduler's or the kubelet's own words.
    assert after.error["details"] == {
        "phase": "queue",
        "queue_timeout_seconds": 5,
        "pending_reason": before.reason,
        "pending_message": before.message,
    }


def test_an_earlier_grace_period_still_decides_first() -> None:
    pod = load("unschedulable")
    deadline = QueueDeadline(at=created(pod) + UNSCHEDULABLE_AFTER + 60, seconds=UNSCHEDULABLE_AFTER + 60)
    waiting = held_to(pod, created(pod) + 1, deadline)
    assert isinstance(waiting, Waiting) and waiting.recheck_at == created(pod) + UNSCHEDULABLE_AFTER
    failed = held_to(pod, created(pod) + UNSCHEDULABLE_AFTER, deadline)
    assert isinstance(failed, Failed) and failed.error["error_type"] == "unschedulable"


@pytest.mark.parametrize("name", ["running", "deadline-exceeded"])
def test_a_pod_whose_worker_runs_or_ran_is_past_the_queue_phase(name: str) -> None:
    pod = load(name)
    deadline = QueueDeadline(at=created(pod) + 1, seconds=1)
    assert held_to(pod, created(pod) + 3600, deadline) == held_to(pod, created(pod) + 3600, None)


# ---------------------------------------------------------------- usage


def started(pod: dict[str, Any]) -> float:
    [worker] = pod["status"]["containerStatuses"]
    return parse_time(worker["state"]["terminated"]["startedAt"])


def test_an_ended_pod_adds_its_starting_phase_to_the_workers_usage() -> None:
    pod = load("succeeded")
    worker_usage = {"peak_memory_bytes": 2**27, "cpu_seconds": 0.5, "phases": {"execute": 0.25}}
    outcome = decide(pod, "\n" + encode_envelope({"ok": True, "result": RESULT, "usage": worker_usage}))

    assert outcome.usage is not None
    assert outcome.usage["phases"]["starting"] == pytest.approx(started(pod) - created(pod))
    assert outcome.usage["phases"]["execute"] == 0.25
    assert (outcome.usage["peak_memory_bytes"], outcome.usage["peak_memory_source"]) == (2**27, "worker")


def test_an_oom_killed_pod_records_the_limit_it_hit_as_its_peak() -> None:
    pod = load("oomkilled")
    outcome = decide(pod, NOISE)

    assert outcome.error is not None and outcome.usage is not None
    assert outcome.usage["peak_memory_bytes"] == outcome.error["details"]["limit_bytes"]
    assert outcome.usage["peak_memory_source"] == "limit"
    assert outcome.usage["phases"]["starting"] == pytest.approx(started(pod) - created(pod))


def test_a_pod_without_timestamps_has_no_starting_phase() -> None:
    pod = load("succeeded")
    del pod["metadata"]["creationTimestamp"]
    outcome = decide(pod, OK)
    assert outcome.usage is not None and outcome.usage["phases"]["starting"] is None


def test_a_worker_started_the_second_its_pod_was_created_started_in_no_time() -> None:
    pod = load("evicted-api")  # created and started at 21:25:00

    outcome = decide(pod, "")

    assert outcome.usage is not None and outcome.usage["phases"]["starting"] == 0.0


def test_a_worker_the_kubelet_could_not_start_has_no_starting_phase() -> None:
    # A container that failed to start (StartError) is reported as started at the Unix epoch.
    outcome = decide(load("starterror"), None)

    assert outcome.usage is not None and outcome.usage["phases"]["starting"] is None


def test_a_running_worker_has_been_starting_since_its_pod_was_created() -> None:
    pod = load("running")  # created at 21:20:15, the worker running since 21:20:17

    assert starting_seconds(pod) == 2.0


def test_a_pod_that_failed_otherwise_than_memory_has_no_peak_but_what_the_worker_measured() -> None:
    outcome = decide(load("exit139"), NOISE)

    assert outcome.error is not None and outcome.error["error_type"] == "crash"
    assert outcome.usage is not None
    assert (outcome.usage["peak_memory_bytes"], outcome.usage["peak_memory_source"]) == (None, None)


def test_an_init_container_oom_kill_records_that_containers_limit_as_the_peak() -> None:
    outcome = decide(load("init-oomkilled"), None)

    assert outcome.usage is not None
    assert outcome.usage["peak_memory_bytes"] == parse_memory_bytes("64Mi"), "istio-init's, not the worker's"
    assert outcome.usage["peak_memory_source"] == "limit"


def test_a_memory_error_the_worker_reported_records_the_workers_limit_as_the_peak() -> None:
    out_of_memory = error_info(ErrorType.MEMORY, "the dataset does not fit in the memory limit", {})
    log = f"{NOISE}{encode_envelope({'ok': False, 'error': out_of_memory})}\n"

    outcome = decide(load("exit3-logtail"), log)

    assert outcome.error is not None and outcome.error["error_type"] == "memory"
    assert outcome.usage is not None
    assert outcome.usage["peak_memory_bytes"] == parse_memory_bytes("32Mi"), "the worker container's limit"
    assert outcome.usage["peak_memory_source"] == "limit"
