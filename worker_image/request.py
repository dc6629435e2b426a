"""Reads and checks the worker's request (`protocol.WorkerRequest`); a bad one is a `validation` error."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any, TypeGuard, cast

from worker_image.netpolicy import parse_networks
from worker_image.protocol import REQUEST_ENV, REQUEST_FD_ENV, ErrorType, WorkerError, WorkerRequest

DEFAULT_MAX_ROWS = 1000
# Below kubelet's default containerLogMaxSize (10 MiB): a pod log rotated mid-envelope loses the result.
DEFAULT_MAX_RESULT_BYTES = 8 * 2**20

_FETCH_FLOATS = ("connect_timeout_seconds", "read_timeout_seconds", "total_timeout_seconds")


def read_request(environ: Mapping[str, str]) -> str | None:
    """The raw request: `REQUEST_ENV`, else everything on the descriptor `REQUEST_FD_ENV` names."""
    if REQUEST_ENV in environ:
        return environ[REQUEST_ENV]
    fd = environ.get(REQUEST_FD_ENV, "")
    if not fd.isascii() or not fd.isdigit():
        return None
    try:
        with os.fdopen(int(fd), "rb") as pipe:
            return pipe.read().decode(errors="replace")
    except OSError as exc:
        raise _invalid(f"the request could not be read from descriptor {fd}: {exc}") from exc


def load_request(raw: str | None) -> WorkerRequest:
    if raw is None:
        raise _invalid(f"no request: neither {REQUEST_ENV} nor {REQUEST_FD_ENV} is set")
    try:
        request = json.loads(raw)
    except ValueError as exc:
        raise _invalid(f"the request is not valid JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise _invalid("the request must be a JSON object")
    _check_fetch(request.get("fetch"))
    operation = request.get("operation")
    if operation == "query":
        _check_query(request)
    elif operation == "inspect":
        _require_str(request, "url")
    else:
        raise _invalid(f"unknown operation {operation!r}; expected 'query' or 'inspect'")
    if "limits" in request:
        _check_limits(request["limits"])
    if "debug" in request and not isinstance(request["debug"], dict):
        raise _invalid("'debug' must be an object")
    return cast(WorkerRequest, request)


def _check_fetch(fetch: Any) -> None:
    if not isinstance(fetch, dict):
        raise _invalid("'fetch' must be an object with the download timeouts and size cap")
    for key in _FETCH_FLOATS:
        value = fetch.get(key)
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise _invalid(f"'fetch.{key}' must be a positive number")
    max_bytes = fetch.get("max_download_bytes")
    if not _is_int(max_bytes) or max_bytes <= 0:
        raise _invalid("'fetch.max_download_bytes' must be a positive integer")
    for key in ("allowed_networks", "blocked_networks"):
        networks = fetch.get(key, [])
        if not isinstance(networks, list) or not all(isinstance(value, str) for value in networks):
            raise _invalid(f"'fetch.{key}' must be a list of CIDR strings")
        try:
            parse_networks(networks)
        except ValueError as exc:
            raise _invalid(f"'fetch.{key}': {exc}") from None


def _check_limits(limits: Any) -> None:
    if not isinstance(limits, dict):
        raise _invalid("'limits' must be an object with 'memory_bytes'")
    memory = limits.get("memory_bytes")
    if not _is_int(memory) or memory <= 0:
        raise _invalid("'limits.memory_bytes' must be a positive integer")


def _check_query(request: dict[str, Any]) -> None:
    if not _require_str(request, "sql").strip():
        raise _invalid("'sql' is empty")
    datasets = request.get("datasets", [])
    if not isinstance(datasets, list):
        raise _invalid("'datasets' must be a list")
    for index, dataset in enumerate(datasets):
        if not isinstance(dataset, dict):
            raise _invalid(f"'datasets[{index}]' must be an object with 'url' and 'table_name'")
        _require_str(dataset, "url", f"datasets[{index}].url")
        _require_str(dataset, "table_name", f"datasets[{index}].table_name")
    max_rows = request.setdefault("max_rows", DEFAULT_MAX_ROWS)
    if not _is_int(max_rows) or max_rows < 1:
        raise _invalid("'max_rows' must be a positive integer")
    max_result_bytes = request.setdefault("max_result_bytes", DEFAULT_MAX_RESULT_BYTES)
    if not _is_int(max_result_bytes) or max_result_bytes < 1:
        raise _invalid("'max_result_bytes' must be a positive integer")


def _require_str(mapping: dict[str, Any], key: str, label: str | None = None) -> str:
    value = mapping.get(key)
    if not isinstance(value, str) or not value:
        raise _invalid(f"'{label or key}' must be a non-empty string")
    return value


# bool is an int subclass in Python; JSON true is not a number.
def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> TypeGuard[float]:
    return _is_int(value) or isinstance(value, float)


def _invalid(message: str) -> WorkerError:
    return WorkerError(ErrorType.VALIDATION, message)
