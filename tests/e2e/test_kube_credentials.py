"""Kubeconfigs as real clusters hand them out, read by the controller through the official client.

- An exec credential plugin (how EKS, GKE and AKS authenticate): the kubeconfig's user runs a script that
  prints an ``ExecCredential`` holding a service-account token from the TokenRequest API, for an account
  that has only the Role podq's chart gives the controller in its namespace. A query runs to its result.
- A ``KUBECONFIG`` list of two files: the first holds the user, the second the cluster and the context
  (and the only ``current-context``). A query runs to its result through the merged configuration.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from controller.testing.fileserver import FileServer
from tests.support.api import run, simple_query, simple_rows
from tests.support.e2e import KubeControllers, StartKubeController, kubectl, kubectl_json

pytestmark = pytest.mark.e2e

Controllers = tuple[KubeControllers, StartKubeController]
EXEC_API = "client.authentication.k8s.io/v1"
ACCOUNT = "podq-exec"
POD_TIMEOUT = 120.0
# What the controller needs in its namespace (the chart's Role, helm/podq/templates/role.yaml).
RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


def harness() -> dict[str, Any]:
    """The harness kubeconfig's current context, cluster and user, with their credentials in-line."""
    config: dict[str, Any] = kubectl_json("config", "view", "--raw", "--minify", "--flatten")
    return config


def service_account_token(namespace: str) -> str:
    """A token for a new service account with the controller's Role in `namespace` (TokenRequest API)."""
    objects = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT, "namespace": namespace}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": ACCOUNT, "namespace": namespace},
            "rules": RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": ACCOUNT, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ACCOUNT},
            "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": namespace}],
        },
    ]
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    return kubectl("create", "token", ACCOUNT, "-n", namespace, "--duration=1h").strip()


def exec_plugin(directory: Path, token: str) -> tuple[Path, Path]:
    """A credential plugin printing `token` as an ExecCredential, counting its runs in a file."""
    token_file, runs = directory / "token", directory / "plugin-runs"
    token_file.write_text(token)
    plugin = directory / "podq-credential-plugin"
    credential = {"apiVersion": EXEC_API, "kind": "ExecCredential", "status": {"token": "TOKEN"}}
    template = json.dumps(credential).replace('"TOKEN"', '"%s"')
    plugin.write_text(f"#!/bin/sh\necho run >> '{runs}'\nprintf '{template}\\n' \"$(cat '{token_file}')\"\n")
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    return plugin, runs


def test_the_controller_authenticates_through_an_exec_credential_plugin(
    kube_controllers: Controllers, pod_file_server: FileServer, parquet_dir: Path, tmp_path: Path
) -> None:
    controllers, start = kube_controllers
    plugin, runs = exec_plugin(tmp_path, service_account_token(controllers.namespace))
    cluster = harness()["clusters"][0]
    kubeconfig = tmp_path / "exec-kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "harness", "cluster": cluster["cluster"]}],
                "users": [
                    {
                        "name": "exec",
                        "user": {
                            "exec": {
                                "apiVersion": EXEC_API,
                                "command": str(plugin),
                                "interactiveMode": "Never",
                            }
                        },
                    }
                ],
                "contexts": [{"name": "exec", "context": {"cluster": "harness", "user": "exec"}}],
                "current-context": "exec",
            }
        )
    )
    controller = start(kube_config=kubeconfig)
    with controller.client() as client:
        record = run(client, simple_query(pod_file_server.url), timeout=POD_TIMEOUT)
    assert record["status"] == "succeeded", record
    assert record["result"]["rows"] == simple_rows(parquet_dir)
    assert runs.read_text().count("run") >= 1  # the token came from the plugin (the serve check runs it too)
    # The account may not list nodes: the launcher said so and went on without node rooms.
    assert "cannot list nodes (forbidden)" in controllers.log_path.read_text()


def test_a_kubeconfig_list_is_merged_and_its_context_comes_from_the_second_file(
    kube_controllers: Controllers,
    pod_file_server: FileServer,
    parquet_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    controllers, start = kube_controllers
    config = harness()
    user, cluster = config["users"][0], config["clusters"][0]
    first, second = tmp_path / "users.kubeconfig", tmp_path / "contexts.kubeconfig"
    # The first file: the user, and a decoy context that leads nowhere; no current-context.
    first.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "decoy", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "merged-user", "user": user["user"]}],
                "contexts": [{"name": "decoy", "context": {"cluster": "decoy", "user": "merged-user"}}],
            }
        )
    )
    # The second: the cluster, and the context (the current one) joining it to the first file's user.
    second.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "merged-cluster", "cluster": cluster["cluster"]}],
                "contexts": [
                    {"name": "merged", "context": {"cluster": "merged-cluster", "user": "merged-user"}}
                ],
                "current-context": "merged",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", f"{first}{os.pathsep}{second}")
    controller = start()
    with controller.client() as client:
        record = run(client, simple_query(pod_file_server.url), timeout=POD_TIMEOUT)
    assert record["status"] == "succeeded", record
    assert record["result"]["rows"] == simple_rows(parquet_dir)
    assert f"kubeconfig {first}{os.pathsep}{second} (context merged)" in controllers.log_path.read_text()
