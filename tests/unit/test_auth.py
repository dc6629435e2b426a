"""Which tokens are valid: the Authorization header, static tokens, and the token file as it rotates."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from controller.http.auth import Authenticator, bearer_token, tokens_in
from controller.settings import Settings

pytestmark = pytest.mark.unit

HEADERS = [
    ("bearer", "Bearer abc", "abc"),
    ("scheme is case-insensitive", "bearer abc", "abc"),
    ("extra spaces", "  Bearer   abc  ", "abc"),
    ("absent", None, None),
    ("empty", "", None),
    ("scheme only", "Bearer", None),
    ("scheme and blank", "Bearer   ", None),
    ("basic auth", "Basic YWxhZGRpbjpvcGVuc2VzYW1l", None),
    ("bare token", "abc", None),
]


@pytest.mark.parametrize(("header", "token"), [c[1:] for c in HEADERS], ids=[c[0] for c in HEADERS])
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_token_file_lines() -> None:
    assert tokens_in("a\n\n  b  \r\n\t\nc") == ["a", "b", "c"]


def test_no_tokens_is_auth_off_and_a_set_file_is_auth_on_even_empty(tmp_path: Path) -> None:
    empty = tmp_path / "tokens"
    empty.write_text("\n")
    assert not Authenticator([], None).enabled
    with_file = Authenticator([], empty)
    assert with_file.enabled
    assert with_file.identify("") is None
    assert with_file.identify("anything") is None


def test_every_configured_token_is_valid_and_only_those(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("from-file\n")
    auth = Authenticator(["one", "two"], token_file)
    scopes = [auth.identify(t) for t in ("one", "two", "from-file")]
    assert None not in scopes and len(set(scopes)) == 3, "each token is a client of its own"
    assert auth.identify("one") == scopes[0], "a client's scope is stable"
    for wrong in ("on", "one ", "ONE", "onetwo", "x" * 1000, ""):
        assert auth.identify(wrong) is None, wrong


def test_scope_does_not_contain_the_token() -> None:
    scope = Authenticator(["s3cr3t-token"], None).identify("s3cr3t-token")
    assert scope is not None and "s3cr3t" not in scope


def test_a_rotated_token_file_is_re_read(tmp_path: Path) -> None:
    """A Secret volume swaps a symlink to a new file: the old token stops working, the new one starts."""
    first, second, link = tmp_path / "v1", tmp_path / "v2", tmp_path / "tokens"
    first.write_text("old\n")
    second.write_text("new\n")
    link.symlink_to(first)
    auth = Authenticator([], link)
    assert auth.identify("old") and not auth.identify("new")
    tmp_link = tmp_path / "tokens.tmp"
    tmp_link.symlink_to(second)
    os.replace(tmp_link, link)
    assert auth.identify("new") and not auth.identify("old")


def test_an_unreadable_token_file_keeps_the_last_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("kept\n")
    auth = Authenticator([], token_file)
    token_file.unlink()
    with caplog.at_level(logging.ERROR, logger="controller.http.auth"):
        assert auth.identify("kept")
    assert "cannot re-read" in caplog.text
    assert "kept" not in caplog.text


def test_settings_read_tokens_as_a_json_list_and_hide_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODQ_API_TOKENS", '["tok-a", "tok-b"]')
    settings = Settings()
    assert [t.get_secret_value() for t in settings.api_tokens] == ["tok-a", "tok-b"]
    assert "tok-a" not in repr(settings) and "tok-a" not in str(settings.model_dump())
    assert Authenticator.from_settings(settings).identify("tok-b")


def test_a_missing_token_file_is_a_settings_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODQ_API_TOKENS_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="api_tokens_file"):
        Settings()
