"""The chart against a real API server: every rendered object is accepted, and its RBAC grants exactly what
the controller needs.

Server-side dry runs (``kubectl apply --dry-run=server``) run validation, defaulting and admission and
persist nothing. The ServiceMonitor CRD is not on the cluster and is not fetched from anywhere: a minimal
stand-in written here (`STAND_IN_CRD`) is installed for the module under a group of its own, and the
rendered ServiceMonitor is moved to that group, so the stand-in can never clash with or replace a real
prometheus-operator CRD. The RBAC proof needs no controller image: the ServiceAccount, Role and RoleBinding
are applied for real and the API server is asked (``kubectl auth can-i``, as the service account with the
groups its token carries) what that account may do.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

from tests.support.e2e import kubectl
from tests.support.helm import ALL_TOGGLES, POSTGRESQL, Helm, Manifest, controller_pod_spec, one
from tests.support.rbac import Account, can_i
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.chart]

RUN = uuid.uuid4().hex[:6]
TEST_LABELS = {"podq.dev/test": "e2e"}
RELEASE = "podq"
MONITORING_API = "monitoring.coreos.com/v1"
STAND_IN_GROUP = f"r{RUN}.chart-test.podq.dev"
RBAC_READY_SECONDS = 60
KUBECTL_POLL_SECONDS = 0.25
KUBECTL_TIMEOUT_SECONDS = 60

_DURATION = "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_SECRET_KEY = {
    "type": "object",
    "required": ["key"],
    "properties": {"name": {"type": "string"}, "key": {"type": "string"}, "optional": {"type": "boolean"}},
}
# A stand-in for prometheus-operator's ServiceMonitor CRD, written here: the fields the chart renders, with
# the operator's types and duration pattern, and no others, so a misspelt field fails the strict dry run.
STAND_IN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"type": "string", "enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "authorization": {
                                "type": "object",
                                "properties": {"type": {"type": "string"}, "credentials": _SECRET_KEY},
                            },
                        },
                    },
                },
            },
        },
    },
}
STAND_IN_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"servicemonitors.{STAND_IN_GROUP}", "labels": TEST_LABELS},
    "spec": {
        "group": STAND_IN_GROUP,
        "scope": "Namespaced",
        "names": {
            "kind": "ServiceMonitor",
            "listKind": "ServiceMonitorList",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
        },
        "versions": [
            {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": STAND_IN_SCHEMA}}
        ],
    },
}


class Namespaces(NamedTuple):
    release: str
    worker: str


class Applied(NamedTuple):
    names: list[str]
    stderr: str


def apply(manifests: list[Manifest], *, dry_run: bool) -> Applied:
    """`kubectl apply` (server-side dry run or for real) with strict field validation; the objects named
    as kubectl names them, and kubectl's warnings."""
    args = ["kubectl", "apply", "--validate=strict", "-o", "name", "-f", "-"]
    if dry_run:
        args.insert(2, "--dry-run=server")
    done = subprocess.run(
        args,
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}),
        capture_output=True,
        text=True,
        timeout=KUBECTL_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, f"kubectl apply refused the chart: {done.stderr.strip()}"
    return Applied(done.stdout.split(), done.stderr)


def namespace_manifest(name: str) -> Manifest:
    labels = {**TEST_LABELS, "pod-security.kubernetes.io/enforce": "restricted"}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


@pytest.fixture(scope="module")
def namespaces() -> Iterator[Namespaces]:
    if not os.environ.get("KUBECONFIG"):
        pytest.fail("the e2e tier needs KUBECONFIG (see tests/e2e/README.md)", pytrace=False)
    created = Namespaces(f"podq-e2e-chart-{RUN}", f"podq-e2e-chart-{RUN}-workers")
    try:
        for name in created:
            kubectl("create", "-f", "-", stdin=json.dumps(namespace_manifest(name)))
        yield created
    finally:
        for name in created:
            kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.fixture(scope="module")
