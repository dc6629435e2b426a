"""promtool, Prometheus' own checker, for the tests of /metrics and the chart's alerts (loaded by
tests/conftest.py).

`promtool`: ``PODQ_PROMTOOL``, else ``promtool`` on PATH (Debian's `prometheus` package, which tests/run.sh
installs when it can); a test that asks for it fails, never skips, when there is none. Every test using the
fixture is marked ``promtool``, which is how a run without it leaves those tests out, loudly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.tools import executable_or_fail, mark_users, run_tool

PROMTOOL_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class Promtool:
    path: str

    def run(
        self, *args: str, stdin: str | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_tool([self.path, *args], timeout=PROMTOOL_TIMEOUT_SECONDS, stdin=stdin, cwd=cwd)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses `promtool` is marked ``promtool``, before ``-m`` selects."""
    mark_users(items, "promtool", pytest.mark.promtool)


@pytest.fixture(scope="session")
def promtool() -> Promtool:
    configured = os.environ.get("PODQ_PROMTOOL") or shutil.which("promtool")
    missing = (
        "these tests need promtool: apt-get install prometheus (tests/run.sh does) or set PODQ_PROMTOOL; "
        "without it deselect them with -m 'not promtool'"
    )
    return Promtool(executable_or_fail(configured, missing))
