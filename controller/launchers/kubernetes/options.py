"""What the kubernetes launcher takes from the settings, and nothing more."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller.launchers.kubernetes.podspec import PodTemplate
from controller.launchers.kubernetes.pool import SizeClass
from controller.quantity import parse_cpu_millicores, parse_memory_bytes
from controller.settings import Settings


@dataclass(frozen=True)
class KubernetesOptions:
    """Built from the settings (`from_settings`), whose descriptions say what each field means; no defaults
    here, so there is one default per setting."""

    # Where the API server is: a kubeconfig (None: $KUBECONFIG, ~/.kube/config, else in-cluster).
    kube_config: Path | None
    kube_context: str | None
    qps: float
    burst: int
    request_timeout_seconds: float
    watch_seconds: int
    relist_seconds: float
    # The worker pods. The template's namespace is "" when the kubeconfig context's (else "default") is to
    # be used: the launcher settles it, and the owner, at start.
    pod: PodTemplate
    owned_by_service_account: bool
    # Their fate.
    pod_ttl_seconds: float
    unschedulable_after_seconds: float
    image_pull_grace_seconds: float
    # The warm pool (warm.py): how many idle pods, at which limits (the default ones), replaced at which
    # age; 0: none.
    warm_pool_size: int
    warm_pool_class: SizeClass
    warm_pool_max_idle_seconds: float
    # Whether a query larger than the class resizes a pool pod (resize.py) rather than start cold.
    warm_pool_resize: bool
    # A test-only crash point (see `controller.testcrash`), honoured only with test hooks on.
    crash_at: str | None

    @classmethod
    def from_settings(cls, settings: Settings) -> KubernetesOptions:
        pod = PodTemplate(
            namespace=settings.kube_namespace or "",
            instance=settings.kube_instance,
            image=settings.worker_image,
            image_pull_policy=settings.worker_image_pull_policy,
            service_account=settings.worker_service_account,
            node_selector=dict(settings.worker_node_selector),
            tolerations=tuple(dict(toleration) for toleration in settings.worker_tolerations),
            priority_class=settings.worker_priority_class,
            image_pull_secrets=tuple(settings.worker_image_pull_secrets),
            tmp_size=settings.worker_tmp_size,
            enable_test_hooks=settings.enable_test_hooks,
        )
        return cls(
            kube_config=settings.kube_config,
            kube_context=settings.kube_context,
            qps=settings.kube_qps,
            burst=settings.kube_burst,
            request_timeout_seconds=settings.kube_request_timeout_seconds,
            watch_seconds=settings.kube_watch_seconds,
            relist_seconds=settings.kube_relist_seconds,
            pod=pod,
            owned_by_service_account=settings.worker_owned_by_service_account,
            pod_ttl_seconds=settings.pod_ttl_seconds,
            unschedulable_after_seconds=settings.unschedulable_after_seconds,
            image_pull_grace_seconds=settings.image_pull_grace_seconds,
            warm_pool_size=settings.kube_warm_pool_size,
            warm_pool_class=SizeClass(
                cpu_millicores=parse_cpu_millicores(settings.default_cpu),
                memory_bytes=parse_memory_bytes(settings.default_memory),
            ),
            warm_pool_max_idle_seconds=settings.kube_warm_pool_max_idle_seconds,
            warm_pool_resize=settings.kube_warm_pool_resize,
            crash_at=settings.test_crash_at if settings.enable_test_hooks else None,
        )
