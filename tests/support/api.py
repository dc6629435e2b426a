"""Submitting over HTTP in tests: one `submit`, one `run`, one `sleeper` for every tier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import polars as pl

from controller.testing.process import wait_finished


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> str:
    """POST the query, insist on 202 with the record's `Location`, and return it."""
    response = client.post("/v1/queries", json=body, headers=headers)
    assert response.status_code == 202, response.text
    location: str = response.headers["location"]
    assert location == f"/v1/queries/{response.json()['id']}"
    return location


def run(client: httpx.Client, body: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """Submit and wait for the terminal record."""
    return wait_finished(client, submit(client, body), timeout=timeout)


# A filter over the fixture's simple.parquet, and what polars itself says the rows are.
SIMPLE_SQL = "SELECT name, value FROM t WHERE id > 5 ORDER BY id"


def simple_query(server_url: str) -> dict[str, Any]:
    return {"sql": SIMPLE_SQL, "datasets": [{"url": f"{server_url}/simple.parquet", "table_name": "t"}]}


def simple_rows(parquet_dir: Path) -> list[list[Any]]:
    expected = pl.read_parquet(parquet_dir / "simple.parquet").filter(pl.col("id") > 5).sort("id")
    return [list(row) for row in expected.select("name", "value").rows()]


def sleeper(seconds: float = 60, **limits: Any) -> dict[str, Any]:
    """A query whose worker sleeps first (test hook), so it stays running until cancelled or killed."""
    body: dict[str, Any] = {"sql": "SELECT 1 AS x", "debug": {"sleep_seconds": seconds}}
    if limits:
        body["limits"] = limits
    return body


def assert_each_failed_as_its_kind(records: dict[str, dict[str, Any]]) -> None:
    """Each record, keyed by the error type it should end with, failed with that type in the API's shape."""
    for kind, record in records.items():
        assert record["status"] == "failed", record
        error = record["error"]
        assert set(error) == {"error_type", "message", "details", "retryable"}, error
        assert error["error_type"] == kind, error
        assert error["message"], error
