"""What the local launcher reads from /proc (controller/launchers/local/procfs.py), on real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from controller.launchers.local.procfs import session_members, start_time
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

# Starts a second process in its own session, says its pid, and both live until stdin closes.
LEADER = (
    "import subprocess, sys\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'])\n"
    "print(child.pid, flush=True)\n"
    "sys.stdin.read()\n"
    "child.wait()\n"
)


def test_a_session_lists_its_live_processes_and_not_its_zombies(tmp_path: Path) -> None:
    # A command name with spaces and parentheses, which a naive split of the stat line gets wrong.
    python = tmp_path / "a) b (c"
    python.symlink_to(sys.executable)
    leader = subprocess.Popen(
        [str(python), "-c", LEADER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert leader.stdin is not None and leader.stdout is not None
    with leader.stdout:
        child = int(leader.stdout.readline())
    try:
        assert sorted(session_members(leader.pid)) == sorted([leader.pid, child])
        assert start_time(leader.pid) is not None
        assert session_members(-1) == []
    finally:
        leader.stdin.close()
    # Not reaped yet: the leader is a zombie, which no longer counts.
    wait_until(lambda: session_members(leader.pid) == [], "the session to empty")
    assert leader.wait(timeout=10) == 0
    assert start_time(leader.pid) is None
