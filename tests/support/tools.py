"""External programs in tests (helm, promtool, Chromium, `python -m bench`): running one, finding one for a
session fixture, and marking the tests that need it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest


def run_tool(
    argv: Sequence[str],
    *,
    timeout: float,
    stdin: str | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a program to its end, its output captured as text; its exit code is the caller's to judge."""
    return subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env=None if env is None else dict(env),
    )


def run_ok(
    argv: Sequence[str],
    *,
    timeout: float,
    what: str,
    stderr_tail: int | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """The program's stdout; the test fails, naming it as `what` with its exit code and its stderr (the last
    `stderr_tail` characters of it, when given), when it exits non-zero."""
    done = run_tool(argv, timeout=timeout, cwd=cwd, env=env)
    stderr = done.stderr if stderr_tail is None else done.stderr[-stderr_tail:]
    assert done.returncode == 0, f"{what} exited {done.returncode}:\n{stderr}"
    return done.stdout


def executable_or_fail(path: str | None, missing: str) -> str:
    """`path` when it is an executable file; else the test fails with `missing` (it never skips)."""
    if not path or not os.access(path, os.X_OK):
        pytest.fail(missing, pytrace=False)
    return path


def mark_users(items: Sequence[pytest.Item], fixture: str, marker: pytest.MarkDecorator) -> None:
    """Every test that uses `fixture` gets `marker`: called from a plugin's ``tryfirst``
    ``pytest_collection_modifyitems``, before ``-m`` selects, so that a run without the tool can leave
    them out."""
    for item in items:
        if fixture in getattr(item, "fixturenames", ()):
            item.add_marker(marker)
