"""Idempotency-Key on the real controller over real HTTP: a retried POST gets its query back, never a
second run, whether the retries are sequential, concurrent, or straddle a kill -9 of the controller."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from controller.testing.fileserver import FileServer
from controller.testing.process import ControllerProcess, wait_finished
from tests.support.api import posted_together
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

StartController = Callable[..., ControllerProcess]


@dataclass(frozen=True)
class Probed:
    """A query whose dataset URL is unique, so the file server counts how often a worker ran it."""

    body: dict[str, Any]
    server: FileServer
    probe: str

    def fetches(self) -> int:
        return sum(self.probe in path for path in self.server.requests)


@pytest.fixture
def probed(http_file_server: FileServer) -> Probed:
    probe = uuid.uuid4().hex
    url = f"{http_file_server.url}/simple.parquet?probe={probe}"
    body = {"sql": "SELECT count(*) AS n FROM t", "datasets": [{"url": url, "table_name": "t"}]}
    return Probed(body, http_file_server, probe)


def keyed(key: str, **more: str) -> dict[str, str]:
    return {"Idempotency-Key": key, **more}


def post_keyed(client: httpx.Client, body: dict[str, Any], key: str, **more: str) -> httpx.Response:
    """POST the query with this Idempotency-Key (and `more` headers)."""
    return client.post("/v1/queries", json=body, headers=keyed(key, **more))


@pytest.fixture
def controller(start_controller: StartController) -> ControllerProcess:
    """A controller of the test's own: these tests count every query it holds."""
    return start_controller()


def listed(client: httpx.Client) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get("/v1/queries", params={"limit": 500}).json()["items"]
    return items


def test_IDEM_1_a_retry_gets_the_same_query_and_the_worker_runs_once(
    controller: ControllerProcess, probed: Probed
) -> None:
    with controller.client() as client:
        first = post_keyed(client, probed.body, "retry-1")
        retry = post_keyed(client, probed.body, "retry-1")
        record = wait_finished(client, first.headers["location"])
        late_retry = post_keyed(client, probed.body, "retry-1")
        unkeyed = client.post("/v1/queries", json={"sql": "SELECT 1 AS x"})
        queries = listed(client)
    assert first.status_code == retry.status_code == late_retry.status_code == 202
    assert first.json()["id"] == retry.json()["id"] == late_retry.json()["id"]
    assert first.headers["location"] == retry.headers["location"] == late_retry.headers["location"]
    assert "idempotent-replayed" not in first.headers
    assert retry.headers["idempotent-replayed"] == late_retry.headers["idempotent-replayed"] == "true"
    assert late_retry.json()["status"] == "succeeded", "a replay shows the query as it is now"
    assert record["result"]["rows"] == [[10]] and len(record["attempts"]) == 1
    assert probed.fetches() == 1
    assert "idempotent-replayed" not in unkeyed.headers
    assert [q["id"] for q in queries] == [unkeyed.json()["id"], first.json()["id"]]