def service_monitor_group() -> Iterator[str]:
    """The stand-in ServiceMonitor CRD, established; deleted afterwards whatever happened."""
    name = STAND_IN_CRD["metadata"]["name"]  # type: ignore[index]
    try:
        kubectl("create", "-f", "-", stdin=json.dumps(STAND_IN_CRD))
        kubectl("wait", "--for=condition=Established", f"crd/{name}", f"--timeout={KUBECTL_TIMEOUT_SECONDS}s")
        yield STAND_IN_GROUP
    finally:
        kubectl("delete", "crd", name, "--ignore-not-found", "--wait=false")


def render(
    helm: Helm, namespaces: Namespaces, *, all_toggles: bool, postgresql: bool = False, **values: Any
) -> list[Manifest]:
    """The chart for the release namespace: `postgresql` adds helm/podq/ci/postgresql-values.yaml (several
    controllers: the database Secret, RollingUpdate, the PodDisruptionBudget, anti-affinity)."""
    files = [ALL_TOGGLES] if all_toggles else []
    if postgresql:
        files.append(POSTGRESQL)
    if all_toggles:
        values.setdefault("worker", {"namespace": namespaces.worker})
    return helm.render(values, files=files, release=RELEASE, namespace=namespaces.release)


def on_stand_in(manifests: list[Manifest], group: str) -> list[Manifest]:
    """The manifests with every ServiceMonitor moved to the stand-in CRD's group."""
    return [
        {**m, "apiVersion": f"{group}/v1"}
        if m["apiVersion"] == MONITORING_API and m["kind"] == "ServiceMonitor"
        else m
        for m in manifests
    ]


def kubectl_name(manifest: Manifest) -> str:
    group = manifest["apiVersion"].rpartition("/")[0]
    kind = manifest["kind"].lower() + (f".{group}" if group else "")
    return f"{kind}/{manifest['metadata']['name']}"


SCENARIOS = [
    pytest.param(False, False, id="defaults"),
    pytest.param(True, False, id="all-toggles"),
    pytest.param(False, True, id="postgresql"),
    pytest.param(True, True, id="all-toggles-postgresql"),
]


