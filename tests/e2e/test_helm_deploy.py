"""The README's Helm deployment, run command by command on the harness cluster.

The README's block under ``<!-- e2e: tests/e2e/test_helm_deploy.py -->`` is the deployment path; this test
reads it and runs each command with bash, in order, so README and test cannot drift apart. It changes two
things: port 8000 becomes a free port, and ``$DATASET_URL`` is a parquet file on this machine that the
pods can fetch. A command ending in ``&`` runs in the background and counts as started once its port
accepts connections (a port-forward); ``export NAME=...`` sets NAME for the commands after it.

Between the commands the test checks what the README promises: the controller runs as the chart's
ServiceAccount and the API server refuses that account anything outside its Role; a result and a
``memory`` error come back through the Service; queries queued across ``helm upgrade`` all finish; and
``helm uninstall`` leaves no podq pod behind, though a query was running.

It needs the harness cluster (root; tests/e2e/cluster/): the block builds the images with its scripts,
imports them into its containerd, and makes a hostPath volume on its node, which is this machine.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.testing.fileserver import FileServer
from tests.support.e2e import kubectl, kubectl_json
from tests.support.helm import Helm
from tests.support.rbac import Account, can_i
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- e2e: tests/e2e/test_helm_deploy.py -->"
README_PORT = "8000"
NAMESPACE = "podq"
RELEASE = "podq"
VOLUME = "podq-store"
COMMAND_TIMEOUT = 600
POLL = 0.5
# Queries submitted just before the upgrade: with the chart's default cap of 2, most of them wait.
QUEUED_ACROSS_UPGRADE = 8


def readme_commands() -> list[str]:
    """The commands of the README's deployment block: comments and blank lines dropped, continuation
    lines joined."""
    text = (ROOT / "README.md").read_text()
    assert MARKER in text, f"README.md has no {MARKER} block"
    block = text.split(MARKER, 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0]
    commands: list[str] = []
    pending = ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        commands.append((pending + line).strip())
        pending = ""
    assert not pending, "the README block ends in a continuation line"
    return commands


@dataclass
class Ran:
    command: str
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Shell:
    """Runs README commands one by one, keeping what they export."""

    env: dict[str, str]
    port: str
    log_dir: Path
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, command: str) -> Ran:
        command = command.replace(README_PORT, self.port)
        if command.endswith("&"):
            self._start(command[:-1].strip())
            return Ran(command, 0, "", "")
        if match := re.fullmatch(r"export (\w+)=(.*)", command):
            name = match.group(1)
            done = self._bash(f'{command}; printf %s "${name}"')
            assert done.returncode == 0, f"{command!r} failed: {done.stderr}"
            self.env[name] = done.stdout
            return done
        return self._bash(command)

    def _bash(self, command: str) -> Ran:
        done = subprocess.run(
            ["bash", "-c", command],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        return Ran(command, done.returncode, done.stdout, done.stderr)

    def _start(self, command: str) -> None:
        # A port-forward started again: the one before it must have ended (the README stops it), and
        # only then is the port free.
        for earlier in self.background:
            wait_until(partial(_ended, earlier), f"{command!r}'s predecessor to end", 120, POLL)
        log = self.log_dir / f"background-{len(self.background)}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                env=self.env,
                cwd=ROOT,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.background.append(process)
        wait_until(lambda: process.poll() is not None or _listening(int(self.port)), f"{command!r}", 60, POLL)
        assert process.poll() is None, f"{command!r} exited: {log.read_text(errors='replace')}"

    def stop(self) -> None:
        for process in self.background:
            if process.poll() is None:
                process.terminate()
                process.wait(30)


def _ended(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is not None


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _podq_pods() -> list[dict[str, Any]]:
    """Every pod of the release: the controller's and the workers'."""
    selector = f"app.kubernetes.io/instance={RELEASE}"
    items: list[dict[str, Any]] = kubectl_json("get", "pods", "-n", NAMESPACE, "-l", selector)["items"]
    return items


def _controller_pod() -> dict[str, Any]:
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=podq"
    pods: list[dict[str, Any]] = kubectl_json("get", "pods", "-n", NAMESPACE, "-l", selector)["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 1, [p["metadata"]["name"] for p in pods]
    return live[0]


@pytest.fixture
def shell(helm: Helm, pod_file_server: FileServer, tmp_path: Path) -> Iterator[Shell]:
    if os.geteuid() != 0:
        pytest.fail("the README's deployment path needs root (the harness scripts)", pytrace=False)
    leftovers = kubectl("get", "namespace", NAMESPACE, "--ignore-not-found", "-o", "name")
    assert not leftovers, f"namespace {NAMESPACE} exists: the README's path needs it free"
    path = os.pathsep.join(
        [str(Path(helm.path).parent), str(Path(sys.executable).parent), os.environ["PATH"]]
    )
    env = {**os.environ, "PATH": path, "DATASET_URL": f"{pod_file_server.url}/large.parquet"}
    env.pop("PODQ_TOKEN", None)
    shell = Shell(env=env, port=_free_port(), log_dir=tmp_path)
    try:
        yield shell
    finally:
        shell.stop()
        # Whatever the README's own teardown did not get to.
        shell.run(f"helm uninstall {RELEASE} --namespace {NAMESPACE} --wait --ignore-not-found")
        kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=120s")
        shell.run(f"tests/e2e/cluster/local-volume.sh --delete {VOLUME}")


class Deployment:
    """The README's commands, run in order; `until` runs up to and including the first command that
    starts with a prefix, and hands back what it printed."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell
        self.pending = readme_commands()

    def until(self, prefix: str) -> Ran:
        while self.pending:
            command = self.pending.pop(0)
            ran = self.shell.run(command)
            if command.startswith(prefix):
                return ran
            ok(ran)
        raise AssertionError(f"the README's deployment block has no command starting {prefix!r}")

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.shell.env['PODQ_TOKEN']}"}
        return httpx.Client(base_url=f"http://127.0.0.1:{self.shell.port}", headers=headers, timeout=30)