def test_IDEM_2_concurrent_retries_create_exactly_one_query(
    controller: ControllerProcess, probed: Probed
) -> None:
    """Sixteen clients, each with its own connection, released together with one key and one body."""
    clients = 16
    responses = posted_together(
        controller, clients, lambda client: [post_keyed(client, probed.body, "storm")]
    )
    assert [r.status_code for r in responses] == [202] * clients, [r.text for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1, "exactly one created it"
    with controller.client() as client:
        record = wait_finished(client, responses[0].headers["location"])
        queries = listed(client)
    assert [q["id"] for q in queries] == list(ids)
    assert record["status"] == "succeeded" and len(record["attempts"]) == 1
    assert probed.fetches() == 1, "the worker ran once"


def test_IDEM_3_another_body_with_a_used_key_is_422_and_runs_nothing(
    controller: ControllerProcess, probed: Probed
) -> None:
    body = probed.body
    with controller.client() as client:
        first = post_keyed(client, body, "k")
        before = listed(client)
        other_sql = post_keyed(client, {**body, "sql": "SELECT 1 AS n"}, "k")
        other_rows = post_keyed(client, {**body, "max_rows": 3}, "k")
        other_endpoint = client.post(
            "/v1/inspections", json={"url": body["datasets"][0]["url"]}, headers=keyed("k")
        )
        after = listed(client)
        same_body_respelt = client.post(
            "/v1/queries",
            content=json.dumps({"datasets": body["datasets"], "sql": body["sql"]}, indent=4),
            headers=keyed("k", **{"content-type": "application/json"}),
        )
    assert first.status_code == 202
    for refused in (other_sql, other_rows, other_endpoint):
        assert refused.status_code == 422, refused.text
        error = refused.json()
        assert error["error_type"] == "validation" and error["retryable"] is False
        assert error["message"].startswith("Idempotency-Key:")
        assert error["details"]["errors"][0]["field"] == "Idempotency-Key"
    assert [q["id"] for q in after] == [q["id"] for q in before] == [first.json()["id"]]
    assert same_body_respelt.status_code == 202 and same_body_respelt.json()["id"] == first.json()["id"]


def test_IDEM_4_a_key_survives_a_kill_9_and_restart(
    start_controller: StartController, probed: Probed, tmp_path: Any
) -> None:
    data_dir = tmp_path / "idem-data"
    body = probed.body
    first = start_controller(data_dir=data_dir)
    with first.client() as client:
        accepted = post_keyed(client, body, "durable")
        wait_finished(client, accepted.headers["location"])
    first.kill()

    second = start_controller(data_dir=data_dir)
    with second.client() as client:
        retry = post_keyed(client, body, "durable")
        other = post_keyed(client, {"sql": "SELECT 1 AS n"}, "durable")
        queries = listed(client)
    assert accepted.status_code == retry.status_code == 202
    assert retry.json()["id"] == accepted.json()["id"]
    assert retry.headers["idempotent-replayed"] == "true"
    assert other.status_code == 422
    assert len(queries) == 1 and probed.fetches() == 1


def test_IDEM_5_an_expired_key_is_free_again(start_controller: StartController) -> None:
    controller = start_controller(idempotency_key_ttl_seconds="0.5")
    body = {"sql": "SELECT 1 AS x"}
    with controller.client() as client:
        first = post_keyed(client, body, "short-lived")

        def resubmitted_as_new() -> httpx.Response | None:
            response = post_keyed(client, body, "short-lived")
            assert response.status_code == 202, response.text
            return None if "idempotent-replayed" in response.headers else response

        fresh = wait_until(resubmitted_as_new, "the key to expire", within=30, every=0.1)
        queries = listed(client)
    assert fresh.json()["id"] != first.json()["id"]
    assert len(queries) == 2


def test_IDEM_6_keys_are_scoped_per_token(start_controller: StartController) -> None:
    controller = start_controller(api_tokens='["alice-token", "bob-token"]')
    body = {"sql": "SELECT 1 AS x"}
    with controller.client() as client:
        alice = [post_keyed(client, body, "shared", Authorization="Bearer alice-token") for _ in range(2)]
        bob = post_keyed(client, body, "shared", Authorization="Bearer bob-token")
    assert alice[0].json()["id"] == alice[1].json()["id"]
    assert bob.status_code == 202 and bob.json()["id"] != alice[0].json()["id"]
    assert "idempotent-replayed" not in bob.headers


BAD_KEYS: list[tuple[str, str | bytes, str]] = [
    ("empty", "", "empty"),
    ("over 255 characters", "k" * 256, "longer than 255"),
    ("non-ASCII bytes", b"cl\xe9", "printable ASCII"),
    ("broken sf-string", '"a"b"', "unescaped"),
]


@pytest.mark.parametrize(("key", "message"), [c[1:] for c in BAD_KEYS], ids=[c[0] for c in BAD_KEYS])
def test_IDEM_7_a_malformed_key_is_422_and_stores_nothing(
    running_controller: ControllerProcess, key: str | bytes, message: str
) -> None:
    with running_controller.client() as client:
        before = listed(client)
        response = client.post("/v1/queries", json={"sql": "SELECT 1 AS x"}, headers={"Idempotency-Key": key})
        after = listed(client)
    assert response.status_code == 422, response.text
    assert response.json()["error_type"] == "validation"
    assert response.json()["message"].startswith("Idempotency-Key:") and message in response.json()["message"]
    assert after == before
