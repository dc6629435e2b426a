"""Headless Chromium, for the test that opens the API's documentation page as a browser does (loaded by
tests/conftest.py).

`chromium`: ``PODQ_CHROMIUM``, else ``chromium`` (Debian's package, which tests/run.sh installs when it
can) or ``chromium-browser`` / ``google-chrome`` on PATH; a test that asks for it fails, never skips, when
there is none. Every test using the fixture is marked ``browser``, which is how a run without it leaves
those tests out, loudly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import pytest

CHROMIUM_TIMEOUT_SECONDS = 120
# Virtual time the page's scripts get before the DOM is dumped: Swagger UI fetches /openapi.json and
# renders it well within this, and virtual time does not pass while a request is pending.
SCRIPT_BUDGET_MS = 30_000


@dataclass(frozen=True)
class Chromium:
    path: str

    def dump_dom(self, url: str) -> str:
        """The page's DOM after its scripts ran, as ``chromium --headless --dump-dom`` prints it."""
        with tempfile.TemporaryDirectory(prefix="podq-chromium-") as profile:
            done = subprocess.run(
                [
                    self.path,
                    "--headless",
                    # As root (the CI machine) Chromium refuses to start with its sandbox.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    f"--user-data-dir={profile}",
                    f"--virtual-time-budget={SCRIPT_BUDGET_MS}",
                    "--dump-dom",
                    url,
                ],
                capture_output=True,
                text=True,
                timeout=CHROMIUM_TIMEOUT_SECONDS,
                check=False,
            )
        assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
        return done.stdout


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses `chromium` is marked ``browser``, before ``-m`` selects."""
    for item in items:
        if "chromium" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


def _find() -> str | None:
    configured = os.environ.get("PODQ_CHROMIUM")
    if configured:
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="session")
def chromium() -> Chromium:
    path = _find()
    if not path or not os.access(path, os.X_OK):
        pytest.fail(
            "these tests need Chromium: apt-get install chromium (tests/run.sh does) or set PODQ_CHROMIUM; "
            "without it deselect them with -m 'not browser'",
            pytrace=False,
        )
    return Chromium(path)
