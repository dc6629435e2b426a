"""The kubernetes launcher's options: exactly what it takes from the settings."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from controller.launchers.kubernetes.options import KubernetesOptions
from controller.launchers.kubernetes.podspec import PodTemplate
from controller.launchers.kubernetes.pool import SizeClass
from controller.settings import MAX_WARM_POOL_SIZE, MIN_WARM_POOL_IDLE_SECONDS, Settings

pytestmark = pytest.mark.unit

TOLERATION = {"key": "podq.dev/dedicated", "operator": "Equal", "value": "workers", "effect": "NoSchedule"}


def test_the_pod_template_comes_from_the_settings() -> None:
    settings = Settings.model_validate(
        {
            "kube_namespace": "podq-workers",
            "kube_instance": "analytics",
            "worker_image": "registry.example.test/podq-worker:1.2.3",
            "worker_image_pull_policy": "Always",
            "worker_service_account": "podq-worker",
            "worker_node_selector": {"pool": "batch"},
            "worker_tolerations": [TOLERATION],
            "worker_priority_class": "podq-low",
            "worker_image_pull_secrets": ["regcred"],
            "worker_tmp_size": "256Mi",
            "enable_test_hooks": True,
        }
    )
    assert KubernetesOptions.from_settings(settings).pod == PodTemplate(
        namespace="podq-workers",
        instance="analytics",
        image="registry.example.test/podq-worker:1.2.3",
        image_pull_policy="Always",
        service_account="podq-worker",
        node_selector={"pool": "batch"},
        tolerations=(TOLERATION,),
        priority_class="podq-low",
        image_pull_secrets=("regcred",),
        tmp_size="256Mi",
        enable_test_hooks=True,
    )


@pytest.mark.parametrize(
    ("setting", "option", "value"),
    [
        ("kube_config", "kube_config", Path("/etc/podq/kubeconfig")),
        ("kube_context", "kube_context", "staging"),
        ("kube_qps", "qps", 7.0),
        ("kube_burst", "burst", 9),
        ("kube_request_timeout_seconds", "request_timeout_seconds", 11.0),
        ("kube_watch_seconds", "watch_seconds", 13),
        ("kube_relist_seconds", "relist_seconds", 17.0),
        ("pod_ttl_seconds", "pod_ttl_seconds", 19.0),
        ("unschedulable_after_seconds", "unschedulable_after_seconds", 23.0),
        ("image_pull_grace_seconds", "image_pull_grace_seconds", 29.0),
        ("worker_owned_by_service_account", "owned_by_service_account", True),
        ("kube_warm_pool_size", "warm_pool_size", 3),
        ("kube_warm_pool_max_idle_seconds", "warm_pool_max_idle_seconds", 31.0),
        ("kube_warm_pool_resize", "warm_pool_resize", False),
    ],
)
def test_each_option_is_its_setting(setting: str, option: str, value: object) -> None:
    options = KubernetesOptions.from_settings(Settings.model_validate({setting: value}))
    assert getattr(options, option) == value


def test_without_a_namespace_the_launcher_takes_the_kubeconfigs() -> None:
    assert KubernetesOptions.from_settings(Settings()).pod.namespace == ""


def test_a_crash_point_counts_only_with_test_hooks_on(tmp_path: Path) -> None:
    hooks_off = Settings(test_crash_at="after_create", data_dir=tmp_path)
    hooks_on = Settings(test_crash_at="after_create", enable_test_hooks=True, data_dir=tmp_path)
    assert KubernetesOptions.from_settings(hooks_off).crash_at is None
    assert KubernetesOptions.from_settings(hooks_on).crash_at == "after_create"


def test_the_warm_pools_size_class_is_the_default_limits() -> None:
    settings = Settings(default_cpu="250m", default_memory="1Gi")
    assert KubernetesOptions.from_settings(settings).warm_pool_class == SizeClass(250, 2**30)


@pytest.mark.parametrize("size", [-1, MAX_WARM_POOL_SIZE + 1])
def test_a_warm_pool_size_out_of_range_is_refused(size: int) -> None:
    with pytest.raises(ValidationError, match="kube_warm_pool_size"):
        Settings(kube_warm_pool_size=size)


@pytest.mark.parametrize("seconds", [0, -1, MIN_WARM_POOL_IDLE_SECONDS - 0.5])
def test_a_warm_pool_idle_age_below_the_minimum_is_refused(seconds: float) -> None:
    with pytest.raises(ValidationError, match="kube_warm_pool_max_idle_seconds"):
        Settings(kube_warm_pool_max_idle_seconds=seconds)


def test_resizing_pool_pods_is_on_by_default() -> None:
    """Measured faster than a cold pod (BENCHMARKS.md); it only acts with a pool."""
    assert KubernetesOptions.from_settings(Settings()).warm_pool_resize is True


@pytest.mark.parametrize("value", ["maybe", "2", ""])
def test_a_resize_setting_that_is_no_boolean_is_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODQ_KUBE_WARM_POOL_RESIZE", value)
    with pytest.raises(ValidationError, match="kube_warm_pool_resize"):
        Settings()
