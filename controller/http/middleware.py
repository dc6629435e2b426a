"""The ASGI middleware in front of every route: the body size cap and bearer-token auth (see `auth`)."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.http.auth import METRICS_PATH, OPEN_PATHS, Authenticator, bearer_token
from controller.http.errors import error_response
from worker_image.protocol import ErrorType

SCOPE_KEY = "podq_client_scope"


class BodySizeLimit:
    """Refuses a request body over `limit` bytes with 413, declared or streamed (chunked).

    The body is read here, before the app sees it, so the refusal never depends on how the app parses.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        buffered = iter(messages)

        async def replay() -> Message:
            return next(buffered, None) or await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            ErrorType.VALIDATION,
            f"request body is larger than {self.limit} bytes",
            {"max_body_bytes": self.limit},
        )
        await response(scope, receive, send)


def client_scope(scope: Scope) -> str:
    """Who sent the request, as the middleware recorded it: a token digest, or "" with auth off."""
    state: dict[str, Any] = scope.get("state", {})
    return str(state.get(SCOPE_KEY, ""))


class BearerAuth:
    """Refuses every request without a valid bearer token with 401, except on the open paths.

    Deny by default: a route added later is protected unless it is named open here. The check runs
    before the body is read, so a refused request costs no parsing and stores nothing.
    """

    def __init__(self, app: ASGIApp, authenticator: Authenticator, *, metrics_open: bool) -> None:
        self.app = app
        self.authenticator = authenticator
        self.open_paths = OPEN_PATHS | {METRICS_PATH} if metrics_open else OPEN_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization")
        token = bearer_token(header.decode("latin-1") if header is not None else None)
        client = None if token is None else self.authenticator.identify(token)
        if client is None:
            await self._refuse(scope, receive, send, missing=token is None)
            return
        scope.setdefault("state", {})[SCOPE_KEY] = client
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, *, missing: bool) -> None:
        # RFC 6750 section 3: no error code when credentials are absent, invalid_token when they are wrong.
        challenge = 'Bearer realm="podq"' if missing else 'Bearer realm="podq", error="invalid_token"'
        message = "a bearer token is required" if missing else "the bearer token is not valid"
        response = error_response(401, ErrorType.VALIDATION, message, headers={"WWW-Authenticate": challenge})
        await response(scope, receive, send)
