"""`helm test` on the harness cluster: the chart installed in a namespace of its own (restricted Pod Security,
auth on, the store on an emptyDir), then its test hook (templates/tests/test-query.yaml) run. The hook
passes only when a worker pod really ran `SELECT 1 AS ok`: the controller, its Role, the worker image and
the Service all take part. It runs in a namespace of its own, beside the README's deployment path
(test_helm_deploy.py), whose fixed namespace and release it leaves alone.

Needs ``PODQ_E2E_CONTROLLER_IMAGE`` besides the tier's usual settings (tests/run.sh sets both images).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid

import pytest

from tests.support.e2e import E2EEnv, kubectl, kubectl_json
from tests.support.helm import CHART_DIR, Helm

pytestmark = pytest.mark.e2e

HELM_TIMEOUT = "5m"
COMMAND_TIMEOUT_SECONDS = 420


def _helm(helm: Helm, *args: str) -> subprocess.CompletedProcess[str]:
    # Helm.run's two minutes are for rendering; an install that waits for its pod needs longer.
    return subprocess.run(
        [helm.path, *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
        env={**os.environ, "HELM_CONFIG_HOME": "/nonexistent", "HELM_CACHE_HOME": "/nonexistent"},
    )


def test_helm_test_submits_select_1_through_the_service(helm: Helm, e2e_env: E2EEnv) -> None:
    controller_image = os.environ.get("PODQ_E2E_CONTROLLER_IMAGE")
    if not controller_image:
        pytest.fail("this test needs PODQ_E2E_CONTROLLER_IMAGE (tests/e2e/README.md)", pytrace=False)
    namespace = f"podq-helm-test-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "podq.dev/test=helm-test",
    )
    try:
        repository, _, tag = controller_image.rpartition(":")
        worker_repository, _, worker_tag = e2e_env.worker_image.rpartition(":")
        installed = _helm(
            helm,
            "install", "podq", str(CHART_DIR), "--namespace", namespace, "--wait", "--timeout", HELM_TIMEOUT,
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set", f"worker.image.repository={worker_repository}",
            "--set", f"worker.image.tag={worker_tag}",
            "--set", "persistence.enabled=false",
            "--set-string", f"auth.tokens[0]={secrets.token_hex(24)}",
        )  # fmt: skip
        assert installed.returncode == 0, installed.stderr
        tested = _helm(helm, "test", "podq", "--namespace", namespace, "--logs", "--timeout", HELM_TIMEOUT)
        assert tested.returncode == 0, (tested.stdout, tested.stderr)
        assert "podq answered SELECT 1 AS ok through the Service" in tested.stdout, tested.stdout
        assert "Phase:          Succeeded" in tested.stdout, tested.stdout
        hook = "app.kubernetes.io/component=helm-test"
        (pod,) = kubectl_json("get", "pods", "-n", namespace, "-l", hook)["items"]
        assert pod["status"]["phase"] == "Succeeded"
        uninstall = ("uninstall", "podq", "--namespace", namespace, "--wait", "--timeout", HELM_TIMEOUT)
        uninstalled = _helm(helm, *uninstall)
        assert uninstalled.returncode == 0, uninstalled.stderr
    finally:
        _helm(helm, "uninstall", "podq", "--namespace", namespace, "--wait", "--timeout", HELM_TIMEOUT)
        kubectl("delete", "namespace", namespace, "--wait=false")
