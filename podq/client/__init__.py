"""The podq controller's HTTP API as a Python client, sync (`Client`) and async (`AsyncClient`).

    from podq.client import Client, QueryFailed

    with Client("http://127.0.0.1:8000", token=None) as podq:
        record = podq.run("SELECT name, sum(value) AS total FROM t GROUP BY name",
                          {"t": "https://data.example.com/sales.parquet"}, memory="1Gi")
        print(record.result.rows)

Records are frozen dataclasses (`podq.client.records`); failures are one exception tree
(`podq.client.errors`, drawn in its docstring) that mirrors the API's error taxonomy. Only httpx is
needed: this package imports neither the controller's server nor polars.
"""

from podq.client.aio import AsyncClient
from podq.client.errors import (
    QUERY_ERRORS,
    APIError,
    BadRequest,
    Cancelled,
    Conflict,
    Evicted,
    ImageError,
    InternalError,
    InvalidQuery,
    NetworkError,
    NotFound,
    OutOfMemory,
    PodqError,
    QueryFailed,
    QueryTimeout,
    QueueFull,
    ServerError,
    SQLError,
    Unauthorized,
    Unavailable,
    Unreachable,
    Unschedulable,
    WaitTimeout,
    WorkerCrashed,
    is_retryable,
)
from podq.client.records import (
    TERMINAL,
    Attempt,
    Column,
    Dataset,
    ErrorInfo,
    InspectionResult,
    Limits,
    Page,
    QueryResult,
    Readiness,
    Record,
    ResultFile,
)
from podq.client.sync import DEFAULT_URL, Client

__all__ = [
    "DEFAULT_URL",
    "QUERY_ERRORS",
    "TERMINAL",
    "APIError",
    "AsyncClient",
    "Attempt",
    "BadRequest",
    "Cancelled",
    "Client",
    "Column",
    "Conflict",
    "Dataset",
    "ErrorInfo",
    "Evicted",
    "ImageError",
    "InspectionResult",
    "InternalError",
    "InvalidQuery",
    "Limits",
    "NetworkError",
    "NotFound",
    "OutOfMemory",
    "Page",
    "PodqError",
    "QueryFailed",
    "QueryResult",
    "QueryTimeout",
    "QueueFull",
    "Readiness",
    "Record",
    "ResultFile",
    "SQLError",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "Unschedulable",
    "WaitTimeout",
    "WorkerCrashed",
    "is_retryable",
]
