"""The chart's `config` values become the controller's PODQ_* environment, which `Settings` reads back.

Every setting of controller/settings.py is either a `config` key, a value of its own in the chart, or
deliberately out of a cluster install: a new setting fails `test_every_setting_is_classified` until someone
decides which.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from controller.settings import Settings
from tests.support.helm import ALL_TOGGLES, CHART_DIR, NAMESPACE, POSTGRESQL, RELEASE, Helm, controller_env

pytestmark = pytest.mark.chart

# Settings the chart sets from values of their own (or from the release itself).
CHART_OWNED = {
    "launcher",
    "host",
    "port",
    "data_dir",
    "kube_namespace",
    "kube_instance",
    "worker_image",
    "worker_image_pull_policy",
    "worker_service_account",
    "worker_node_selector",
    "worker_tolerations",
    "worker_priority_class",
    "worker_image_pull_secrets",
    "worker_tmp_size",
    "worker_owned_by_service_account",
    "api_tokens_file",
    "metrics_require_auth",
    # database.url (a Secret of the chart's) or database.existingSecret, as a secretKeyRef.
    "database_url",
}
# Settings a cluster install does not expose: the local launcher's own, the test hooks, a kubeconfig (the
# controller uses its service account), and tokens as plain env (the chart mounts them as a file instead).
NOT_IN_CLUSTER = {
    "local_warm_start",
    "memory_enforcement",
    "worker_python",
    "enable_test_hooks",
    "test_crash_at",
    "kube_config",
    "kube_context",
    "api_tokens",
}


def snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def config_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART_DIR / "values.schema.json").read_text())
    config: dict[str, Any] = schema["properties"]["config"]
    return config


def default_config() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    config: dict[str, Any] = values["config"]
    return config


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the controller would start with in exactly this environment."""
    for name in Settings.model_fields:
        monkeypatch.delenv(f"PODQ_{name.upper()}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_every_setting_is_classified() -> None:
    allowed = {snake(key) for key in config_schema()["properties"]}
    fields = set(Settings.model_fields)
    assert allowed <= fields, f"config keys that are no setting: {sorted(allowed - fields)}"
    assert not allowed & CHART_OWNED, f"config keys the chart sets itself: {sorted(allowed & CHART_OWNED)}"
    assert not allowed & NOT_IN_CLUSTER, f"config keys not for a cluster: {sorted(allowed & NOT_IN_CLUSTER)}"
    unclassified = fields - allowed - CHART_OWNED - NOT_IN_CLUSTER
    assert not unclassified, f"settings the chart neither exposes nor excludes: {sorted(unclassified)}"


def test_config_refuses_unknown_keys() -> None:
    assert config_schema()["additionalProperties"] is False


def test_every_config_key_has_its_default_in_values() -> None:
    assert list(default_config()) == list(config_schema()["properties"])


def test_default_config_is_the_controllers_default(helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    """values.yaml repeats the controller's defaults: the rendered defaults parse to exactly them."""
    rendered = settings_from(controller_env(helm.render()), monkeypatch)
    for name in Settings.model_fields:
        monkeypatch.delenv(f"PODQ_{name.upper()}", raising=False)
    defaults = Settings()
    for key in default_config():
        field = snake(key)
        assert getattr(rendered, field) == getattr(defaults, field), key


def test_config_env_names(helm: Helm) -> None:
    env = controller_env(helm.render({"config": {"kubeQps": 7}}))
    expected = {f"PODQ_{snake(key).upper()}" for key in default_config()}
    assert expected <= set(env)
    assert env["PODQ_KUBE_QPS"] == "7"
    for name in env:
        assert name.startswith("PODQ_") and name[5:].lower() in Settings.model_fields, name


class ConfigCase(NamedTuple):
    key: str
    value: Any
    env: str
    setting: Any


CONFIG_CASES = [
    pytest.param(
        ConfigCase("maxDownloadBytes", 4294967296, "4294967296", 4294967296), id="large-int-not-exponent"
    ),
    pytest.param(ConfigCase("kubeQps", 2.5, "2.5", 2.5), id="float"),
    pytest.param(ConfigCase("podTtlSeconds", 0, "0", 0), id="zero"),
    pytest.param(ConfigCase("maxCpu", 4, "4", "4"), id="cpu-as-number"),
    pytest.param(ConfigCase("maxCpu", "1500m", "1500m", "1500m"), id="cpu-as-string"),
    pytest.param(ConfigCase("maxMemory", "8Gi", "8Gi", "8Gi"), id="memory"),
    pytest.param(ConfigCase("logLevel", "DEBUG", "DEBUG", "DEBUG"), id="string"),
    pytest.param(ConfigCase("logFormat", "json", "json", "json"), id="enum"),
    pytest.param(
        ConfigCase(
            "fetchAllowedNetworks",
            ["10.20.0.0/16", "192.168.7.0/24"],
            '["10.20.0.0/16","192.168.7.0/24"]',
            ["10.20.0.0/16", "192.168.7.0/24"],
        ),
        id="list-as-json",
    ),
]


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_config_value_reaches_settings(helm: Helm, monkeypatch: pytest.MonkeyPatch, case: ConfigCase) -> None:
    env = controller_env(helm.render({"config": {case.key: case.value}}))
    assert env[f"PODQ_{snake(case.key).upper()}"] == case.env
    assert getattr(settings_from(env, monkeypatch), snake(case.key)) == case.setting


def test_chart_owned_settings(helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    manifests = helm.render(files=[ALL_TOGGLES])
    env = controller_env(manifests)
    # The tokens file is a mounted Secret; Settings insists that it exists.
    token_file = env.pop("PODQ_API_TOKENS_FILE")
    settings = settings_from(env, monkeypatch)
    toggles = yaml.safe_load(ALL_TOGGLES.read_text())
    worker = toggles["worker"]
    assert settings.launcher == "kubernetes"
    assert settings.host == "0.0.0.0"
    assert settings.port == 8000
    assert settings.data_dir == Path("/var/lib/podq")
    assert settings.kube_namespace == worker["namespace"]
    assert settings.kube_instance == RELEASE
    assert settings.worker_image == f"{worker['image']['repository']}:{worker['image']['tag']}"
    assert settings.worker_image_pull_policy == worker["image"]["pullPolicy"]
    assert settings.worker_service_account == worker["serviceAccountName"]
    assert settings.worker_node_selector == worker["nodeSelector"]
    assert settings.worker_tolerations == worker["tolerations"]
    assert settings.worker_priority_class == worker["priorityClassName"]
    assert settings.worker_image_pull_secrets == worker["imagePullSecrets"]
    assert settings.worker_tmp_size == worker["tmpSize"]
    # The workers are in a namespace of their own, where the controller's ServiceAccount cannot own them.
    assert settings.worker_owned_by_service_account is False
    assert settings.metrics_require_auth is True
    assert token_file == "/etc/podq/tokens/tokens"
    for key, value in toggles["config"].items():
        expected = str(value) if key in ("maxCpu", "maxMemory") else value
        assert getattr(settings, snake(key)) == expected, key


def test_defaults_leave_optional_worker_settings_unset(helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    env = controller_env(helm.render())
    settings = settings_from(env, monkeypatch)
    assert settings.kube_namespace == NAMESPACE
    assert settings.worker_image == "podq-worker:0.1.0"
    assert settings.worker_service_account is None
    assert settings.worker_priority_class is None
    assert settings.worker_node_selector == {}
    assert settings.worker_tolerations == []
    assert settings.worker_image_pull_secrets == []
    assert settings.api_tokens_file is None
    assert settings.metrics_require_auth is False
    assert settings.worker_owned_by_service_account is True
    assert settings.database_url is None


@pytest.mark.parametrize(
    "files", [[POSTGRESQL], [ALL_TOGGLES, POSTGRESQL]], ids=["postgresql", "all-toggles"]
)
def test_postgresql_settings_reach_the_controller(
    helm: Helm, monkeypatch: pytest.MonkeyPatch, files: list[Path]
) -> None:
    """database.url arrives as PODQ_DATABASE_URL (through the chart's Secret), the tuning as config."""
    env = controller_env(helm.render(files=files))
    env.pop("PODQ_API_TOKENS_FILE", None)
    settings = settings_from(env, monkeypatch)
    values = yaml.safe_load(POSTGRESQL.read_text())
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == values["database"]["url"]
    for key, value in values["config"].items():
        assert getattr(settings, snake(key)) == value, key


@pytest.mark.parametrize(
    ("worker", "owned"),
    [
        pytest.param({}, "true", id="default"),
        pytest.param({"ownedByServiceAccount": False}, "false", id="off"),
        pytest.param({"namespace": NAMESPACE}, "true", id="release-namespace-named"),
        pytest.param({"namespace": "podq-workers"}, "false", id="other-namespace"),
    ],
)
def test_workers_owned_by_the_service_account(helm: Helm, worker: dict[str, Any], owned: str) -> None:
    """Owners must be in the pod's namespace: the chart asks for it only where the controller can do it."""
    env = controller_env(helm.render({"worker": worker}))
    assert env["PODQ_WORKER_OWNED_BY_SERVICE_ACCOUNT"] == owned
