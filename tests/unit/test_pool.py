"""The warm pool's pure decisions: what a pool pod is, which pod a query may claim, what a claim writes,
and how many pods to create or delete."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.launchers.kubernetes.pod_status import parse_time
from controller.launchers.kubernetes.podspec import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_SUBMITTED_AT,
    ANNOTATION_TIMEOUT,
    LABEL_QUERY_ID,
    build_pod,
)
from controller.launchers.kubernetes.pool import (
    CLAIMED,
    IDLE,
    LABEL_POOL_TEMPLATE,
    LABEL_WARM,
    Plan,
    SizeClass,
    claim_deadline,
    claim_patch,
    claimable,
    claimed_by,
    got_no_request,
    plan,
    pool_pod,
    template_hash,
)
from tests.unit.test_podspec import BARE, JOB, SUBMITTED
from worker_image.protocol import (
    EXIT_NO_REQUEST,
    EXIT_USER_ERROR,
    REQUEST_ENV,
    REQUEST_STDIN_ENV,
    TEST_HOOKS_ENV,
)

pytestmark = pytest.mark.unit

SIZE = SizeClass(cpu_millicores=JOB.limits.cpu_millicores, memory_bytes=JOB.limits.memory_bytes)
HASH = template_hash(BARE, SIZE)
STARTED = "2024-05-06T07:00:00Z"


def pool_member(
    suffix: str, *, phase: str = "Running", started: str = STARTED, **labels: str
) -> dict[str, Any]:
    """A pool pod as the API server shows it: uid, resourceVersion, creation time and a status."""
    pod = pool_pod(BARE, SIZE, suffix)
    pod["metadata"].update(
        {"uid": f"uid-{suffix}", "resourceVersion": f"rv-{suffix}", "creationTimestamp": started}
    )
    pod["metadata"]["labels"].update(labels)
    state = {"running": {"startedAt": started}} if phase == "Running" else {"waiting": {}}
    pod["status"] = {
        "phase": phase,
        "startTime": started,
        "containerStatuses": [{"name": "worker", "state": state}],
    }
    return pod


def env(pod: dict[str, Any]) -> dict[str, Any]:
    return {
        item["name"]: item.get("value", item.get("valueFrom")) for item in pod["spec"]["containers"][0]["env"]
    }


def test_a_pool_pod_is_a_cold_pod_waiting_on_stdin_without_a_deadline() -> None:
    warm, cold = pool_pod(BARE, SIZE, "abc"), build_pod(JOB, BARE, submitted_at=SUBMITTED)
    assert warm["metadata"]["name"] == "podq-warm-abc"
    assert "activeDeadlineSeconds" not in warm["spec"]
    assert {k: v for k, v in warm["spec"].items() if k != "containers"} == {
        k: v for k, v in cold["spec"].items() if k not in ("containers", "activeDeadlineSeconds")
    }
    warm_container, cold_container = warm["spec"]["containers"][0], cold["spec"]["containers"][0]
    assert warm_container.pop("stdin") is True
    assert warm_container.pop("stdinOnce") is True
    assert {k: v for k, v in warm_container.items() if k != "env"} == {
        k: v for k, v in cold_container.items() if k != "env"
    }
    assert env(warm) == {**{k: v for k, v in env(cold).items() if k != REQUEST_ENV}, REQUEST_STDIN_ENV: "1"}


def test_a_pool_pod_is_labelled_idle_and_for_no_query() -> None:
    labels = pool_pod(BARE, SIZE, "abc")["metadata"]["labels"]
    cold_labels = build_pod(JOB, BARE, submitted_at=SUBMITTED)["metadata"]["labels"]
    assert labels == {
        **{k: v for k, v in cold_labels.items() if k != LABEL_QUERY_ID},
        LABEL_WARM: IDLE,
        LABEL_POOL_TEMPLATE: HASH,
    }


def test_a_pool_pod_has_the_owner_every_worker_pod_has() -> None:
    """Owned by the controller's service account, the pool goes with the Helm release (owner.py)."""
    owner = {"apiVersion": "v1", "kind": "ServiceAccount", "name": "podq", "uid": "0f1e2d3c"}
    owned = dataclasses.replace(BARE, owner=owner)
    assert pool_pod(owned, SIZE, "abc")["metadata"]["ownerReferences"] == [owner]
    assert "ownerReferences" not in pool_pod(BARE, SIZE, "abc")["metadata"]


def test_with_test_hooks_every_pool_pod_has_them() -> None:
    assert (
        env(pool_pod(dataclasses.replace(BARE, enable_test_hooks=True), SIZE, "abc"))[TEST_HOOKS_ENV] == "1"
    )
    assert TEST_HOOKS_ENV not in env(pool_pod(BARE, SIZE, "abc"))


