"""Load on the real controller: a thousand submissions from twenty clients against a cap of four running and
a queue limit that is reached. Every submission is accepted or clearly refused, every accepted query runs
exactly once to success, and the controller's memory stays bounded (its peak RSS is printed)."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.testing.process import ControllerProcess
from tests.support.api import posted_together
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

StartController = Callable[..., ControllerProcess]

CLIENTS = 20
SUBMISSIONS = 1000
MAX_CONCURRENT = 4
# Each accepted query is a real worker subprocess (~0.5 s of CPU): a limit of 100 keeps the accepted ones
# to little more than that (the queue drains a little while the burst lasts) and the test near a minute.
MAX_QUEUED = 100
# A sanity bound, not a measurement: the queue is on disk, so the controller should stay far below this.
RSS_BOUND_BYTES = 1 << 30
ERROR_KEYS = {"error_type", "message", "details", "retryable"}


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the process's resident-set high-water mark since it started."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) * 1024


def every_record(client: httpx.Client) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/queries", params=params).json()
        records.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return records


def active(client: httpx.Client) -> int:
    return sum(
        len(client.get("/v1/queries", params={"status": status, "limit": 500}).json()["items"])
        for status in ("queued", "running")
    )


def test_LOAD_1_a_thousand_submissions_are_accepted_or_refused_and_every_accepted_one_runs_once(
    start_controller: StartController,
) -> None:
    controller = start_controller(max_concurrent=MAX_CONCURRENT, max_queued=MAX_QUEUED)
    assert controller.process is not None

    def submit_share(client: httpx.Client) -> list[httpx.Response]:
        return [
            client.post("/v1/queries", json={"sql": "SELECT 1 AS x"}) for _ in range(SUBMISSIONS // CLIENTS)
        ]

    started = time.monotonic()
    responses = posted_together(controller, CLIENTS, submit_share)
    submitted = time.monotonic()

    assert len(responses) == SUBMISSIONS
    by_status = Counter(r.status_code for r in responses)
    assert set(by_status) == {202, 429}, {r.status_code: r.text for r in responses if r.status_code != 202}
    refused = [r for r in responses if r.status_code == 429]
    for response in refused:
        body = response.json()
        assert set(body) == ERROR_KEYS and body["error_type"] == "unschedulable" and body["retryable"], body
        assert int(response.headers["retry-after"]) >= 1
        assert body["details"]["max_queued"] == MAX_QUEUED
    accepted = [r.json()["id"] for r in responses if r.status_code == 202]
    assert len(set(accepted)) == len(accepted), "every 202 names a query of its own"
    assert len(accepted) >= MAX_QUEUED, "the queue filled before anything was refused"

    with controller.client() as client:
        wait_until(lambda: active(client) == 0, "every accepted query to finish", within=900, every=0.5)
        finished = time.monotonic()
        peak = peak_rss_bytes(controller.process.pid)
        records = every_record(client)

    assert sorted(r["id"] for r in records) == sorted(accepted), "none lost, and a refusal stored nothing"
    assert {r["status"] for r in records} == {"succeeded"}, [r for r in records if r["status"] != "succeeded"]
    assert all(len(r["attempts"]) == 1 and r["result"]["rows"] == [[1]] for r in records)
    log = controller.log_path.read_text(errors="replace")
    runs = Counter(re.findall(r"query ([0-9a-f]{32}): worker pid \d+ ended", log))
    assert runs == Counter(accepted), "each accepted query had exactly one worker"

    print(
        f"\nLOAD: {SUBMISSIONS} submissions from {CLIENTS} clients in {submitted - started:.1f} s: "
        f"{by_status[202]} accepted, {by_status[429]} refused (429); the accepted ran in "
        f"{finished - started:.1f} s ({len(accepted) / (finished - started):.2f} queries/s with "
        f"max_concurrent={MAX_CONCURRENT}); controller peak RSS {peak / 2**20:.1f} MiB"
    )
    assert peak < RSS_BOUND_BYTES
