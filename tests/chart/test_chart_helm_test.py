"""The `helm test` hook (templates/tests/test-query.yaml): what it renders, and its script run against a real
`podq serve`, with and without auth, as the Pod would run it (tests/e2e/test_helm_deploy.py runs
`helm test` itself on the harness cluster)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.testing.process import REPO_ROOT, ControllerProcess
from tests.support.helm import RELEASE, Helm, Manifest, find, one

pytestmark = pytest.mark.chart

StartController = Callable[..., ControllerProcess]
TOKEN_FILE = "/etc/podq/tokens/tokens"


def hook_pod(manifests: list[Manifest]) -> Manifest:
    pods = [m for m in find(manifests, "Pod") if m["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    assert len(pods) == 1, f"expected one helm test Pod, rendered {len(pods)}"
    return pods[0]


def env_of(pod: Manifest) -> dict[str, str]:
    return {item["name"]: item["value"] for item in pod["spec"]["containers"][0]["env"]}


def test_the_hook_submits_through_the_service_as_a_restricted_pod(helm: Helm) -> None:
    manifests = helm.render()
    pod = hook_pod(manifests)
    policy = pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    # Not hook-succeeded: `helm test --logs` reads the log after the pod ended.
    assert policy == "before-hook-creation"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = spec["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "128Mi"}
    # The controller image: it holds podq's client.
    deployment = one(manifests, "Deployment")
    assert container["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    service = one(manifests, "Service")
    name = service["metadata"]["name"]
    # The Service's cluster IP and port from its environment variables (the harness cluster has no DNS).
    variable = name.upper().replace("-", "_")
    assert env_of(pod)["PODQ_URL"] == f"http://$({variable}_SERVICE_HOST):$({variable}_SERVICE_PORT)"
    assert spec["enableServiceLinks"] is True
    assert "PODQ_TOKEN_FILE" not in env_of(pod) and "volumes" not in spec
    # The Service never sends API traffic to the test Pod.
    selector = service["spec"]["selector"].items()
    assert not selector <= pod["metadata"]["labels"].items()


@pytest.mark.parametrize(
    ("values", "secret", "key"),
    [
        ({"auth": {"tokens": ["one", "two"]}}, f"{RELEASE}-tokens", "tokens"),
        ({"auth": {"existingSecret": "mine", "existingSecretKey": "api"}}, "mine", "api"),
    ],
    ids=["chart-secret", "existing-secret"],
)
def test_with_auth_the_hook_sends_a_token_from_the_secret(
    helm: Helm, values: dict[str, Any], secret: str, key: str
) -> None:
    pod = hook_pod(helm.render(values))
    assert env_of(pod)["PODQ_TOKEN_FILE"] == TOKEN_FILE
    assert pod["spec"]["volumes"] == [
        {"name": "tokens", "secret": {"secretName": secret, "items": [{"key": key, "path": "tokens"}]}}
    ]
    assert pod["spec"]["containers"][0]["volumeMounts"] == [
        {"name": "tokens", "mountPath": "/etc/podq/tokens", "readOnly": True}
    ]


def test_the_hook_can_be_left_out(helm: Helm) -> None:
    assert not find(helm.render({"helmTest": {"enabled": False}}), "Pod")


def _run_script(pod: Manifest, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python3", "-c"]
    return subprocess.run(
        [sys.executable, "-c", container["args"][0]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
        env={**os.environ, **env_of(pod), **env},
    )


@pytest.mark.integration
def test_the_hooks_script_passes_against_a_live_controller_and_fails_without_its_token(
    helm: Helm, start_controller: StartController, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("\nfirst-token\nsecond-token\n")
    controller = start_controller(api_tokens_file=str(tokens))
    pod = hook_pod(helm.render({"auth": {"tokens": ["first-token", "second-token"]}}))
    done = _run_script(pod, {"PODQ_URL": controller.url, "PODQ_TOKEN_FILE": str(tokens)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("podq answered SELECT 1 AS ok through the Service: query ")
    refused = _run_script(hook_pod(helm.render()), {"PODQ_URL": controller.url})
    assert refused.returncode != 0 and "Unauthorized" in refused.stderr
