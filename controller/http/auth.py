"""Optional bearer-token auth: which tokens are valid (`middleware.BearerAuth` demands one).

Auth is on when `PODQ_API_TOKENS` lists a token or `PODQ_API_TOKENS_FILE` is set; an empty or emptied
file then admits no one (it never switches auth off). The file is re-read whenever its identity changes
(inode, size or mtime, looked at on each request), so a rotated Kubernetes Secret takes effect without a
restart. A token is compared as its SHA-256 digest with `hmac.compare_digest` against every configured
token, so neither its content nor its length shows in the timing. Tokens never reach a log line or the
store: a client is known downstream only by `client_scope`, a digest of its token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from controller.http.docs import ASSET_PATHS, PAGE_PATHS
from controller.settings import Settings

log = logging.getLogger(__name__)

# Always open: probes and the API's own description. /metrics is added unless PODQ_METRICS_REQUIRE_AUTH.
# The documentation pages come with their assets (controller/http/docs.py), served by podq itself.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"}) | PAGE_PATHS | ASSET_PATHS
METRICS_PATH = "/metrics"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def tokens_in(text: str) -> list[str]:
    """One token per line; surrounding whitespace and blank lines are ignored."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), else None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class TokenFile:
    """The token file, re-read when it changes; a failed re-read keeps the last good tokens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._identity = self._stat()
        self.digests = [_digest(t) for t in tokens_in(path.read_text())]

    def _stat(self) -> tuple[int, int, int]:
        stat = os.stat(self.path)  # follows the ..data symlink a Secret volume swaps on rotation
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def current(self) -> list[bytes]:
        try:
            identity = self._stat()
            if identity != self._identity:
                self.digests = [_digest(t) for t in tokens_in(self.path.read_text())]
                self._identity = identity
                log.info("re-read the API token file %s: %d tokens", self.path, len(self.digests))
        except OSError as exc:
            log.error("cannot re-read the API token file %s, keeping its last tokens: %s", self.path, exc)
        return self.digests


class Authenticator:
    """Knows the valid tokens; `identify` answers which client a presented token belongs to."""

    def __init__(self, tokens: Iterable[str], token_file: Path | None) -> None:
        self._static = [_digest(t) for t in tokens]
        self._file = TokenFile(token_file) if token_file is not None else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        return cls([t.get_secret_value() for t in settings.api_tokens], settings.api_tokens_file)

    @property
    def enabled(self) -> bool:
        return bool(self._static) or self._file is not None

    def identify(self, token: str) -> str | None:
        """The client scope (hex digest) of a valid token, else None. Looks at every token, always."""
        presented = _digest(token)
        candidates = self._static + (self._file.current() if self._file else [])
        found = False
        for digest in candidates:
            found |= hmac.compare_digest(presented, digest)
        return presented.hex() if found else None


def document(openapi: dict[str, Any], metrics_open: bool) -> dict[str, Any]:
    """Declare the bearer scheme in the OpenAPI document, on every operation that demands it."""
    openapi.setdefault("components", {}).setdefault("securitySchemes", {})["bearerAuth"] = {
        "type": "http",
        "scheme": "bearer",
    }
    open_paths = OPEN_PATHS | {METRICS_PATH} if metrics_open else OPEN_PATHS
    for path, operations in openapi.get("paths", {}).items():
        if path not in open_paths:
            for operation in operations.values():
                operation["security"] = [{"bearerAuth": []}]
                operation.setdefault("responses", {}).setdefault("401", {"description": "No valid token"})
    return openapi