def ok(ran: Ran) -> Ran:
    assert ran.returncode == 0, (
        f"{ran.command!r} exited {ran.returncode}:\n{ran.stdout}\n{ran.stderr}\n{_cluster_state()}"
    )
    return ran


def _cluster_state() -> str:
    """What an operator would look at first: the namespace's objects, events and the controller's log."""
    looks = [
        ("get", "all,pvc", "-n", NAMESPACE, "-o", "wide"),
        ("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp"),
        ("logs", "-n", NAMESPACE, f"deployment/{RELEASE}", "--tail=40"),
    ]
    parts = []
    for args in looks:
        done = subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=60, check=False)
        parts.append(f"$ kubectl {' '.join(args)}\n{done.stdout}{done.stderr}")
    return "\n".join(parts)


def test_readme_deployment_path(shell: Shell, pod_file_server: FileServer) -> None:
    deploy = Deployment(shell)

    ok(deploy.until("helm install"))
    controller = _controller_pod()
    assert controller["spec"]["serviceAccountName"] == RELEASE
    assert controller["status"]["phase"] == "Running"
    # The API server's word on the chart's ServiceAccount: its Role, nothing more.
    account = Account(NAMESPACE, RELEASE)
    for verb, resource, subresource in [
        ("create", "pods", ""),
        ("list", "pods", ""),
        ("get", "pods", "log"),
        ("create", "events", ""),
    ]:
        assert can_i(account, verb, resource, NAMESPACE, subresource), (
            f"may not {verb} {resource} {subresource}"
        )
    for verb, resource, namespace in [
        ("list", "secrets", NAMESPACE),
        ("get", "configmaps", NAMESPACE),
        ("create", "deployments", NAMESPACE),
        ("patch", "pods", NAMESPACE),
        ("list", "nodes", None),
        ("create", "pods", "default"),
    ]:
        assert not can_i(account, verb, resource, namespace), f"may {verb} {resource} in {namespace}"
    # And the controller itself was refused: it asked for nodes, and says so once.
    logs = kubectl("logs", "-n", NAMESPACE, controller["metadata"]["name"])
    assert "cannot list nodes (forbidden)" in logs, logs

    first = ok(deploy.until("podq submit --sql"))
    assert first.stdout.splitlines() == ["x", "-", "1", "(1 rows)"], first.stdout
    hungry = deploy.until("podq submit --wait --memory")
    assert hungry.returncode == 1, (hungry.stdout, hungry.stderr)
    assert re.match(r"query [0-9a-f]{32} failed: memory: ", hungry.stderr), hungry.stderr

    with deploy.client() as client:
        ids = [
            client.post(
                "/v1/queries",
                json={
                    "sql": f"SELECT count(*) + {index} AS n FROM t",
                    "datasets": [{"url": f"{pod_file_server.url}/simple.parquet", "table_name": "t"}],
                    "limits": {"cpu": "250m", "memory": "256Mi"},
                },
            ).json()["id"]
            for index in range(QUEUED_ACROSS_UPGRADE)
        ]
        statuses = [client.get(f"/v1/queries/{query_id}").json()["status"] for query_id in ids]
    assert "queued" in statuses, f"nothing was queued when the upgrade began: {statuses}"
    old_controller = controller["metadata"]["uid"]
    ok(deploy.until("helm upgrade"))
    ok(deploy.until("kubectl --namespace podq port-forward"))
    assert _controller_pod()["metadata"]["uid"] != old_controller
    with deploy.client() as client:
        for index, query_id in enumerate(ids):
            record = client.get(f"/v1/queries/{query_id}", params={"wait": 120}, timeout=150).json()
            assert record["status"] == "succeeded", record
            assert record["result"]["rows"] == [[10 + index]], record
        # The upgrade's one change, as the new controller reports it.
        assert "podq_max_concurrent 4.0" in client.get("/metrics").text.splitlines()
        # One query still running when the release goes: its pod must go with it.
        running = client.post(
            "/v1/queries",
            json={
                "sql": "SELECT count(*) AS n FROM t a CROSS JOIN t b CROSS JOIN t c CROSS JOIN t d",
                "datasets": [{"url": f"{pod_file_server.url}/large.parquet", "table_name": "t"}],
                "limits": {"cpu": "250m", "memory": "256Mi", "timeout_seconds": 300},
            },
        ).json()["id"]
        wait_until(
            lambda: client.get(f"/v1/queries/{running}").json()["status"] == "running",
            "the last query to run",
            120,
            POLL,
        )
    (worker,) = [
        p for p in _podq_pods() if p["metadata"]["labels"]["app.kubernetes.io/name"] == "podq-worker"
    ]
    account = kubectl_json("get", "serviceaccount", RELEASE, "-n", NAMESPACE)["metadata"]
    assert worker["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "ServiceAccount", "name": RELEASE, "uid": account["uid"]}
    ]
    ok(deploy.until("helm uninstall"))
    wait_until(lambda: not _podq_pods(), "every podq pod to be gone after helm uninstall", 120, POLL)
    while deploy.pending:
        ok(deploy.until(deploy.pending[0]))
