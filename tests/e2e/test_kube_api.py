"""The API client (controller/launchers/kubernetes/client/) against a real API server: pods, watches, logs.

How it copes with servers that misbehave is tests/integration/test_kube_client.py, on loopback servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing
from typing import Any, NamedTuple

import pytest

from controller.launchers.base import Limits
from controller.launchers.kubernetes.client.api import KubeClient
from controller.launchers.kubernetes.client.errors import (
    AlreadyExists,
    Forbidden,
    Gone,
    Invalid,
    KubeError,
    NotFound,
)
from controller.launchers.kubernetes.client.events import make_event
from controller.launchers.kubernetes.podspec import CONTAINER_NAME
from controller.launchers.kubernetes.resize import asked, progress, resize_patch
from controller.quantity import parse_memory_bytes
from tests.support.e2e import kubectl, kubectl_json
from tests.support.kube import TEST_SELECTOR, busybox_pod, wait_for_pod

pytestmark = pytest.mark.e2e

MakeClient = Callable[..., KubeClient]
SLEEPER = ["sleep", "3600"]
POD_SECONDS = 60


def phase(pod: dict[str, Any]) -> str:
    return str(pod.get("status", {}).get("phase", ""))


def test_version_and_nodes(kube_client: MakeClient) -> None:
    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with kube_client() as api:
            return await api.version(), await api.list_nodes()

    version, nodes = asyncio.run(scenario())
    assert version["major"] == "1" and version["gitVersion"].startswith("v1.")
    assert nodes and all(node["metadata"]["name"] and node["status"]["allocatable"] for node in nodes)


def test_create_get_list_delete(kube_client: MakeClient, kube_namespace: str) -> None:
    ns = kube_namespace

    async def scenario() -> None:
        async with kube_client() as api:
            created = await api.create_pod(ns, busybox_pod("sleeper", SLEEPER))
            assert (created["kind"], created["metadata"]["namespace"]) == ("Pod", ns)
            with pytest.raises(AlreadyExists):
                await api.create_pod(ns, busybox_pod("sleeper", SLEEPER))
            got = await api.get_pod(ns, "sleeper")
            assert got["metadata"]["uid"] == created["metadata"]["uid"]
            items, resource_version = await api.list_pods(ns, TEST_SELECTOR)
            assert [pod["metadata"]["uid"] for pod in items] == [created["metadata"]["uid"]]
            assert int(resource_version) >= int(created["metadata"]["resourceVersion"])
            assert (await api.list_pods(ns, "podq.dev/test=nothing-has-this"))[0] == []
            assert await api.delete_pod(ns, "sleeper", grace_period_seconds=0) is True
            with pytest.raises(NotFound):  # a zero grace period removes the object at once
                await api.get_pod(ns, "sleeper")
            assert await api.delete_pod(ns, "sleeper") is False

    asyncio.run(scenario())


class Refused(NamedTuple):
    pod: dict[str, Any]
    error: type[KubeError]
    says: str


ROOT_POD = busybox_pod("root", SLEEPER)
ROOT_POD["spec"]["securityContext"] = {}
ROOT_POD["spec"]["containers"][0]["securityContext"] = {}


@pytest.mark.parametrize(
    "case",
    [
        Refused(ROOT_POD, Forbidden, 'violates PodSecurity "restricted:latest"'),
        Refused(busybox_pod("Not_A_Name", SLEEPER), Invalid, "metadata.name: Invalid value"),
    ],
    ids=["restricted-namespace-refuses-root-403", "bad-name-422"],
)
def test_refusals_map_to_their_errors(kube_client: MakeClient, kube_namespace: str, case: Refused) -> None:
    async def scenario() -> tuple[KubeError, list[dict[str, Any]]]:
        async with kube_client() as api:
            with pytest.raises(KubeError) as raised:
                await api.create_pod(kube_namespace, case.pod)
            pods, _ = await api.list_pods(kube_namespace, TEST_SELECTOR)
        return raised.value, pods

    error, pods = asyncio.run(scenario())
    assert type(error) is case.error and case.says in error.message
    assert pods == []


def test_a_watch_from_the_lists_resource_version_sees_added_modified_deleted(
    kube_client: MakeClient, kube_namespace: str
) -> None:
    ns = kube_namespace

    async def scenario() -> list[tuple[str, str, str]]:
        seen: list[tuple[str, str, str]] = []

        async def watch_until_deleted(api: KubeClient, resource_version: str) -> None:
            async with aclosing(
                api.watch_pods(ns, TEST_SELECTOR, resource_version, timeout_seconds=120)
            ) as events:
                async for event in events:
                    if event.type != "BOOKMARK":
                        seen.append((event.type, event.object["metadata"]["name"], phase(event.object)))
                    if event.type == "DELETED":
                        return
            raise AssertionError(f"the watch ended before the pod was deleted: {seen}")

        async with kube_client() as api:
            pods, resource_version = await api.list_pods(ns, TEST_SELECTOR)
            assert pods == []
            watcher = asyncio.create_task(watch_until_deleted(api, resource_version))
            await api.create_pod(ns, busybox_pod("watched", ["echo", "done"]))
            await wait_for_pod(
                api, ns, "watched", lambda p: phase(p) == "Succeeded", what="pod watched to succeed"
            )
            await api.delete_pod(ns, "watched", grace_period_seconds=0)
            await asyncio.wait_for(watcher, POD_SECONDS)
        return seen

    seen = asyncio.run(scenario())
    assert {name for _, name, _ in seen} == {"watched"}
    kinds = [kind for kind, _, _ in seen]
    assert kinds[0] == "ADDED" and kinds[-1] == "DELETED" and set(kinds[1:-1]) == {"MODIFIED"}, seen
    assert "Succeeded" in [pod_phase for kind, _, pod_phase in seen if kind == "MODIFIED"]


def test_a_watch_from_an_expired_resource_version_raises_gone(
    kube_client: MakeClient, kube_namespace: str
) -> None:
    async def scenario() -> Gone:
        async with kube_client() as api:
            with pytest.raises(Gone) as raised:
                async with aclosing(
                    api.watch_pods(kube_namespace, TEST_SELECTOR, "1", timeout_seconds=30)
                ) as events:
                    async for event in events:
                        raise AssertionError(f"an event from resourceVersion 1: {event}")
        return raised.value

    error = asyncio.run(scenario())
    assert (error.status, error.reason) == (410, "Expired")


def test_read_log_returns_the_output_of_a_finished_container(
    kube_client: MakeClient, kube_namespace: str
) -> None:
    ns = kube_namespace
    script = "echo first line; echo 'PODQ-TEST second line é'"

    async def scenario() -> tuple[str, str, KubeError]:
        async with kube_client() as api:
            await api.create_pod(ns, busybox_pod("talker", ["sh", "-c", script]))
            await wait_for_pod(
                api, ns, "talker", lambda p: phase(p) == "Succeeded", what="pod talker to succeed"
            )
            whole = await api.read_log(ns, "talker", "main", limit_bytes=10_000)
            head = await api.read_log(ns, "talker", "main", limit_bytes=5)
            with pytest.raises(KubeError) as raised:
                await api.read_log(ns, "talker", "no-such-container", limit_bytes=100)
        return whole, head, raised.value

    whole, head, error = asyncio.run(scenario())
    assert whole == "first line\nPODQ-TEST second line é\n"
    assert head == "first"
    assert (error.status, error.reason) == (400, "BadRequest") and "no-such-container" in error.message


def test_an_event_created_for_a_pod_is_shown_with_the_pod(
    kube_client: MakeClient, kube_namespace: str
) -> None:
    ns = kube_namespace

    async def scenario() -> dict[str, Any]:
        async with kube_client() as api:
            pod = await api.create_pod(ns, busybox_pod("noted", SLEEPER))
            event = make_event(
                pod, reason="PodqE2ECheck", message="looked at by the e2e tier", type="Warning"
            )
            await api.create_event(ns, event)
        return pod

    pod = asyncio.run(scenario())
    selector = f"involvedObject.uid={pod['metadata']['uid']},reason=PodqE2ECheck"
    [event] = kubectl_json("get", "events", "-n", ns, "--field-selector", selector)["items"]
    assert (event["type"], event["message"], event["count"]) == ("Warning", "looked at by the e2e tier", 1)
    assert (event["reportingComponent"], event["source"]["component"]) == (
        "podq-controller",
        "podq-controller",
    )
    assert event["involvedObject"]["name"] == "noted" and event["involvedObject"]["kind"] == "Pod"
    described = kubectl("describe", "pod", "-n", ns, "noted")
    assert any(
        line.split()[:2] == ["Warning", "PodqE2ECheck"]
        and "podq-controller" in line
        and "looked at by" in line
        for line in described.splitlines()
    ), described


def test_a_running_pod_is_resized_up_in_place_and_lowering_its_memory_is_refused(
    kube_client: MakeClient, kube_namespace: str
) -> None:
    """`resize_pod` (a strategic merge patch of pods/resize): the kubelet applies a raise, read as warm.py
    reads it (`resize.progress`); the API server refuses to lower a running pod's memory (422)."""
    ns = kube_namespace
    pod = busybox_pod("resized", SLEEPER)
    pod["spec"]["containers"][0]["name"] = CONTAINER_NAME  # the container resize.py resizes
    larger = Limits(cpu_millicores=200, memory_bytes=64 * 2**20, timeout_seconds=60)
    smaller = Limits(cpu_millicores=200, memory_bytes=32 * 2**20, timeout_seconds=60)

    async def scenario() -> tuple[dict[str, Any], KubeError]:
        async with kube_client() as api:
            await api.create_pod(ns, pod)
            await wait_for_pod(api, ns, "resized", lambda p: phase(p) == "Running", what="pod running")
            patched = await api.resize_pod(ns, "resized", resize_patch(larger))
            assert asked(patched, larger), patched["spec"]
            applied = await wait_for_pod(
                api,
                ns,
                "resized",
                lambda p: progress(p, larger).state == "applied",
                what="the resize applied",
            )
            with pytest.raises(KubeError) as raised:
                await api.resize_pod(ns, "resized", resize_patch(smaller))
        return applied, raised.value

    applied, error = asyncio.run(scenario())
    [status] = applied["status"]["containerStatuses"]
    assert parse_memory_bytes(status["resources"]["limits"]["memory"]) == larger.memory_bytes, status
    assert status["restartCount"] == 0 and "running" in status["state"], status
    assert type(error) is Invalid and "memory" in error.message, error
