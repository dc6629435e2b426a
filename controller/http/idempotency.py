"""The `Idempotency-Key` header (draft-ietf-httpapi-idempotency-key-header): the key and the request's
fingerprint. Pure: the store decides, under its unique key, whether a key is new.

A key is an RFC 8941 sf-string (`"8e03978e-..."`, as the draft specifies) or the same text bare (as
Stripe's clients send it); both spellings are one key. It must be 1 to 255 printable ASCII characters.
"""

from __future__ import annotations

import hashlib
import json
import re

from pydantic import BaseModel

MAX_KEY_LENGTH = 255
_PRINTABLE = re.compile(r"[\x20-\x7e]+")


def _unquote(inner: str) -> str:
    """The content of an sf-string: `\\"` and `\\\\` are its only escapes, a bare `"` ends it."""
    chars = iter(inner)
    out: list[str] = []
    for char in chars:
        if char == "\\":
            escaped = next(chars, "")
            if escaped not in ('"', "\\"):
                raise ValueError('not a structured-field string: only \\" and \\\\ may be escaped')
            out.append(escaped)
        elif char == '"':
            raise ValueError('not a structured-field string: an unescaped " inside')
        else:
            out.append(char)
    return "".join(out)


def parse_key(header: str) -> str:
    """The key in an `Idempotency-Key` header value; ValueError says what is wrong with it."""
    key = header.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = _unquote(key[1:-1])
    if not key:
        raise ValueError("the key is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"the key is longer than {MAX_KEY_LENGTH} characters")
    if not _PRINTABLE.fullmatch(key):
        raise ValueError("the key may hold only printable ASCII characters")
    return key


def fingerprint(operation: str, body: BaseModel) -> str:
    """The request as parsed, so the same body spelt with other whitespace or key order is the same."""
    canonical = json.dumps(
        {"operation": operation, "body": body.model_dump(mode="json")}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
