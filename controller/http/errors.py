"""Every HTTP failure answers in the error taxonomy's shape, never with a stack trace."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.queue.admission import Rejected
from controller.queue.store import KeyReused, StoreUnavailable
from worker_image.protocol import ErrorType, error_info

log = logging.getLogger(__name__)


def error_response(
    status_code: int,
    error_type: ErrorType,
    message: str,
    details: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = error_info(error_type, message, details, retryable=status_code in (429, 503))
    return JSONResponse(body, status_code=status_code, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": _field(e["loc"]), "message": e["msg"]} for e in exc.errors()]
    if any(e["type"] == "json_invalid" for e in exc.errors()):
        return error_response(400, ErrorType.VALIDATION, "request body is not valid JSON", {"errors": errors})
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return error_response(422, ErrorType.VALIDATION, summary, {"errors": errors})


async def _rejected(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Rejected)
    return error_response(
        422,
        ErrorType.VALIDATION,
        f"{exc.field}: {exc.message}",
        {"errors": [{"field": exc.field, "message": exc.message}]},
    )


async def _key_reused(_: Request, exc: Exception) -> JSONResponse:
    # 422, not 409: draft-ietf-httpapi-idempotency-key-header keeps 409 for a retry racing the original.
    assert isinstance(exc, KeyReused)
    return error_response(
        422,
        ErrorType.VALIDATION,
        "Idempotency-Key: this key was first used with a different request; use a new key for a new request",
        {"errors": [{"field": "Idempotency-Key", "message": "already used with a different request"}]},
    )


# How long a client should wait before retrying a submission the store could not take.
STORE_RETRY_AFTER_SECONDS = 5


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoreUnavailable)
    log.error("store cannot write, %s %s answered 503: %s", request.method, request.url.path, exc)
    return error_response(
        503,
        ErrorType.INTERNAL,
        f"the store cannot write just now ({exc}); nothing was stored, retry later",
        {"cause": str(exc)},
        headers={"Retry-After": str(STORE_RETRY_AFTER_SECONDS)},
    )


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, ErrorType.VALIDATION, str(exc.detail), headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, ErrorType.INTERNAL, "internal error; see the controller log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(Rejected, _rejected)
    app.add_exception_handler(KeyReused, _key_reused)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
