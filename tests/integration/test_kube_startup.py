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


EXEC_API = "client.authentication.k8s.io/v1"


def _bad_kubeconfig(tmp_path: Path, case: str) -> tuple[Path, dict[str, str]]:
    """A kubeconfig that cannot be used in the way `case` names, and extra environment."""
    kubeconfig = tmp_path / "kubeconfig"
    plugin = tmp_path / "plugin"
    body = {
        "exec-exits-1": "echo 'no credentials today' >&2\nexit 1\n",
        "exec-prints-garbage": "echo '<html>'\n",
    }
    plugin.write_text("#!/bin/sh\n" + body.get(case, "exit 0\n"))
    plugin.chmod(0o755)
    user = (
        "{exec: {apiVersion: " + EXEC_API + f", command: '{plugin}'}}}}"
        if case.startswith("exec")
        else "{token: t}"
    )
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: 'https://127.0.0.1:{free_port()}'}}}}]\n"
        f"users: [{{name: u, user: {user}}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    if case == "missing-file":
        return tmp_path / "absent", {}
    if case == "unknown-context":
        return kubeconfig, {"PODQ_KUBE_CONTEXT": "prod"}
    return kubeconfig, {}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-file", "absent does not exist (from the configured path)"),
        ("unknown-context", "Expected object with name prod"),
        ("exec-exits-1", "the exec credential plugin failed: exec: process returned 1. no credentials today"),
        ("exec-prints-garbage", "the exec credential plugin failed: exec: failed to decode process output"),
    ],
)
def test_a_bad_kubeconfig_stops_the_controller_at_start_with_one_line(
    tmp_path: Path, case: str, message: str
) -> None:
    kubeconfig, extra = _bad_kubeconfig(tmp_path, case)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "PODQ_LAUNCHER": "kubernetes",
        "PODQ_KUBE_CONFIG": str(kubeconfig),
        "PODQ_DATA_DIR": str(tmp_path / "data"),
        "PODQ_PORT": str(free_port()),
        **extra,
    }
    command = [sys.executable, "-m", "controller", "serve"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 4, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("podq: refusing to start: kubeconfig "), lines[0]
    assert message in lines[0], lines[0]
    assert "Traceback" not in done.stdout + done.stderr
