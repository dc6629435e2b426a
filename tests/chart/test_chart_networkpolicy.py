"""The worker NetworkPolicy selects exactly the pods the controller creates, from the chart's own settings.

The worker pod here is built by controller/launchers/kubernetes/podspec.py from the settings the rendered
chart gives the controller, so the policy and the pods cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.launchers.base import Job, Limits
from controller.launchers.kubernetes.options import KubernetesOptions
from controller.launchers.kubernetes.podspec import (
    LABEL_INSTANCE,
    LABEL_NAME,
    WORKER_APP,
    build_pod,
)
from controller.settings import Settings
from tests.support.helm import ALL_TOGGLES, NAMESPACE, RELEASE, Helm, Manifest, controller_env, find, one
from worker_image.netpolicy import DEFAULT_BLOCKED
from worker_image.protocol import WorkerRequest

pytestmark = pytest.mark.chart

REQUEST: WorkerRequest = {
    "operation": "inspect",
    "fetch": {
        "connect_timeout_seconds": 5.0,
        "read_timeout_seconds": 30.0,
        "total_timeout_seconds": 300.0,
        "max_download_bytes": 2**30,
    },
    "url": "https://data.example.test/t.parquet",
}
IN_CLUSTER_CLASSES = {"private", "carrier-grade NAT", "link-local"}
JOB = Job(
    query_id="0f8e2d6c4b3a49e1a5c7d9b1e3f5a7c9",
    attempt=1,
    request=REQUEST,
    limits=Limits(cpu_millicores=500, memory_bytes=2**28, timeout_seconds=30),
)


def worker_pod(manifests: list[Manifest], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The pod the controller configured by these manifests would create."""
    env = controller_env(manifests)
    env.pop("PODQ_API_TOKENS_FILE", None)
    for name in Settings.model_fields:
        monkeypatch.delenv(f"PODQ_{name.upper()}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.kube_namespace is not None
    return build_pod(JOB, KubernetesOptions.from_settings(settings).pod, submitted_at=0.0)


def selects(policy: Manifest, pod: dict[str, Any]) -> bool:
    wanted = policy["spec"]["podSelector"]["matchLabels"]
    return bool(
        policy["metadata"]["namespace"] == pod["metadata"]["namespace"]
        and wanted.items() <= pod["metadata"]["labels"].items()
    )


@pytest.mark.parametrize("files", [[], [ALL_TOGGLES]], ids=["defaults", "all-toggles"])
def test_policy_selects_this_releases_workers(
    helm: Helm, monkeypatch: pytest.MonkeyPatch, files: list[Any]
) -> None:
    manifests = helm.render(files=files)
    policy = one(manifests, "NetworkPolicy")
    assert policy["spec"]["podSelector"] == {"matchLabels": {LABEL_NAME: WORKER_APP, LABEL_INSTANCE: RELEASE}}
    assert selects(policy, worker_pod(manifests, monkeypatch))


def test_policy_leaves_other_releases_and_the_controller_alone(
    helm: Helm, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = one(helm.render(), "NetworkPolicy")
    other = worker_pod(helm.render(release="other"), monkeypatch)
    assert not selects(policy, other)
    controller = one(helm.render(), "Deployment")["spec"]["template"]
    assert not selects(policy, {**controller, "metadata": {**controller["metadata"], "namespace": NAMESPACE}})


def test_worker_pod_takes_the_worker_values(helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    pod = worker_pod(helm.render(files=[ALL_TOGGLES]), monkeypatch)
    spec = pod["spec"]
    assert pod["metadata"]["namespace"] == "podq-workers"
    assert spec["containers"][0]["image"] == "registry.example/podq-worker:0.1.0-test"
    assert spec["containers"][0]["imagePullPolicy"] == "Always"
    assert spec["nodeSelector"] == {"pool": "batch"}
    assert spec["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}
    ]
    assert spec["priorityClassName"] == "podq-batch"
    assert spec["imagePullSecrets"] == [{"name": "worker-regcred"}]
    assert spec["serviceAccountName"] == "podq-worker"
    assert spec["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}}]


def test_no_ingress_and_egress_as_configured(helm: Helm) -> None:
    egress = [{"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 9000, "protocol": "TCP"}]}]
    spec = one(helm.render({"networkPolicy": {"egress": egress}}), "NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == []
    assert spec["egress"] == egress


def test_extra_egress_is_added_to_the_default(helm: Helm) -> None:
    extra = [{"to": [{"ipBlock": {"cidr": "10.88.0.1/32"}}]}]
    default = one(helm.render(), "NetworkPolicy")["spec"]["egress"]
    spec = one(helm.render({"networkPolicy": {"extraEgress": extra}}), "NetworkPolicy")["spec"]
    assert spec["egress"] == [*default, *extra]


def test_empty_egress_denies_all(helm: Helm) -> None:
    spec = one(helm.render({"networkPolicy": {"egress": []}}), "NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["egress"] == []


def test_default_egress_is_dns_and_public_web(helm: Helm) -> None:
    egress = one(helm.render(), "NetworkPolicy")["spec"]["egress"]
    dns, web = egress
    assert "to" not in dns
    assert sorted((p["port"], p["protocol"]) for p in dns["ports"]) == [(53, "TCP"), (53, "UDP")]
    assert sorted((p["port"], p["protocol"]) for p in web["ports"]) == [(80, "TCP"), (443, "TCP")]
    blocks = {b["ipBlock"]["cidr"]: b["ipBlock"]["except"] for b in web["to"]}
    assert set(blocks) == {"0.0.0.0/0", "::/0"}
    # The networks a cluster routes to that the fetch policy refuses by default: the pod, service and node
    # ranges (private, carrier-grade NAT) and link-local, home of the cloud metadata address.
    refused = {str(network) for network, name in DEFAULT_BLOCKED if name in IN_CLUSTER_CLASSES}
    assert {cidr for excepted in blocks.values() for cidr in excepted} == refused


def test_policy_off(helm: Helm) -> None:
    assert not find(helm.render({"networkPolicy": {"enabled": False}}), "NetworkPolicy")
