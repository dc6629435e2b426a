"""The fixture file server the worker tests rely on: its special routes, and a prompt stop."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from controller.testing.fileserver import FileServer

pytestmark = pytest.mark.integration


def test_routes_and_request_log(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    with FileServer(tmp_path) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/a.txt").text == "hello"
        assert client.get("/status/418").status_code == 418
        big = client.get("/big?bytes=200000")
        assert len(big.content) == 200_000 and "content-length" not in big.headers
        assert client.get("/big?bytes=10&content_length=10").headers["content-length"] == "10"
        redirected = client.get("/redirect?to=/a.txt", follow_redirects=True)
        assert redirected.text == "hello"
        dripped = client.get("/slow?seconds=0.3&drip=0.1")
        assert dripped.content == b"xxx"
        assert server.requests[:3] == ["/a.txt", "/status/418", "/big?bytes=200000"]
        assert server.requested("/redirect") and not server.requested("never")


def test_stop_ends_a_held_response_promptly(tmp_path: Path) -> None:
    server = FileServer(tmp_path)
    with httpx.stream("GET", f"{server.url}/slow?seconds=600", timeout=30) as response:
        assert response.status_code == 200  # headers are in, so the handler is now holding the response
        started = time.monotonic()
        server.stop()
        assert response.read() == b""
    assert time.monotonic() - started < 5
