"""podq.client's mapping of answers to its exception tree (httpx.MockTransport: error mapping only;
tests/integration/test_client.py runs the client against a real controller)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

from podq.client import (
    QUERY_ERRORS,
    APIError,
    BadRequest,
    Client,
    Conflict,
    Evicted,
    ImageError,
    NotFound,
    QueryFailed,
    QueueFull,
    Record,
    ServerError,
    Unauthorized,
    Unavailable,
    Unreachable,
    Unschedulable,
    is_retryable,
)
from podq.client.errors import query_failed
from worker_image.protocol import ErrorType, error_info

pytestmark = pytest.mark.unit


def answering(status: int, body: Any, headers: dict[str, str] | None = None) -> Client:
    def handler(_: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return Client("http://podq.test", transport=httpx.MockTransport(handler))


def record(status: str, error: dict[str, Any] | None) -> Record:
    return Record.from_json(
        {
            "id": "abc",
            "operation": "query",
            "status": status,
            "limits": {"cpu": "1", "memory": "512Mi", "timeout_seconds": 60},
            "attempts": [],
            "submitted_at": 1.0,
            "error": error,
        }
    )


def test_every_error_type_of_the_taxonomy_has_its_class() -> None:
    assert set(QUERY_ERRORS) == {e.value for e in ErrorType}
    assert len(set(QUERY_ERRORS.values())) == len(QUERY_ERRORS)


@pytest.mark.parametrize(
    ("error_type", "cls"),
    [("evicted", Evicted), ("image", ImageError), ("unschedulable", Unschedulable)],
)
def test_kubernetes_only_fates_map_to_their_class(error_type: str, cls: type[QueryFailed]) -> None:
    error = error_info(ErrorType(error_type), "from the pod")
    failed = query_failed(record("failed", dict(error)))
    assert type(failed) is cls
    assert failed.retryable is error["retryable"] and is_retryable(failed) is error["retryable"]


def test_an_unknown_error_type_is_still_a_QueryFailed() -> None:
    failed = query_failed(record("failed", {"error_type": "novel", "message": "m"}))
    assert type(failed) is QueryFailed and "novel: m" in str(failed)


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (400, BadRequest, False),
        (401, Unauthorized, False),
        (404, NotFound, False),
        (409, Conflict, False),
        (413, BadRequest, False),
        (422, BadRequest, False),
        (429, QueueFull, True),
        (500, ServerError, False),
        (503, Unavailable, True),
    ],
)
def test_http_status_maps_to_its_class(status: int, cls: type[APIError], retryable: bool) -> None:
    error_type = ErrorType.INTERNAL if status >= 500 else ErrorType.VALIDATION
    body = error_info(error_type, "no", retryable=status in (429, 503))
    with answering(status, body, {"Retry-After": "7"}) as podq, pytest.raises(APIError) as raised:
        podq.get("abc")
    assert type(raised.value) is cls
    assert raised.value.status_code == status and raised.value.error.message == "no"
    assert is_retryable(raised.value) is retryable
    if isinstance(raised.value, QueueFull | Unavailable):
        assert raised.value.retry_after == 7


def test_an_answer_not_in_the_error_shape_is_kept_as_text() -> None:
    with answering(502, "<html>bad gateway</html>") as podq, pytest.raises(ServerError) as raised:
        podq.get("abc")
    assert raised.value.error.error_type == "internal" and "bad gateway" in raised.value.error.message


def test_a_lost_submission_is_sent_again_with_the_same_key() -> None:
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) == 1:
            raise httpx.ConnectError("connection reset", request=request)
        body = json.loads(request.content)
        assert body == {"sql": "SELECT 1", "datasets": [{"table_name": "t", "url": "https://x/y.parquet"}]}
        return httpx.Response(202, json={**record("queued", None).raw, "sql": "SELECT 1"})

    with Client("http://podq.test", transport=httpx.MockTransport(handler)) as podq:
        podq.retries = 1
        assert podq.submit("SELECT 1", {"t": "https://x/y.parquet"}).status == "queued"
    assert len(keys) == 2 and keys[0] == keys[1] and len(keys[0]) == 32


def test_transport_errors_become_Unreachable_never_httpx() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    podq = Client("http://podq.test", retries=0, transport=httpx.MockTransport(handler))
    with podq, pytest.raises(Unreachable) as raised:
        podq.list()
    assert isinstance(raised.value.__cause__, httpx.ReadTimeout)


def test_the_client_imports_neither_the_server_nor_polars() -> None:
    code = (
        "import sys, podq.client; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'fastapi', 'starlette', 'uvicorn', 'polars', 'pyarrow', 'controller', 'worker_image',"
        " 'pydantic'}); "
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
