"""Fixtures for tests that talk to a real cluster through KUBECONFIG (loaded by tests/conftest.py).

`kube_client`: a factory of `KubeClient`s on that cluster. `kube_namespace`: a fresh namespace per test,
enforcing Pod Security "restricted" and labelled ``podq.dev/test=e2e`` (leftovers of a killed run are
found by that label), deleted afterwards. `busybox_pod` builds a pod that namespace admits, and
`wait_for_pod` waits on the API (list, then watch) until a pod reaches a state.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import aclosing
from typing import Any

import pytest

from controller.launchers.kubernetes.client.api import KubeClient
from controller.launchers.kubernetes.client.config import KubeConfig, load_config
from controller.launchers.kubernetes.client.errors import Gone
from tests.support.e2e import kubectl
from tests.support.waiting import wait_until

RUN_ID = uuid.uuid4().hex[:6]
TEST_LABELS = {"podq.dev/test": "e2e"}
TEST_SELECTOR = "podq.dev/test=e2e"
BUSYBOX_IMAGE = "podq.local/busybox:1.35.0-podq1"
NONROOT_UID = 65532
# After the API-server restart test the controller manager's informers back off (its first watches are
# refused until the restarted server has loaded RBAC): a new namespace's default service account was seen
# to take over 60 s then.
NAMESPACE_READY_SECONDS = 180
KUBECTL_POLL_SECONDS = 0.25

_namespace_numbers = itertools.count()


@pytest.fixture(scope="session")
def kube_config() -> KubeConfig:
    """The e2e cluster's configuration, from $KUBECONFIG; tests using it are skipped where it is unset."""
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("needs a cluster: KUBECONFIG is not set")
    return load_config(None, None)


@pytest.fixture
def kube_client(kube_config: KubeConfig) -> Callable[..., KubeClient]:
    """`kube_client(**overrides)`: a new client on the e2e cluster. Open it with ``async with`` inside the
    test's event loop: its watches feed that loop."""

    def make(**overrides: Any) -> KubeClient:
        options: dict[str, Any] = {"qps": 50, "burst": 100, "request_timeout": 30, **overrides}
        return KubeClient(kube_config, **options)

    return make


@pytest.fixture
def kube_namespace(kube_config: KubeConfig, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace for this test only (restricted, labelled), ready for pods; deleted afterwards."""
    name = f"podq-e2e-{RUN_ID}-{next(_namespace_numbers)}"
    manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {**TEST_LABELS, "pod-security.kubernetes.io/enforce": "restricted"},
            "annotations": {"podq.dev/test-id": request.node.nodeid},
        },
    }
    kubectl("create", "-f", "-", stdin=json.dumps(manifest))
    try:
        # The ServiceAccount admission plugin refuses pods until the controller manager has created the
        # namespace's default service account.
        wait_until(
            lambda: (
                "serviceaccount/default"
                in kubectl("get", "serviceaccounts", "-n", name, "-o", "name").split()
            ),
            f"the default service account of namespace {name}",
            within=NAMESPACE_READY_SECONDS,
            every=KUBECTL_POLL_SECONDS,
        )
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def busybox_pod(name: str, command: list[str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod running `command` in the harness's busybox image, admissible under Pod Security "restricted"."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {**TEST_LABELS, **(labels or {})}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": NONROOT_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "main",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}},
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }


async def wait_for_pod(
    api: KubeClient,
    namespace: str,
    name: str,
    condition: Callable[[dict[str, Any]], bool],
    *,
    what: str,
    within: float = 60,
) -> dict[str, Any]:
    """The pod `name` (labelled ``podq.dev/test=e2e``) once `condition(pod)` holds, seen through the API:
    a list, then a watch from the list's resourceVersion (a new list after each watch ends)."""
    try:
        async with asyncio.timeout(within):
            while True:
                pods, resource_version = await api.list_pods(namespace, TEST_SELECTOR)
                for pod in pods:
                    if pod["metadata"]["name"] == name and condition(pod):
                        return pod
                try:
                    watch = api.watch_pods(
                        namespace, TEST_SELECTOR, resource_version, timeout_seconds=int(within) + 1
                    )
                    async with aclosing(watch) as events:
                        async for event in events:
                            pod = event.object
                            if (
                                event.type != "BOOKMARK"
                                and pod["metadata"]["name"] == name
                                and condition(pod)
                            ):
                                return pod
                except Gone:
                    continue
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {within} s") from None
