"""Two controllers on one PostgreSQL, deployed with the chart, upgraded with `helm upgrade` while a client
submits steadily through the Service.

Every submission must be answered 202 or 429, every accepted query must finish once with its own result,
and the Service must never be unreachable for more than a second. The client talks to the Service's
cluster IP, which this machine reaches through the harness node's kube-proxy: a port-forward would stay
tied to one pod and measure nothing about the rollout.

PostgreSQL is a real server on this machine (tests/support/postgres.py), listening on the address pods
reach it at. It needs the harness cluster, whose images the chart's controller and worker run.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.support.e2e import E2EEnv, kubectl, kubectl_json
from tests.support.helm import CHART_DIR, Helm
from tests.support.postgres import PostgresServer, binaries
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

SUBMIT_EVERY_SECONDS = 0.5
REQUEST_TIMEOUT_SECONDS = 2.0
LONGEST_UNAVAILABILITY_SECONDS = 1.0
# Before the upgrade and after the last new controller is ready, the client gets this many answers.
STEADY_ANSWERS = 8
HELM_WAIT = "150s"
FINISH_TIMEOUT_SECONDS = 240.0
# Small, so that the concurrency cap, not the node's CPU, bounds how many pods run (an unschedulable pod
# fails its query).
QUERY_LIMITS = {"cpu": "200m", "memory": "256Mi"}


@dataclass
class Submission:
    sent_at: float
    n: int
    answered_at: float | None = None
    status: int | None = None
    query_id: str | None = None
    error: str | None = None


@dataclass
class SteadyClient:
    """Submits `SELECT n` every SUBMIT_EVERY_SECONDS on its own thread until stopped."""

    base_url: str
    submissions: list[Submission] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
            n = 0
            while not self._stop.wait(SUBMIT_EVERY_SECONDS):
                n += 1
                one = Submission(sent_at=time.monotonic(), n=n)
                self.submissions.append(one)
                try:
                    response = client.post(
                        "/v1/queries", json={"sql": f"SELECT {n} AS n", "limits": QUERY_LIMITS}
                    )
                except httpx.HTTPError as exc:
                    one.error = f"{type(exc).__name__}: {exc}"
                    continue
                one.answered_at, one.status = time.monotonic(), response.status_code
                if response.status_code == 202:
                    one.query_id = response.json()["id"]

    def stop(self) -> None:
        self._stop.set()

    def answered_since(self, moment: float) -> int:
        return sum(
            1 for one in list(self.submissions) if one.answered_at is not None and one.sent_at >= moment
        )

    def longest_unavailability(self) -> float:
        """The longest time from a submission that got no answer to the next one answered."""
        longest, first_failed = 0.0, None
        for one in self.submissions:
            if one.status is None:
                first_failed = first_failed if first_failed is not None else one.sent_at
            elif first_failed is not None:
                assert one.answered_at is not None
                longest, first_failed = max(longest, one.answered_at - first_failed), None
        return longest


@pytest.fixture
def host_postgres(e2e_env: E2EEnv) -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, reachable from the pods."""
    bin_dir = binaries()
    if bin_dir is None:
        pytest.fail("no PostgreSQL binaries (initdb): tests/run.sh installs Debian's postgresql package")
    server = PostgresServer(bin_dir)
    try:
        server.init()
        server.start(also_listen_on=e2e_env.host_address)
        yield server
    finally:
        server.remove()


@pytest.fixture
def release_namespace() -> Iterator[str]:
    name = f"podq-ha-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false")


def _image_values(reference: str) -> tuple[str, str]:
    repository, _, tag = reference.rpartition(":")
    return repository, tag


def _controller_pods(namespace: str) -> list[str]:
    pods = kubectl_json("get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=controller")
    return sorted(pod["metadata"]["name"] for pod in pods["items"])


def _each_succeeded_with_its_result(base_url: str, accepted: list[Submission]) -> list[int]:
    """Waits for each accepted query to finish; returns how many attempts each took."""
    attempts: list[int] = []
    with httpx.Client(base_url=base_url, timeout=70) as http:
        for one in accepted:
            deadline = time.monotonic() + FINISH_TIMEOUT_SECONDS
            record = http.get(f"/v1/queries/{one.query_id}", params={"wait": 60}).json()
            while record["status"] in ("queued", "running") and time.monotonic() < deadline:
                record = http.get(f"/v1/queries/{one.query_id}", params={"wait": 60}).json()
            assert record["status"] == "succeeded", (record["attempts"], record["error"], record["placement"])
            assert record["result"]["rows"] == [[one.n]], record
            attempts.append(len(record["attempts"]))
    return attempts