@pytest.mark.parametrize(
    "other",
    [
        (dataclasses.replace(BARE, image="registry.example.test/podq-worker:1.2.4"), SIZE),
        (dataclasses.replace(BARE, tmp_size="2Gi"), SIZE),
        (BARE, SizeClass(SIZE.cpu_millicores, SIZE.memory_bytes * 2)),
    ],
    ids=["image", "tmp-size", "memory"],
)
def test_the_template_hash_changes_with_what_the_pod_is_built_from(other: tuple[Any, SizeClass]) -> None:
    assert template_hash(*other) != HASH
    assert template_hash(BARE, SIZE) == HASH


def test_only_running_idle_pods_of_this_template_are_claimable_longest_started_first() -> None:
    newer = pool_member("newer", started="2024-05-06T07:05:00Z")
    older = pool_member("older", started="2024-05-06T07:01:00Z")
    deleting = pool_member("deleting")
    deleting["metadata"]["deletionTimestamp"] = "2024-05-06T07:06:00Z"
    others = [
        pool_member("pending", phase="Pending"),
        pool_member("claimed", **{LABEL_WARM: CLAIMED}),
        pool_member("stale", **{LABEL_POOL_TEMPLATE: "0" * 16}),
        deleting,
        build_pod(JOB, BARE, submitted_at=SUBMITTED),
    ]
    assert claimable([newer, *others, older], HASH) == [older, newer]


def test_a_query_finds_the_pool_pod_claimed_for_it() -> None:
    mine = pool_member("mine", **{LABEL_WARM: CLAIMED, LABEL_QUERY_ID: JOB.query_id})
    other = pool_member("other", **{LABEL_WARM: CLAIMED, LABEL_QUERY_ID: "another"})
    assert claimed_by([other, mine, pool_member("idle")], JOB.query_id) is mine
    assert claimed_by([other], JOB.query_id) is None


# Long after every pod of these tests was created, and long before any ages out.
NOW = parse_time(STARTED) + 30
MAX_IDLE = 600.0


def planned(pods: list[dict[str, Any]], size: int, *, now: float = NOW) -> Plan:
    return plan(pods, HASH, size, now=now, max_idle_seconds=MAX_IDLE)


def test_the_plan_tops_the_idle_pods_up_to_the_size() -> None:
    pods = [pool_member("a"), pool_member("b", phase="Pending"), pool_member("c", **{LABEL_WARM: CLAIMED})]
    ages_out = parse_time(STARTED) + MAX_IDLE
    assert planned(pods, 4) == Plan(create=2, delete=(), recheck_at=ages_out)
    assert planned(pods, 2) == Plan(create=0, delete=(), recheck_at=ages_out)
    assert planned([], 3) == Plan(create=3, delete=(), recheck_at=None)


def test_the_plan_deletes_idle_pods_of_another_template_or_whose_worker_ended() -> None:
    stale = pool_member("stale", **{LABEL_POOL_TEMPLATE: "0" * 16})
    ended = pool_member("ended")
    ended["status"]["phase"] = "Failed"
    deleting = pool_member("deleting")
    deleting["metadata"]["deletionTimestamp"] = "2024-05-06T07:06:00Z"
    decided = planned([stale, ended, deleting, pool_member("ok")], 2)
    assert (decided.create, decided.delete) == (
        1,
        (("podq-warm-stale", "rv-stale"), ("podq-warm-ended", "rv-ended")),
    )


def test_an_idle_pod_past_its_maximum_idle_age_is_replaced_and_the_next_one_due_is_rechecked() -> None:
    old = pool_member("old", started="2024-05-06T07:00:00Z")
    young = pool_member("young", started="2024-05-06T07:04:00Z")
    claimed = pool_member("claimed", started="2024-05-06T06:00:00Z", **{LABEL_WARM: CLAIMED})
    created = parse_time("2024-05-06T07:00:00Z")
    decided = planned([old, young, claimed], 2, now=created + MAX_IDLE)
    assert decided == Plan(
        create=1,
        delete=(("podq-warm-old", "rv-old"),),
        recheck_at=parse_time("2024-05-06T07:04:00Z") + MAX_IDLE,
    )
    # A moment earlier, nothing is due, and the old pod is the next to look at.
    assert planned([old, young, claimed], 2, now=created + MAX_IDLE - 0.5) == Plan(
        create=0, delete=(), recheck_at=created + MAX_IDLE
    )


def test_beyond_the_size_starting_pods_go_first_then_the_oldest() -> None:
    """A lowered size after a restart, or replicas that overshot it: the pool shrinks to its size."""
    oldest = pool_member("oldest", started="2024-05-06T07:00:00Z")
    newest = pool_member("newest", started="2024-05-06T07:03:00Z")
    middle = pool_member("middle", started="2024-05-06T07:02:00Z")
    starting = pool_member("starting", phase="Pending", started="2024-05-06T07:04:00Z")
    pods = [oldest, starting, newest, middle]
    assert set(planned(pods, 2).delete) == {
        ("podq-warm-starting", "rv-starting"),
        ("podq-warm-oldest", "rv-oldest"),
    }
    assert planned(pods, 2).create == 0
    assert planned(pods, 0).create == 0 and len(planned(pods, 0).delete) == 4
    assert planned(pods, 4) == Plan(create=0, delete=(), recheck_at=parse_time(STARTED) + MAX_IDLE)