@pytest.mark.parametrize(("all_toggles", "postgresql"), SCENARIOS)
def test_api_server_accepts_every_object(
    helm: Helm, namespaces: Namespaces, service_monitor_group: str, all_toggles: bool, postgresql: bool
) -> None:
    manifests = on_stand_in(
        render(helm, namespaces, all_toggles=all_toggles, postgresql=postgresql), service_monitor_group
    )
    applied = apply(manifests, dry_run=True)
    assert sorted(applied.names) == sorted(kubectl_name(m) for m in manifests)
    assert "Warning" not in applied.stderr, applied.stderr
    placed = {(m["kind"], m["metadata"].get("namespace")) for m in manifests}
    if all_toggles:
        assert ("Role", namespaces.worker) in placed and ("NetworkPolicy", namespaces.worker) in placed
        assert ("ServiceMonitor", namespaces.release) in placed
    if postgresql:
        assert ("PodDisruptionBudget", namespaces.release) in placed and (
            "Secret",
            namespaces.release,
        ) in placed
        assert one(manifests, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"


def labelled_objects(manifests: list[Manifest], *kinds: str) -> list[Manifest]:
    """The objects of these kinds, labelled as test objects: they are applied for real."""
    return [
        {**m, "metadata": {**m["metadata"], "labels": {**m["metadata"]["labels"], **TEST_LABELS}}}
        for m in manifests
        if m["kind"] in kinds
    ]


@pytest.fixture(scope="module")
def controller_account(helm: Helm, namespaces: Namespaces) -> Account:
    """The chart's ServiceAccount, Role and RoleBinding (workers in their own namespace), applied for real;
    returned once the API server's authorizer sees the binding."""
    manifests = render(helm, namespaces, all_toggles=False, worker={"namespace": namespaces.worker})
    apply(labelled_objects(manifests, "ServiceAccount", "Role", "RoleBinding"), dry_run=False)
    account = Account(namespaces.release, one(manifests, "ServiceAccount")["metadata"]["name"])
    wait_until(
        lambda: can_i(account, "create", "pods", namespaces.worker),
        "the controller's RoleBinding in effect",
        within=RBAC_READY_SECONDS,
        every=KUBECTL_POLL_SECONDS,
    )
    return account


class Access(NamedTuple):
    verb: str
    resource: str
    subresource: str = ""


GRANTED = [
    Access("create", "pods"),
    Access("get", "pods"),
    Access("list", "pods"),
    Access("watch", "pods"),
    Access("delete", "pods"),
    Access("get", "pods", "log"),
    Access("create", "events"),
]
DENIED_IN_WORKER_NAMESPACE = [
    Access("update", "pods"),
    Access("patch", "pods"),
    Access("deletecollection", "pods"),
    Access("create", "pods", "exec"),
    Access("create", "pods", "attach"),
    Access("patch", "pods", "resize"),
    Access("create", "pods", "eviction"),
    Access("list", "secrets"),
    Access("get", "secrets"),
    Access("get", "configmaps"),
    Access("create", "deployments.apps"),
    Access("create", "jobs.batch"),
    Access("list", "events"),
    Access("create", "events.events.k8s.io"),
    Access("create", "serviceaccounts", "token"),
    Access("create", "rolebindings.rbac.authorization.k8s.io"),
]


def access_id(access: Access) -> str:
    return "-".join(part for part in access if part)


@pytest.mark.parametrize("access", GRANTED, ids=access_id)
def test_granted_in_the_worker_namespace(
    controller_account: Account, namespaces: Namespaces, access: Access
) -> None:
    assert can_i(controller_account, access.verb, access.resource, namespaces.worker, access.subresource)


@pytest.mark.parametrize("access", GRANTED, ids=access_id)
def test_nothing_granted_in_the_release_namespace(
    controller_account: Account, namespaces: Namespaces, access: Access
) -> None:
    """With workers elsewhere, the controller may not even touch pods in its own namespace."""
    assert not can_i(controller_account, access.verb, access.resource, namespaces.release, access.subresource)


@pytest.mark.parametrize("access", DENIED_IN_WORKER_NAMESPACE, ids=access_id)
def test_denied_in_the_worker_namespace(
    controller_account: Account, namespaces: Namespaces, access: Access
) -> None:
    assert not can_i(controller_account, access.verb, access.resource, namespaces.worker, access.subresource)


@pytest.mark.parametrize(
    "access",
    [Access("list", "nodes"), Access("get", "nodes"), Access("list", "namespaces"), Access("list", "pods")],
    ids=access_id,
)
def test_denied_cluster_wide(controller_account: Account, access: Access) -> None:
    assert not can_i(controller_account, access.verb, access.resource, None, access.subresource)


def test_read_nodes_grants_list_nodes_only(
    helm: Helm, namespaces: Namespaces, controller_account: Account
) -> None:
    manifests = render(helm, namespaces, all_toggles=False, rbac={"readNodes": True})
    cluster_rbac = labelled_objects(manifests, "ClusterRole", "ClusterRoleBinding")
    assert len(cluster_rbac) == 2
    try:
        apply(cluster_rbac, dry_run=False)
        wait_until(
            lambda: can_i(controller_account, "list", "nodes", None),
            "the controller's ClusterRoleBinding in effect",
            within=RBAC_READY_SECONDS,
            every=KUBECTL_POLL_SECONDS,
        )
        for verb in ("get", "watch", "update", "delete"):
            assert not can_i(controller_account, verb, "nodes", None), verb
    finally:
        for manifest in cluster_rbac:
            kubectl("delete", kubectl_name(manifest), "--ignore-not-found", "--wait=false")


WARM_POOL_GRANTS = [
    Access("patch", "pods"),
    Access("get", "pods", "attach"),
    Access("create", "pods", "attach"),
]
RESIZE_GRANTS = [*WARM_POOL_GRANTS, Access("patch", "pods", "resize")]


@pytest.mark.parametrize(
    ("resize", "grants"), [(False, WARM_POOL_GRANTS), (True, RESIZE_GRANTS)], ids=["pool", "pool-resizing"]
)
def test_a_warm_pool_adds_patch_and_attach_on_pods_only(
    helm: Helm, namespaces: Namespaces, controller_account: Account, resize: bool, grants: list[Access]
) -> None:
    """The default Role grants none of these (DENIED_IN_WORKER_NAMESPACE); a pool of any size grants patch
    and attach, resizing (kubeWarmPoolResize) patch on pods/resize too, and nothing else more. The default
    Role is put back afterwards for the module's other tests."""
    worker = {"namespace": namespaces.worker}
    config = {"kubeWarmPoolSize": 2, "kubeWarmPoolResize": resize}
    pooled = render(helm, namespaces, all_toggles=False, worker=worker, config=config)
    default = render(helm, namespaces, all_toggles=False, worker=worker)
    try:
        apply(labelled_objects(pooled, "Role"), dry_run=False)

        def granted(access: Access) -> bool:
            verb, resource, subresource = access
            return can_i(controller_account, verb, resource, namespaces.worker, subresource)

        wait_until(
            lambda: all(granted(access) for access in grants),
            "the pool's grants in effect",
            within=RBAC_READY_SECONDS,
            every=KUBECTL_POLL_SECONDS,
        )
        for access in DENIED_IN_WORKER_NAMESPACE:
            assert granted(access) is (access in grants), access
        assert not can_i(controller_account, "patch", "pods", namespaces.release)
        assert not can_i(controller_account, "patch", "pods", namespaces.release, "resize")
    finally:
        apply(labelled_objects(default, "Role"), dry_run=False)
        wait_until(
            lambda: not can_i(controller_account, "patch", "pods", namespaces.worker),
            "the default Role back in effect",
            within=RBAC_READY_SECONDS,
            every=KUBECTL_POLL_SECONDS,
        )


@pytest.mark.parametrize(("all_toggles", "postgresql"), SCENARIOS)
def test_controller_pod_is_admitted_under_restricted(
    helm: Helm, namespaces: Namespaces, controller_account: Account, all_toggles: bool, postgresql: bool
) -> None:
    """A Deployment is not checked by Pod Security enforcement, its pods are: the controller's pod template
    as a pod, dry run in the restricted release namespace (where its ServiceAccount now exists)."""
    manifests = render(helm, namespaces, all_toggles=all_toggles, postgresql=postgresql)
    deployment = one(manifests, "Deployment")
    spec = dict(controller_pod_spec(manifests))
    spec["serviceAccountName"] = controller_account.name
    # The Priority admission plugin refuses a pod naming a PriorityClass that does not exist.
    spec.pop("priorityClassName", None)
    name = f"podq-controller-{RUN}"
    pod: Manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespaces.release,
            "labels": {**deployment["spec"]["template"]["metadata"]["labels"], **TEST_LABELS},
        },
        "spec": spec,
    }
    applied = apply([pod], dry_run=True)
    assert applied.names == [f"pod/{name}"]
    assert "Warning" not in applied.stderr, applied.stderr