def test_helm_upgrade_of_two_controllers_under_load_loses_nothing(
    helm: Helm, e2e_env: E2EEnv, host_postgres: PostgresServer, release_namespace: str
) -> None:
    controller_image = os.environ.get("PODQ_E2E_CONTROLLER_IMAGE")
    if not controller_image:
        pytest.fail("PODQ_E2E_CONTROLLER_IMAGE is not set (tests/run.sh builds it with the harness)")
    repository, tag = _image_values(controller_image)
    worker_repository, worker_tag = _image_values(e2e_env.worker_image)
    install = [
        "--namespace", release_namespace, "--wait", "--timeout", HELM_WAIT,
        "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
        "--set", f"worker.image.repository={worker_repository}", "--set", f"worker.image.tag={worker_tag}",
        "--set", "replicaCount=2",
        "--set", f"database.url={host_postgres.url(host=e2e_env.host_address)}",
        "--set", "config.maxConcurrent=3",
    ]  # fmt: skip
    helm.run("install", "podq", str(CHART_DIR), *install)
    before = _controller_pods(release_namespace)
    assert len(before) == 2, before
    service = kubectl_json("get", "service", "podq", "-n", release_namespace)
    cluster_ip, port = service["spec"]["clusterIP"], service["spec"]["ports"][0]["port"]

    client = SteadyClient(f"http://{cluster_ip}:{port}")
    thread = threading.Thread(target=client.run, name="steady-client", daemon=True)
    thread.start()
    try:
        wait_until(lambda: client.answered_since(0.0) >= STEADY_ANSWERS, "a steady start", within=60)
        upgrade_started = time.monotonic()
        helm.run(
            "upgrade", "podq", str(CHART_DIR), "--namespace", release_namespace, "--reuse-values",
            "--set", "config.maxConcurrent=4", "--wait", "--timeout", HELM_WAIT,
        )  # fmt: skip
        upgraded_at = time.monotonic()
        # helm returns once the new pods are ready; the old ones are still stopping (preStop, SIGTERM).
        wait_until(
            lambda: not set(_controller_pods(release_namespace)) & set(before), "the old pods gone", within=90
        )
        gone_at = time.monotonic()
        wait_until(lambda: client.answered_since(gone_at) >= STEADY_ANSWERS, "a steady end", within=60)
    finally:
        client.stop()
        thread.join(timeout=REQUEST_TIMEOUT_SECONDS + 1)

    after = _controller_pods(release_namespace)
    assert len(after) == 2 and not set(after) & set(before), (before, after)
    statuses = [one.status for one in client.submissions]
    errors = [one.error for one in client.submissions if one.error is not None]
    accepted = [one for one in client.submissions if one.status == 202]
    report = (
        f"{len(client.submissions)} submissions, {statuses.count(202)} accepted, {statuses.count(429)} "
        f"refused 429, {len(errors)} errors; upgrade took {upgraded_at - upgrade_started:.1f} s; longest "
        f"unavailability {client.longest_unavailability():.2f} s"
    )
    print(report)
    assert not errors, f"{report}: {errors[:5]}"
    assert set(statuses) <= {202, 429}, report
    assert client.longest_unavailability() <= LONGEST_UNAVAILABILITY_SECONDS, report
    assert accepted, report

    attempts = _each_succeeded_with_its_result(f"http://{cluster_ip}:{port}", accepted)
    # A query whose controller went away mid-run is run again by another, adopting its pod by name.
    print(f"attempts per accepted query: {sorted(Counter(attempts).items())}")
    running = kubectl_json("get", "pods", "-n", release_namespace, "-l", "app.kubernetes.io/managed-by=podq")
    assert running["items"] == [] or all(
        pod["status"].get("phase") in ("Succeeded", "Failed") for pod in running["items"]
    )
    helm.run("uninstall", "podq", "--namespace", release_namespace, "--wait")
