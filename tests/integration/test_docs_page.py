"""`/docs` as a browser shows it: headless Chromium opens the page of a real `podq serve`, Swagger UI (served
by the controller itself, controller/http/docs.py) fetches /openapi.json and renders it, and every
operation of the API is listed, with auth off and on (the page and its assets stay open)."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from controller.testing.process import ControllerProcess
from tests.support.browser import Chromium

pytestmark = pytest.mark.integration

StartController = Callable[..., ControllerProcess]
METHODS = ("get", "post", "put", "patch", "delete")


def operations(url: str) -> set[tuple[str, str]]:
    paths = httpx.get(f"{url}/openapi.json", timeout=30).json()["paths"]
    return {(method, path) for path, item in paths.items() for method in item if method in METHODS}


def listed(dom: str) -> set[tuple[str, str]]:
    """(method, path) of every operation block Swagger UI rendered."""
    found = set()
    for block in re.finditer(r'<div class="opblock opblock-(\w+)[^"]*"[^>]*>(.*?)</button>', dom, re.DOTALL):
        path = re.search(r'data-path="([^"]+)"', block.group(2))
        if path:
            found.add((block.group(1), html.unescape(path.group(1))))
    return found


@pytest.mark.parametrize("auth", [False, True], ids=["open", "with-auth"])
def test_docs_lists_every_operation(
    chromium: Chromium, start_controller: StartController, tmp_path: Path, auth: bool
) -> None:
    settings: dict[str, str] = {}
    if auth:
        tokens = tmp_path / "tokens"
        tokens.write_text("docs-test-token\n")
        settings["api_tokens_file"] = str(tokens)
    controller = start_controller(**settings)
    page = httpx.get(f"{controller.url}/docs", timeout=30).text
    # Nothing from a CDN: the page's scripts and stylesheet are the controller's own.
    assert "cdn" not in page and 'src="/docs/assets/swagger-ui-bundle.js"' in page
    expected = operations(controller.url)
    assert ("get", "/v1/queries/{query_id}/result") in expected and len(expected) >= 10
    dom = chromium.dump_dom(f"{controller.url}/docs")
    assert 'class="swagger-ui"' in dom, dom[:2000]
    assert listed(dom) == expected, f"missing: {expected - listed(dom)}; extra: {listed(dom) - expected}"
    assert "podq API" in dom