def notes_token_command(notes: str) -> str:
    """The shell command NOTES.txt gives for reading a token (its backslash-continued lines joined)."""
    start = notes.index('export PODQ_TOKEN="$(')
    end = notes.index(')"', start) + 2
    return notes[start:end].replace("\\\n", " ")


@pytest.mark.parametrize(
    ("auth", "own_secret"),
    [
        pytest.param({"tokens": ["first-token", "second-token"]}, None, id="chart-secret"),
        pytest.param(
            {"existingSecret": "api-tokens", "existingSecretKey": "api.tokens"},
            {"api.tokens": "first-token\nsecond-token\n"},
            id="own-secret-dotted-key",
        ),
    ],
)
def test_notes_read_the_first_token(
    helm: Helm, namespaces: Namespaces, auth: dict[str, Any], own_secret: dict[str, str] | None
) -> None:
    """The token command NOTES.txt prints, run against the real Secret, yields the first token."""
    values = {"auth": auth}
    if own_secret is None:
        [secret] = labelled_objects(render(helm, namespaces, all_toggles=False, **values), "Secret")
    else:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": auth["existingSecret"],
                "namespace": namespaces.release,
                "labels": TEST_LABELS,
            },
            "stringData": own_secret,
        }
    apply([secret], dry_run=False)
    command = notes_token_command(helm.notes(values, namespace=namespaces.release))
    done = subprocess.run(
        ["bash", "-c", f'set -euo pipefail; {command}; printf %s "$PODQ_TOKEN"'],
        capture_output=True,
        text=True,
        timeout=KUBECTL_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "first-token"