def test_two_replicas_seeing_the_same_pods_in_another_order_delete_the_same_ones() -> None:
    pods = [pool_member(name) for name in ("a", "b", "c", "d")]
    assert planned(pods, 2) == planned(list(reversed(pods)), 2)


POOL_PODS = st.lists(
    st.builds(
        lambda n, phase, state, template, created: pool_member(
            f"p{n}",
            phase=phase,
            started=f"2024-05-06T07:{created:02d}:00Z",
            **{LABEL_WARM: state, LABEL_POOL_TEMPLATE: template},
        ),
        st.integers(0, 10**6),
        st.sampled_from(["Pending", "Running", "Failed"]),
        st.sampled_from([IDLE, CLAIMED]),
        st.sampled_from([HASH, "0" * 16]),
        st.integers(0, 59),
    ),
    max_size=12,
    unique_by=lambda pod: str(pod["metadata"]["name"]),
)


@given(pods=POOL_PODS, size=st.integers(0, 8), minutes=st.integers(0, 70))
def test_the_plan_leaves_exactly_size_idle_pods_and_touches_only_idle_ones(
    pods: list[dict[str, Any]], size: int, minutes: int
) -> None:
    decided = plan(pods, HASH, size, now=parse_time(STARTED) + 60 * minutes, max_idle_seconds=MAX_IDLE)
    deleted = {name for name, _ in decided.delete}
    idle = {str(pod["metadata"]["name"]) for pod in pods if pod["metadata"]["labels"][LABEL_WARM] == IDLE}
    assert deleted <= idle
    assert len(deleted) == len(decided.delete)
    left = len(idle - deleted)
    assert left <= size and decided.create == size - left


def test_a_claim_is_conditional_relabels_annotates_and_sets_the_deadline() -> None:
    pod = pool_member("abc")
    before = copy.deepcopy(pod)
    now = parse_time(STARTED) + 100.25
    patch = claim_patch(pod, dataclasses.replace(JOB, submitted_at=SUBMITTED), now=now)
    assert pod == before
    meta = patch["metadata"]
    assert meta["resourceVersion"] == "rv-abc"
    assert meta["labels"] == {LABEL_WARM: CLAIMED, LABEL_QUERY_ID: JOB.query_id}
    assert meta["annotations"][ANNOTATION_TIMEOUT] == "30.5"
    assert meta["annotations"][ANNOTATION_ATTEMPT] == "2"
    assert meta["annotations"][ANNOTATION_SUBMITTED_AT] == "2024-05-06T07:08:09.123Z"
    assert patch["spec"] == {"activeDeadlineSeconds": 131}  # ceil(100.25 + 30.5)


@pytest.mark.parametrize(
    ("age", "timeout", "deadline"), [(0.0, 5.0, 5), (59.2, 5.0, 65), (0.0, 0.2, 1), (-3.0, 5.0, 5)]
)
def test_the_deadline_is_the_pods_age_plus_the_timeout_in_whole_seconds(
    age: float, timeout: float, deadline: int
) -> None:
    """A negative age is a controller clock behind the kubelet's: the query still gets its timeout."""
    assert claim_deadline(pool_member("abc"), parse_time(STARTED) + age, timeout) == deadline


def test_a_claim_for_a_resize_allows_for_it_in_the_deadline() -> None:
    """The resize's wait is not the query's: the deadline allows for it (lowered once it is applied)."""
    now = parse_time(STARTED) + 100.25
    patch = claim_patch(pool_member("abc"), JOB, now=now, extra_seconds=10)
    assert patch["spec"] == {"activeDeadlineSeconds": 141}  # ceil(100.25 + 30.5 + 10)


def ended(pod: dict[str, Any], exit_code: int, reason: str = "Error") -> dict[str, Any]:
    pod["status"]["phase"] = "Failed"
    pod["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": exit_code, "reason": reason}}
    return pod


def test_a_pool_pod_whose_worker_exited_for_want_of_a_request_got_none() -> None:
    """The attach was interrupted (stdin closed empty) or malformed: the query never ran there."""
    assert got_no_request(ended(pool_member("a", **{LABEL_WARM: CLAIMED}), EXIT_NO_REQUEST))


@pytest.mark.parametrize(
    "pod",
    [
        ended(pool_member("user-error", **{LABEL_WARM: CLAIMED}), EXIT_USER_ERROR),
        ended(pool_member("oom", **{LABEL_WARM: CLAIMED}), EXIT_NO_REQUEST, reason="OOMKilled"),
        ended(
            build_pod(JOB, BARE, submitted_at=SUBMITTED)
            | {"status": copy.deepcopy(pool_member("x")["status"])},
            EXIT_NO_REQUEST,
        ),
        pool_member("running", **{LABEL_WARM: CLAIMED}),
    ],
    ids=["another-exit", "oom-killed", "a-cold-pod", "still-running"],
)
def test_any_other_end_is_the_querys_own(pod: dict[str, Any]) -> None:
    assert not got_no_request(pod)
