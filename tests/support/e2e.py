"""What the e2e tier needs around a cluster: its settings from the environment, kubectl, a fixture file
server the pods can reach, and the real controller running the kubernetes launcher against a test's
namespace, with a check that no podq pod outlives the test.

Environment (set by `tests/run.sh` when it brings the harness cluster up; see tests/e2e/README.md):
``KUBECONFIG``, ``PODQ_E2E_WORKER_IMAGE`` (present on the nodes: nothing is pulled) and
``PODQ_E2E_HOST_ADDRESS`` (the address of this machine that pods can reach).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.quantity import parse_cpu_millicores
from controller.testing.fileserver import FileServer
from controller.testing.process import ControllerProcess
from tests.support.waiting import wait_until

POD_GONE_TIMEOUT = 90.0
KUBECTL_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class E2EEnv:
    worker_image: str
    host_address: str


def kubectl(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json"))


def podq_pods(namespace: str, instance: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/managed-by=podq,app.kubernetes.io/instance={instance}"
    items: list[dict[str, Any]] = kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return items


def pod_events(namespace: str, pod: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.kind=Pod,involvedObject.name={pod}"
    items: list[dict[str, Any]] = kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", selector
    )["items"]
    return items


@pytest.fixture(scope="session")
def e2e_env() -> E2EEnv:
    missing = [
        name for name in ("PODQ_E2E_WORKER_IMAGE", "PODQ_E2E_HOST_ADDRESS") if not os.environ.get(name)
    ]
    if missing:
        pytest.fail(
            f"the e2e tier needs {', '.join(missing)} (tests/run.sh sets them with the harness cluster; "
            "see tests/e2e/README.md)",
            pytrace=False,
        )
    return E2EEnv(os.environ["PODQ_E2E_WORKER_IMAGE"], os.environ["PODQ_E2E_HOST_ADDRESS"])


@pytest.fixture(scope="session")
def pod_file_server(parquet_dir: Path, e2e_env: E2EEnv) -> Iterator[FileServer]:
    """The fixture datasets, served at the address pods reach this machine at."""
    with FileServer(parquet_dir, host=e2e_env.host_address) as server:
        yield server


@pytest.fixture
def pod_closed_port_url(e2e_env: E2EEnv) -> str:
    """A URL on the pods' way to this machine where nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind((e2e_env.host_address, 0))
        port = sock.getsockname()[1]
    return f"http://{e2e_env.host_address}:{port}"


StartKubeController = Callable[..., ControllerProcess]


@dataclass
class KubeControllers:
    """The controllers of one test, all sharing its namespace, instance label and data directory."""

    namespace: str
    instance: str
    data_dir: Path
    log_path: Path
    started: list[ControllerProcess]

    def pods(self) -> list[dict[str, Any]]:
        return podq_pods(self.namespace, self.instance)


@pytest.fixture
def kube_controllers(
    tmp_path: Path, kube_namespace: str, e2e_env: E2EEnv
) -> Iterator[tuple[KubeControllers, StartKubeController]]:
    """A factory of controllers on the kubernetes launcher. Afterwards every controller is stopped and no
    pod of theirs may remain (the TTL is 0 unless a test sets it: each pod must be deleted once its
    outcome is stored, and a cancelled query's at once)."""
    controllers = KubeControllers(
        namespace=kube_namespace,
        instance=f"e2e-{uuid.uuid4().hex[:8]}",
        data_dir=tmp_path / "data",
        log_path=tmp_path / "controller.log",
        started=[],
    )

    def start(**settings: object) -> ControllerProcess:
        env = {
            "PODQ_LAUNCHER": "kubernetes",
            "PODQ_KUBE_NAMESPACE": controllers.namespace,
            "PODQ_KUBE_INSTANCE": controllers.instance,
            "PODQ_WORKER_IMAGE": e2e_env.worker_image,
            "PODQ_ENABLE_TEST_HOOKS": "true",
            # The fixture server is on this machine's private address, which the fetch policy refuses.
            "PODQ_FETCH_ALLOWED_NETWORKS": json.dumps([f"{e2e_env.host_address}/32"]),
            **{f"PODQ_{key.upper()}": str(value) for key, value in settings.items()},
        }
        controller = ControllerProcess(controllers.data_dir, env, controllers.log_path)
        controller.start(timeout=60)
        controllers.started.append(controller)
        return controller

    yield controllers, start
    for controller in controllers.started:
        controller.stop()
    wait_until(
        lambda: not controllers.pods(),
        f"the deletion of every podq pod of instance {controllers.instance}",
        within=POD_GONE_TIMEOUT,
        every=KUBECTL_POLL_SECONDS,
    )


