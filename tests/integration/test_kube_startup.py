"""`podq serve` with the kubernetes launcher and no reachable API server: it must say so and exit, not hang
or come up half-ready. No cluster is needed: the kubeconfig names a loopback port where nothing listens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.testing.process import REPO_ROOT, free_port

pytestmark = pytest.mark.integration


def test_an_unreachable_api_server_stops_the_controller_with_a_clear_error(tmp_path: Path) -> None:
    server = f"https://127.0.0.1:{free_port()}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: '{server}', insecure-skip-tls-verify: true}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u, namespace: podq-workers}}]\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "PODQ_LAUNCHER": "kubernetes",
        "PODQ_KUBE_CONFIG": str(kubeconfig),
        "PODQ_KUBE_REQUEST_TIMEOUT_SECONDS": "1",
        "PODQ_DATA_DIR": str(tmp_path / "data"),
        "PODQ_PORT": str(free_port()),
    }
    command = [sys.executable, "-m", "controller", "serve"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert f"cannot list pods in namespace 'podq-workers' at {server}" in output, output
