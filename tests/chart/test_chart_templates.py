"""The chart's templates, rendered by `helm template` and read as objects: their logic, one rule a test."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from tests.support.helm import (
    ALL_TOGGLES,
    CHART_DIR,
    NAMESPACE,
    POSTGRESQL,
    RELEASE,
    Helm,
    HelmFailed,
    Manifest,
    controller_container,
    controller_env,
    controller_pod_spec,
    find,
    one,
)

pytestmark = pytest.mark.chart

CHART = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
WORKER_NAMESPACE = "podq-workers"
TOKENS_FILE = "/etc/podq/tokens/tokens"
DEFAULT_KINDS = [
    "ConfigMap",
    "Deployment",
    "NetworkPolicy",
    "PersistentVolumeClaim",
    "Pod",  # the `helm test` hook (templates/tests/test-query.yaml)
    "Role",
    "RoleBinding",
    "Service",
    "ServiceAccount",
]
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}
ROLE_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]
# With a warm pool: claiming a pool pod (patch) and writing to its worker (pods/attach).
POOL_ROLE_RULES = [
    {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["create", "get", "list", "watch", "delete", "patch"],
    },
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods/attach"], "verbs": ["get", "create"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]
# With resizing too (on by default): resizing a claimed pool pod in place (pods/resize).
RESIZE_ROLE_RULES = [
    *POOL_ROLE_RULES[:3],
    {"apiGroups": [""], "resources": ["pods/resize"], "verbs": ["patch"]},
    *POOL_ROLE_RULES[3:],
]


def kinds(manifests: list[Manifest]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            [],
            DEFAULT_KINDS,
            id="defaults",
        ),
        pytest.param(
            [ALL_TOGGLES],
            [*DEFAULT_KINDS, "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Secret", "ServiceMonitor"],
            id="all-toggles",
        ),
        pytest.param(
            [POSTGRESQL],
            [*(k for k in DEFAULT_KINDS if k != "PersistentVolumeClaim"), "PodDisruptionBudget", "Secret"],
            id="postgresql",
        ),
        pytest.param(
            [ALL_TOGGLES, POSTGRESQL],
            [
                *(k for k in DEFAULT_KINDS if k != "PersistentVolumeClaim"),
                *("ClusterRole", "ClusterRoleBinding", "ConfigMap", "Secret", "ServiceMonitor"),
                *("PodDisruptionBudget", "Secret"),
            ],
            id="all-toggles-postgresql",
        ),
    ],
)
def test_rendered_objects(helm: Helm, files: list[Any], expected: list[str]) -> None:
    assert kinds(helm.render(files=files)) == sorted(expected)


@pytest.mark.parametrize(
    "files", [[], [ALL_TOGGLES], [ALL_TOGGLES, POSTGRESQL]], ids=["defaults", "all-toggles", "postgresql"]
)
def test_standard_labels(helm: Helm, files: list[Any]) -> None:
    for manifest in helm.render(files=files):
        labels = manifest["metadata"]["labels"]
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        assert labels["app.kubernetes.io/name"] == "podq", where
        assert labels["app.kubernetes.io/instance"] == RELEASE, where
        assert labels["app.kubernetes.io/version"] == CHART["appVersion"], where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where
        assert labels["helm.sh/chart"] == f"podq-{CHART['version']}", where


def test_selectors_find_the_controller_pod(helm: Helm) -> None:
    manifests = helm.render({"podLabels": {"team": "data"}})
    deployment = one(manifests, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert pod_labels["team"] == "data"
    assert one(manifests, "Service")["spec"]["selector"] == selector


def test_service(helm: Helm) -> None:
    manifests = helm.render({"service": {"port": 8080, "type": "NodePort"}})
    service = one(manifests, "Service")
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    ports = controller_container(manifests)["ports"]
    assert ports == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert controller_env(manifests)["PODQ_PORT"] == "8000"


@pytest.mark.parametrize(
    ("worker_namespace", "expected"),
    [("", NAMESPACE), (WORKER_NAMESPACE, WORKER_NAMESPACE)],
    ids=["release-namespace", "own-worker-namespace"],
)
def test_worker_namespace_placement(helm: Helm, worker_namespace: str, expected: str) -> None:
    manifests = helm.render({"worker": {"namespace": worker_namespace}})
    in_worker_namespace = {"Role", "RoleBinding", "NetworkPolicy"}
    for manifest in manifests:
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        wanted = expected if manifest["kind"] in in_worker_namespace else NAMESPACE
        assert manifest["metadata"]["namespace"] == wanted, where
    binding = one(manifests, "RoleBinding")
    account = one(manifests, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": one(manifests, "Role")["metadata"]["name"],
    }
    assert controller_env(manifests)["PODQ_KUBE_NAMESPACE"] == expected
    assert controller_pod_spec(manifests)["serviceAccountName"] == account["name"]


@pytest.mark.parametrize(
    ("files", "values", "rules"),
    [
        ([], {}, ROLE_RULES),
        ([], {"config": {"kubeWarmPoolSize": 1}}, RESIZE_ROLE_RULES),
        ([ALL_TOGGLES], {}, RESIZE_ROLE_RULES),
        ([ALL_TOGGLES], {"config": {"kubeWarmPoolSize": 0}}, ROLE_RULES),
        ([], {"config": {"kubeWarmPoolSize": 1, "kubeWarmPoolResize": False}}, POOL_ROLE_RULES),
    ],
    ids=["defaults", "warm-pool", "all-toggles", "all-toggles-without-pool", "warm-pool-no-resizing"],
)
def test_role_grants_exactly_what_the_controller_calls(
    helm: Helm, files: list[Any], values: dict[str, Any], rules: list[dict[str, Any]]
) -> None:
    assert one(helm.render(values, files=files), "Role")["rules"] == rules


def test_read_nodes(helm: Helm) -> None:
    assert not find(helm.render(), "ClusterRole")
    manifests = helm.render({"rbac": {"readNodes": True}})
    role = one(manifests, "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]
    assert "namespace" not in role["metadata"]
    binding = one(manifests, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    account = one(manifests, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    # Cluster-scoped names carry the namespace, so two releases of one name cannot collide.
    assert NAMESPACE in role["metadata"]["name"]


def test_existing_service_account(helm: Helm) -> None:
    manifests = helm.render({"serviceAccount": {"create": False, "name": "managed-elsewhere"}})
    assert not find(manifests, "ServiceAccount")
    assert controller_pod_spec(manifests)["serviceAccountName"] == "managed-elsewhere"
    assert one(manifests, "RoleBinding")["subjects"][0]["name"] == "managed-elsewhere"
    with pytest.raises(HelmFailed, match=r"serviceAccount\.name is required"):
        helm.render({"serviceAccount": {"create": False}})


def test_service_account_token_is_mounted(helm: Helm) -> None:
    """The controller needs its token to reach the API server."""
    manifests = helm.render({"serviceAccount": {"annotations": {"example.com/role": "x"}}})
    assert controller_pod_spec(manifests)["automountServiceAccountToken"] is True
    account = one(manifests, "ServiceAccount")
    assert account["automountServiceAccountToken"] is True
    assert account["metadata"]["annotations"] == {"example.com/role": "x"}


def volumes(manifests: list[Manifest]) -> dict[str, dict[str, Any]]:
    return {volume.pop("name"): volume for volume in controller_pod_spec(manifests)["volumes"]}


def mounts(manifests: list[Manifest]) -> dict[str, dict[str, Any]]:
    return {mount.pop("mountPath"): mount for mount in controller_container(manifests)["volumeMounts"]}


PERSISTENCE_CASES = [
    pytest.param({}, {"persistentVolumeClaim": {"claimName": "podq-data"}}, None, id="default-class"),
    pytest.param(
        {"storageClass": "fast"}, {"persistentVolumeClaim": {"claimName": "podq-data"}}, "fast", id="class"
    ),
    pytest.param(
        {"storageClass": "-"}, {"persistentVolumeClaim": {"claimName": "podq-data"}}, "", id="no-class"
    ),
    pytest.param({"enabled": False}, {"emptyDir": {}}, None, id="off-emptydir"),
    pytest.param(
        {"existingClaim": "kept"}, {"persistentVolumeClaim": {"claimName": "kept"}}, None, id="existing"
    ),
]


@pytest.mark.parametrize(("persistence", "volume", "storage_class"), PERSISTENCE_CASES)
def test_store_volume(
    helm: Helm, persistence: dict[str, Any], volume: dict[str, Any], storage_class: str | None
) -> None:
    manifests = helm.render({"persistence": {**persistence, "size": "3Gi"}})
    assert volumes(manifests)["data"] == volume
    assert mounts(manifests)["/var/lib/podq"] == {"name": "data"}
    assert controller_env(manifests)["PODQ_DATA_DIR"] == "/var/lib/podq"
    claims = find(manifests, "PersistentVolumeClaim")
    creates_claim = persistence.get("enabled", True) and not persistence.get("existingClaim")
    assert len(claims) == (1 if creates_claim else 0)
    if creates_claim:
        spec = claims[0]["spec"]
        assert claims[0]["metadata"]["name"] == volume["persistentVolumeClaim"]["claimName"]
        assert spec["resources"] == {"requests": {"storage": "3Gi"}}
        assert spec["accessModes"] == ["ReadWriteOnce"]
        assert spec.get("storageClassName") == storage_class
        assert ("storageClassName" in spec) == (storage_class is not None)


def test_tmp_is_writable_under_a_read_only_root(helm: Helm) -> None:
    manifests = helm.render()
    assert volumes(manifests)["tmp"] == {"emptyDir": {}}
    assert mounts(manifests)["/tmp"] == {"name": "tmp"}


def test_no_auth_by_default(helm: Helm) -> None:
    manifests = helm.render()
    assert not find(manifests, "Secret")
    assert "PODQ_API_TOKENS_FILE" not in controller_env(manifests)
    assert "tokens" not in volumes(manifests)


def test_tokens_from_values(helm: Helm) -> None:
    manifests = helm.render({"auth": {"tokens": ["tok-a", "tok-b"]}})
    secret = one(manifests, "Secret")
    data = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert data == {"tokens": "tok-a\ntok-b\n", "metrics-token": "tok-a"}
    assert controller_env(manifests)["PODQ_API_TOKENS_FILE"] == TOKENS_FILE
    assert volumes(manifests)["tokens"] == {
        "secret": {"secretName": secret["metadata"]["name"], "items": [{"key": "tokens", "path": "tokens"}]}
    }
    # A directory mount, not subPath: the kubelet swaps the file in place when the Secret changes.
    assert mounts(manifests)["/etc/podq/tokens"] == {"name": "tokens", "readOnly": True}


def test_tokens_from_an_existing_secret(helm: Helm) -> None:
    manifests = helm.render({"auth": {"existingSecret": "api-tokens", "existingSecretKey": "list.txt"}})
    assert not find(manifests, "Secret")
    assert controller_env(manifests)["PODQ_API_TOKENS_FILE"] == TOKENS_FILE
    assert volumes(manifests)["tokens"] == {
        "secret": {"secretName": "api-tokens", "items": [{"key": "list.txt", "path": "tokens"}]}
    }


def test_tokens_from_two_places_are_refused(helm: Helm) -> None:
    with pytest.raises(HelmFailed, match=r"set auth\.tokens or auth\.existingSecret, not both"):
        helm.render({"auth": {"tokens": ["t"], "existingSecret": "s"}})


@pytest.mark.parametrize("files", [[], [ALL_TOGGLES]], ids=["defaults", "all-toggles"])
def test_restricted_security_context(helm: Helm, files: list[Any]) -> None:
    manifests = helm.render(files=files)
    assert controller_pod_spec(manifests)["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert controller_container(manifests)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def test_one_controller_replaced_not_rolled(helm: Helm) -> None:
    spec = one(helm.render(), "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


PG_URL = "postgresql://podq:pw-only-in-the-secret@db.example:5432/podq"
ANTI_AFFINITY = {
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 100,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {
                        "matchLabels": {
                            "app.kubernetes.io/name": "podq",
                            "app.kubernetes.io/instance": RELEASE,
                            "app.kubernetes.io/component": "controller",
                        }
                    },
                },
            }
        ]
    }
}


def test_several_controllers_on_postgresql(helm: Helm) -> None:
    manifests = helm.render(files=[POSTGRESQL])
    deployment = one(manifests, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    budget = one(manifests, "PodDisruptionBudget")
    assert budget["apiVersion"] == "policy/v1"
    assert budget["spec"] == {"minAvailable": 1, "selector": spec["selector"]}
    assert controller_pod_spec(manifests)["affinity"] == ANTI_AFFINITY
    [term] = controller_pod_spec(manifests)["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["labelSelector"] == spec["selector"]


def test_postgresql_needs_no_claim(helm: Helm) -> None:
    """With PostgreSQL the data directory is scratch only: an emptyDir, whatever persistence says (a
    ReadWriteOnce claim would pin the rolling pods to one node)."""
    manifests = helm.render({"database": {"url": PG_URL}, "persistence": {"enabled": True, "size": "3Gi"}})
    assert not find(manifests, "PersistentVolumeClaim")
    assert volumes(manifests)["data"] == {"emptyDir": {}}
    assert mounts(manifests)["/var/lib/podq"] == {"name": "data"}


def test_one_controller_on_postgresql_still_rolls(helm: Helm) -> None:
    manifests = helm.render({"database": {"url": PG_URL}})
    spec = one(manifests, "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert not find(manifests, "PodDisruptionBudget")
    assert "affinity" not in controller_pod_spec(manifests)


def test_own_affinity_replaces_the_spreading(helm: Helm) -> None:
    toggles = yaml.safe_load(ALL_TOGGLES.read_text())
    manifests = helm.render(files=[ALL_TOGGLES, POSTGRESQL])
    assert controller_pod_spec(manifests)["affinity"] == toggles["affinity"]


def test_database_url_only_in_the_secret(helm: Helm) -> None:
    manifests = helm.render({"database": {"url": PG_URL}})
    secret = one(manifests, "Secret")
    assert secret["metadata"]["name"] == "podq-database"
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {"url": PG_URL}
    [entry] = [e for e in controller_container(manifests)["env"] if e["name"] == "PODQ_DATABASE_URL"]
    assert entry == {
        "name": "PODQ_DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "podq-database", "key": "url"}},
    }
    assert controller_env(manifests)["PODQ_DATABASE_URL"] == PG_URL
    text = helm.template({"database": {"url": PG_URL}})
    assert "pw-only-in-the-secret" not in text
    encoded = base64.b64encode(PG_URL.encode()).decode()
    assert text.count(encoded) == 1
    for manifest in manifests:
        if manifest["kind"] != "Secret":
            assert encoded not in yaml.safe_dump(manifest), manifest["kind"]


def test_database_url_from_an_existing_secret(helm: Helm) -> None:
    values = {"replicaCount": 2, "database": {"existingSecret": "pg", "existingSecretKey": "dsn"}}
    manifests = helm.render(values)
    assert not find(manifests, "Secret")
    assert controller_container(manifests)["env"] == [
        {"name": "PODQ_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "pg", "key": "dsn"}}}
    ]
    assert one(manifests, "Deployment")["spec"]["replicas"] == 2
    annotations = one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/database" not in annotations


def test_no_database_by_default(helm: Helm) -> None:
    manifests = helm.render()
    assert "env" not in controller_container(manifests)
    assert "PODQ_DATABASE_URL" not in controller_env(manifests)
    assert not find(manifests, "PodDisruptionBudget")
    assert "affinity" not in controller_pod_spec(manifests)


def test_database_from_two_places_is_refused(helm: Helm) -> None:
    with pytest.raises(HelmFailed, match=r"set database\.url or database\.existingSecret, not both"):
        helm.render({"database": {"url": PG_URL, "existingSecret": "pg"}})


def test_several_controllers_without_postgresql_refused_by_the_template(helm: Helm) -> None:
    """The template refuses too, for an install that skips the values schema."""
    args = ["template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE, "--skip-schema-validation"]
    with pytest.raises(HelmFailed, match=r"replicaCount is 2: more than one controller needs PostgreSQL"):
        helm.run(*args, "--set", "replicaCount=2")
    assert helm.run(*args, "--set", "replicaCount=2", "--set", "database.existingSecret=pg")


def test_database_url_change_restarts_the_controllers(helm: Helm) -> None:
    def checksum(url: str) -> str:
        deployment = one(helm.render({"database": {"url": url}}), "Deployment")
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/database"]
        return value

    assert checksum(PG_URL) != checksum(PG_URL + "?sslmode=require")


def test_probes(helm: Helm) -> None:
    manifests = helm.render(
        {"readinessProbe": {"periodSeconds": 7}, "livenessProbe": {"failureThreshold": 5}}
    )
    container = controller_container(manifests)
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["readinessProbe"]["periodSeconds"] == 7
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["livenessProbe"]["failureThreshold"] == 5
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_image_and_command(helm: Helm) -> None:
    container = controller_container(helm.render())
    assert container["image"] == f"podq-controller:{CHART['appVersion']}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert "command" not in container and "args" not in container
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_pod_placement_and_extras(helm: Helm) -> None:
    toggles = yaml.safe_load(ALL_TOGGLES.read_text())
    manifests = helm.render(files=[ALL_TOGGLES])
    spec = controller_pod_spec(manifests)
    for key in (
        "nodeSelector",
        "tolerations",
        "affinity",
        "priorityClassName",
        "terminationGracePeriodSeconds",
    ):
        assert spec[key] == toggles[key], key
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    annotations = one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert toggles["podAnnotations"].items() <= annotations.items()
    container = controller_container(manifests)
    assert container["image"] == "registry.example/podq-controller:0.1.0-test"
    assert container["imagePullPolicy"] == "Always"


def config_checksum(helm: Helm, values: dict[str, Any]) -> str:
    annotations = one(helm.render(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    checksum: str = annotations["checksum/config"]
    return checksum


@pytest.mark.parametrize(
    ("changed", "restarts"),
    [
        pytest.param({"config": {"maxConcurrent": 3}}, True, id="config"),
        pytest.param({"worker": {"tmpSize": "2Gi"}}, True, id="worker-setting"),
        pytest.param({"metrics": {"requireAuth": True}}, True, id="metrics-auth"),
        # The token file is re-read by the controller: rotating tokens needs no restart.
        pytest.param({"auth": {"tokens": ["rotated"]}}, False, id="tokens"),
        pytest.param({"service": {"port": 8080}}, False, id="unrelated"),
    ],
)
def test_config_checksum(helm: Helm, changed: dict[str, Any], restarts: bool) -> None:
    base = {"auth": {"tokens": ["original"]}}
    before = config_checksum(helm, base)
    assert config_checksum(helm, base) == before
    assert (config_checksum(helm, {**base, **changed}) != before) == restarts


def service_monitor_auth(helm: Helm, values: dict[str, Any]) -> Any:
    metrics = values.get("metrics", {})
    monitor = {**metrics.get("serviceMonitor", {}), "enabled": True}
    values = {**values, "metrics": {**metrics, "serviceMonitor": monitor}}
    endpoints = one(helm.render(values), "ServiceMonitor")["spec"]["endpoints"]
    assert len(endpoints) == 1
    assert endpoints[0]["port"] == "http" and endpoints[0]["path"] == "/metrics"
    return endpoints[0].get("authorization")


def bearer(name: str, key: str) -> dict[str, Any]:
    return {"type": "Bearer", "credentials": {"name": name, "key": key}}


@pytest.mark.parametrize(
    ("values", "authorization"),
    [
        pytest.param({}, None, id="no-auth"),
        pytest.param({"auth": {"tokens": ["t"]}}, None, id="metrics-open"),
        pytest.param({"metrics": {"requireAuth": True}}, None, id="require-but-auth-off"),
        pytest.param(
            {"auth": {"tokens": ["t"]}, "metrics": {"requireAuth": True}},
            bearer("podq-tokens", "metrics-token"),
            id="chart-secret",
        ),
        pytest.param(
            {
                "auth": {"existingSecret": "mine"},
                "metrics": {
                    "requireAuth": True,
                    "serviceMonitor": {"bearerTokenSecret": {"name": "scrape", "key": "token"}},
                },
            },
            bearer("scrape", "token"),
            id="own-secret",
        ),
    ],
)
def test_service_monitor_authorization(helm: Helm, values: dict[str, Any], authorization: Any) -> None:
    assert service_monitor_auth(helm, values) == authorization


def test_service_monitor_needs_a_scrape_token_with_an_existing_secret(helm: Helm) -> None:
    with pytest.raises(HelmFailed, match=r"bearerTokenSecret.name is required"):
        service_monitor_auth(helm, {"auth": {"existingSecret": "mine"}, "metrics": {"requireAuth": True}})


def test_service_monitor_selects_the_service(helm: Helm) -> None:
    manifests = helm.render(files=[ALL_TOGGLES])
    monitor = one(manifests, "ServiceMonitor")
    service = one(manifests, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"


def test_cluster_scoped_objects_have_no_namespace(helm: Helm) -> None:
    for manifest in helm.render(files=[ALL_TOGGLES]):
        assert ("namespace" in manifest["metadata"]) == (manifest["kind"] not in CLUSTER_SCOPED), manifest[
            "kind"
        ]


@pytest.mark.parametrize(
    ("delay", "pre_stop"), [(None, {"sleep": {"seconds": 5}}), (12, {"sleep": {"seconds": 12}})]
)
def test_a_stopping_controller_serves_on_until_the_service_forgets_it(
    helm: Helm, delay: int | None, pre_stop: dict[str, Any]
) -> None:
    values = {} if delay is None else {"shutdownDelaySeconds": delay}
    assert controller_container(helm.render(values))["lifecycle"] == {"preStop": pre_stop}


def test_no_shutdown_delay_means_no_pre_stop_hook(helm: Helm) -> None:
    assert "lifecycle" not in controller_container(helm.render({"shutdownDelaySeconds": 0}))