def running_pod(controllers: KubeControllers, query_id: str, timeout: float = 60) -> dict[str, Any]:
    """The query's pod once its worker container runs."""
    name = f"podq-{query_id}"
    found: dict[str, Any] = {}

    def running() -> bool:
        for pod in controllers.pods():
            if pod["metadata"]["name"] == name and pod.get("status", {}).get("phase") == "Running":
                found.update(pod)
                return True
        return False

    wait_until(running, f"pod {name} running", within=timeout, every=KUBECTL_POLL_SECONDS)
    return found


BALLAST_FREE_MILLICORES = 200


def _node_free_millicores() -> tuple[str, int]:
    """The emptiest node and the CPU its pods do not request yet."""
    nodes = kubectl_json("get", "nodes")["items"]
    pods = kubectl_json(
        "get", "pods", "-A", "--field-selector", "status.phase!=Succeeded,status.phase!=Failed"
    )
    best: tuple[str, int] = ("", -1)
    for node in nodes:
        name = node["metadata"]["name"]
        free = parse_cpu_millicores(node["status"]["allocatable"]["cpu"])
        for pod in pods["items"]:
            if pod["spec"].get("nodeName") == name:
                for container in pod["spec"]["containers"]:
                    cpu = container.get("resources", {}).get("requests", {}).get("cpu")
                    free -= parse_cpu_millicores(cpu) if cpu else 0
        best = max(best, (name, free), key=lambda item: item[1])
    return best


@pytest.fixture
def ballast() -> Iterator[Callable[[str], int]]:
    """Fill a node's CPU but `BALLAST_FREE_MILLICORES` with a sleeping busybox pod; returns the CPU left free,
    so a pod asking for a little more fits the empty node but not now. For single-node clusters (the
    harness's, a one-node kind): with several nodes it fills the emptiest one only."""
    created: list[tuple[str, str]] = []

    def fill(namespace: str) -> int:
        node, free = _node_free_millicores()
        request = free - BALLAST_FREE_MILLICORES
        assert request > 0, f"node {node} has only {free}m CPU free"
        name = f"ballast-{uuid.uuid4().hex[:6]}"
        kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(_ballast_pod(name, node, request)))
        created.append((namespace, name))
        wait_until(
            lambda: kubectl_json("get", "pod", "-n", namespace, name)["status"].get("phase") == "Running",
            f"ballast pod {name} running",
            within=60,
            every=KUBECTL_POLL_SECONDS,
        )
        return BALLAST_FREE_MILLICORES

    yield fill
    for namespace, name in created:
        kubectl(
            "delete", "pod", "-n", namespace, name, "--grace-period=0", "--wait=false", "--ignore-not-found"
        )


def _ballast_pod(name: str, node: str, millicores: int) -> dict[str, Any]:
    image = os.environ.get("PODQ_E2E_BALLAST_IMAGE", "podq.local/busybox:1.35.0-podq1")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"podq.dev/test": "e2e"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "ballast",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sleep", "3600"],
                    "resources": {
                        "requests": {"cpu": f"{millicores}m", "memory": "16Mi"},
                        "limits": {"cpu": f"{millicores}m", "memory": "16Mi"},
                    },
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }
