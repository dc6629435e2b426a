"""The worker pod passes Pod Security "restricted" on a real API server, and a weakened one does not.

Server-side dry runs (``kubectl create --dry-run=server``): the API server runs every admission plugin
(PodSecurity, ServiceAccount, Priority) and defaulting, and persists nothing.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from controller.launchers.base import Job, Limits
from controller.launchers.kubernetes.podspec import PodTemplate, build_pod
from tests.support.e2e import kubectl
from tests.support.waiting import wait_until
from worker_image.protocol import WorkerRequest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="needs a cluster: KUBECONFIG is not set"),
]

RUN = uuid.uuid4().hex[:8]
TEST_LABEL = {"podq.dev/test": "e2e"}
REQUEST: WorkerRequest = {
    "operation": "query",
    "fetch": {
        "connect_timeout_seconds": 5.0,
        "read_timeout_seconds": 30.0,
        "total_timeout_seconds": 300.0,
        "max_download_bytes": 2**30,
    },
    "sql": "SELECT count(*) AS n FROM t",
    "datasets": [{"url": "http://10.88.0.1:8080/t.parquet", "table_name": "t"}],
    "max_rows": 1000,
    "debug": {"sleep_seconds": 1},
}


class Cluster(NamedTuple):
    namespace: str
    service_account: str
    priority_class: str


def create(manifest: dict[str, Any]) -> None:
    kubectl("create", "-f", "-", stdin=json.dumps(manifest))


def delete(kind: str, name: str) -> None:
    kubectl("delete", kind, name, "--ignore-not-found", "--wait=true")


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Cluster:
    """A namespace enforcing "restricted", with the service account and priority class pods may name."""
    setup = Cluster(
        namespace=f"podq-e2e-podspec-{RUN}", service_account="podq-worker", priority_class=f"podq-e2e-{RUN}"
    )
    request.addfinalizer(lambda: delete("namespace", setup.namespace))
    create(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": setup.namespace,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                    **TEST_LABEL,
                },
            },
        }
    )
    # Admission refuses a pod naming a service account or priority class that does not exist.
    create(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": setup.service_account, "namespace": setup.namespace, "labels": TEST_LABEL},
        }
    )
    request.addfinalizer(lambda: delete("priorityclass", setup.priority_class))
    create(
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": setup.priority_class, "labels": TEST_LABEL},
            "value": 1000,
            "description": "podq e2e test: worker pod admission",
        }
    )
    # A pod naming no service account gets "default", which the controller manager creates shortly after
    # the namespace.
    wait_until(
        lambda: (
            "serviceaccount/default"
            in kubectl("get", "serviceaccounts", "-n", setup.namespace, "-o", "name").split()
        ),
        "the namespace's default service account",
        within=60,
    )
    return setup


def worker_pod(cluster: Cluster, *, every_option: bool) -> dict[str, Any]:
    template = PodTemplate(
        namespace=cluster.namespace,
        instance="podq-e2e",
        image="podq.local/podq-worker:dev",
        image_pull_policy="Never",
        service_account=cluster.service_account if every_option else None,
        node_selector={"kubernetes.io/os": "linux"} if every_option else {},
        tolerations=(
            ({"key": "podq.dev/dedicated", "operator": "Equal", "value": "workers", "effect": "NoSchedule"},)
            if every_option
            else ()
        ),
        priority_class=cluster.priority_class if every_option else None,
        image_pull_secrets=("regcred",) if every_option else (),
        tmp_size="256Mi",
        enable_test_hooks=every_option,
    )
    job = Job(
        query_id=uuid.uuid4().hex,
        attempt=1,
        request=REQUEST,
        limits=Limits(cpu_millicores=500, memory_bytes=256 * 2**20, timeout_seconds=30),
    )
    return build_pod(job, template, submitted_at=1_700_000_000.0)


def dry_run(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod as the API server would store it; a `RuntimeError` with its reason if refused."""
    admitted: dict[str, Any] = json.loads(
        kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(pod))
    )
    return admitted


@pytest.mark.parametrize("every_option", [True, False], ids=["every template option set", "bare template"])
def test_worker_pod_is_admitted_as_guaranteed(cluster: Cluster, every_option: bool) -> None:
    pod = worker_pod(cluster, every_option=every_option)
    admitted = dry_run(pod)
    assert admitted["metadata"]["name"] == pod["metadata"]["name"]
    assert admitted["status"]["qosClass"] == "Guaranteed"
    (container,) = admitted["spec"]["containers"]
    assert container["resources"] == pod["spec"]["containers"][0]["resources"]
    if every_option:
        assert admitted["spec"]["serviceAccountName"] == cluster.service_account
        assert admitted["spec"]["priorityClassName"] == cluster.priority_class


def _container_security(pod: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = pod["spec"]["containers"][0]["securityContext"]
    return context


def _privileged(pod: dict[str, Any]) -> None:
    # Validation refuses privileged with allowPrivilegeEscalation false before admission sees it.
    del _container_security(pod)["allowPrivilegeEscalation"]
    _container_security(pod)["privileged"] = True


def _escalation(pod: dict[str, Any]) -> None:
    _container_security(pod)["allowPrivilegeEscalation"] = True


def _capabilities(pod: dict[str, Any]) -> None:
    del _container_security(pod)["capabilities"]


def _seccomp(pod: dict[str, Any]) -> None:
    del pod["spec"]["securityContext"]["seccompProfile"]


def _non_root(pod: dict[str, Any]) -> None:
    del pod["spec"]["securityContext"]["runAsNonRoot"]
    del _container_security(pod)["runAsNonRoot"]


def _root_user(pod: dict[str, Any]) -> None:
    pod["spec"]["securityContext"]["runAsUser"] = 0


class Weakened(NamedTuple):
    name: str
    weaken: Callable[[dict[str, Any]], None]
    # what the refusal names
    reason: str


WEAKENED = [
    Weakened("privileged container", _privileged, "privileged"),
    Weakened("privilege escalation allowed", _escalation, "allowPrivilegeEscalation"),
    Weakened("capabilities not dropped", _capabilities, "unrestricted capabilities"),
    Weakened("no seccomp profile", _seccomp, "seccompProfile"),
    Weakened("runAsNonRoot unset", _non_root, "runAsNonRoot"),
    Weakened("runs as root", _root_user, "runAsUser=0"),
]


@pytest.mark.parametrize("case", WEAKENED, ids=[case.name for case in WEAKENED])
def test_weakened_worker_pod_is_refused(cluster: Cluster, case: Weakened) -> None:
    pod = worker_pod(cluster, every_option=True)
    case.weaken(pod)
    with pytest.raises(RuntimeError, match="violates PodSecurity") as refused:
        dry_run(pod)
    assert case.reason in str(refused.value)
