"""The pod cache behind the watch: what followers see as pods change, vanish and come back under one name.

The list+watch loop itself runs against the real API server in tests/e2e; these are the cache's rules.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from controller.launchers.kubernetes.client.api import KubeClient, WatchEvent
from controller.launchers.kubernetes.pod_watch import Backoff, PodWatch

pytestmark = pytest.mark.unit


def pod(name: str, uid: str, phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid, "resourceVersion": "1"}, "status": {"phase": phase}}


def make_watch() -> PodWatch:
    # The client is never called by the cache's own methods.
    return PodWatch(cast(KubeClient, None), "ns", "sel", watch_seconds=60, relist_seconds=300)


def test_a_deleted_pod_keeps_its_last_state_and_is_flagged_gone() -> None:
    watch = make_watch()
    watch._apply(WatchEvent("ADDED", pod("a", "u1")))
    watch._apply(WatchEvent("DELETED", pod("a", "u1", "Succeeded")))
    state = watch.state("a")
    assert state is not None and state.gone and state.pod["status"]["phase"] == "Succeeded"
    assert watch.pods() == []


def test_the_late_deletion_of_an_earlier_pod_of_the_same_name_is_ignored() -> None:
    watch = make_watch()
    watch.seen(pod("a", "u2"))
    watch._apply(WatchEvent("DELETED", pod("a", "u1")))
    state = watch.state("a")
    assert state is not None and not state.gone and state.pod["metadata"]["uid"] == "u2"


def test_a_relist_marks_vanished_pods_gone_and_refreshes_the_rest() -> None:
    watch = make_watch()
    watch._apply(WatchEvent("ADDED", pod("a", "u1")))
    watch._apply(WatchEvent("ADDED", pod("b", "u2")))
    watch._replace_all([pod("b", "u2", "Succeeded")])
    a, b = watch.state("a"), watch.state("b")
    assert a is not None and a.gone
    assert b is not None and not b.gone and b.pod["status"]["phase"] == "Succeeded"


def test_an_answer_from_outside_the_watch_does_not_overwrite_a_newer_watched_state() -> None:
    watch = make_watch()
    watch._apply(WatchEvent("MODIFIED", pod("a", "u1", "Succeeded")))
    watch.seen(pod("a", "u1", "Pending"))
    state = watch.state("a")
    assert state is not None and state.pod["status"]["phase"] == "Succeeded"


def test_followers_are_woken_by_every_change_of_their_pod_only() -> None:
    async def scenario() -> None:
        watch = make_watch()
        with watch.following("a") as changed_a, watch.following("b") as changed_b:
            watch._apply(WatchEvent("ADDED", pod("a", "u1")))
            assert changed_a.is_set() and not changed_b.is_set()
            changed_a.clear()
            watch._replace_all([])
            assert changed_a.is_set()

    asyncio.run(scenario())


def test_forget_drops_only_pods_that_are_gone() -> None:
    watch = make_watch()
    watch._apply(WatchEvent("ADDED", pod("a", "u1")))
    watch.forget("a")
    assert watch.state("a") is not None
    watch._apply(WatchEvent("DELETED", pod("a", "u1")))
    watch.forget("a")
    assert watch.state("a") is None


def test_backoff_doubles_up_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(first=1, maximum=8)
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, base in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert 0.8 * base <= delay <= 1.2 * base
    backoff.reset()
    assert backoff.next_delay() <= 1.2
