"""Reading the worker's request: well-formed requests pass as given, anything else is a validation error."""

from __future__ import annotations

import json
from typing import Any

import pytest

from worker_image.protocol import ErrorType, WorkerError
from worker_image.request import DEFAULT_MAX_RESULT_BYTES, DEFAULT_MAX_ROWS, load_request

pytestmark = pytest.mark.unit

FETCH = {
    "connect_timeout_seconds": 5,
    "read_timeout_seconds": 2.5,
    "total_timeout_seconds": 60,
    "max_download_bytes": 1024,
}
QUERY = {
    "operation": "query",
    "fetch": FETCH,
    "sql": "SELECT 1",
    "datasets": [],
    "max_rows": 10,
    "max_result_bytes": 65536,
}
INSPECT = {"operation": "inspect", "fetch": FETCH, "url": "http://example.test/a.parquet"}


POLICY = {"allowed_networks": ["10.88.0.1/32", "fd00::/8"], "blocked_networks": []}


@pytest.mark.parametrize(
    "request_body",
    [
        QUERY,
        INSPECT,
        {**INSPECT, "debug": {"crash": "exit"}},
        {**INSPECT, "fetch": {**FETCH, **POLICY}},
        {**QUERY, "limits": {"memory_bytes": 2**30}},
    ],
)
def test_well_formed_requests_load_unchanged(request_body: dict[str, Any]) -> None:
    assert load_request(json.dumps(request_body)) == request_body


def test_max_rows_defaults_when_absent() -> None:
    body = {key: value for key, value in QUERY.items() if key != "max_rows"}
    assert load_request(json.dumps(body))["max_rows"] == DEFAULT_MAX_ROWS


def test_max_result_bytes_defaults_below_kubelets_log_rotation() -> None:
    body = {key: value for key, value in QUERY.items() if key != "max_result_bytes"}
    assert load_request(json.dumps(body))["max_result_bytes"] == DEFAULT_MAX_RESULT_BYTES < 10 * 2**20


def test_unknown_keys_are_ignored_for_forward_compatibility() -> None:
    assert load_request(json.dumps({**INSPECT, "added_later": 1}))["url"] == INSPECT["url"]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (None, "neither PODQ_REQUEST nor PODQ_REQUEST_FD is set"),
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        (json.dumps({**QUERY, "operation": "drop"}), "unknown operation 'drop'"),
        (json.dumps({**QUERY, "fetch": None}), "'fetch' must be an object"),
        (json.dumps({**QUERY, "fetch": {**FETCH, "read_timeout_seconds": 0}}), "fetch.read_timeout_seconds"),
        (
            json.dumps({**QUERY, "fetch": {**FETCH, "connect_timeout_seconds": True}}),
            "fetch.connect_timeout_seconds",
        ),
        (
            '{"operation": "inspect", "url": "u", "fetch": {"connect_timeout_seconds": NaN}}',
            "connect_timeout",
        ),
        (json.dumps({**QUERY, "fetch": {**FETCH, "max_download_bytes": 1.5}}), "fetch.max_download_bytes"),
        (
            json.dumps({**QUERY, "fetch": {**FETCH, "allowed_networks": "10.0.0.0/8"}}),
            "fetch.allowed_networks",
        ),
        (json.dumps({**QUERY, "fetch": {**FETCH, "blocked_networks": [10]}}), "fetch.blocked_networks"),
        (
            json.dumps({**QUERY, "fetch": {**FETCH, "allowed_networks": ["10.0.0.1/8"]}}),
            "'fetch.allowed_networks': '10.0.0.1/8' is not a network in CIDR notation",
        ),
        (json.dumps({**QUERY, "sql": "   "}), "'sql' is empty"),
        (json.dumps({**QUERY, "sql": 1}), "'sql' must be a non-empty string"),
        (json.dumps({**QUERY, "datasets": {}}), "'datasets' must be a list"),
        (json.dumps({**QUERY, "datasets": ["u"]}), "'datasets[0]' must be an object"),
        (json.dumps({**QUERY, "datasets": [{"url": "u"}]}), "'datasets[0].table_name'"),
        (json.dumps({**QUERY, "datasets": [{"url": "", "table_name": "t"}]}), "'datasets[0].url'"),
        (json.dumps({**QUERY, "max_rows": 0}), "'max_rows' must be a positive integer"),
        (json.dumps({**QUERY, "max_rows": True}), "'max_rows' must be a positive integer"),
        (json.dumps({**QUERY, "max_result_bytes": 0}), "'max_result_bytes' must be a positive integer"),
        (json.dumps({**QUERY, "max_result_bytes": "8Mi"}), "'max_result_bytes' must be a positive integer"),
        (json.dumps({**INSPECT, "url": None}), "'url' must be a non-empty string"),
        (json.dumps({**INSPECT, "debug": []}), "'debug' must be an object"),
        (json.dumps({**QUERY, "limits": 512}), "'limits' must be an object with 'memory_bytes'"),
        (json.dumps({**QUERY, "limits": {}}), "'limits.memory_bytes' must be a positive integer"),
        (json.dumps({**QUERY, "limits": {"memory_bytes": 0}}), "'limits.memory_bytes' must be a positive"),
        (json.dumps({**QUERY, "limits": {"memory_bytes": "1Gi"}}), "'limits.memory_bytes' must be a"),
        (json.dumps({**QUERY, "limits": {"memory_bytes": True}}), "'limits.memory_bytes' must be a"),
    ],
)
def test_malformed_requests_are_validation_errors(raw: str | None, fragment: str) -> None:
    with pytest.raises(WorkerError) as caught:
        load_request(raw)
    assert caught.value.error_type is ErrorType.VALIDATION
    assert fragment in caught.value.message
