"""The real controller, `python -m controller serve`, as a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from controller.models import TERMINAL

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ControllerProcess:
    """One `podq serve`; `start()` returns once /healthz answers, `kill()` is a kill -9."""

    def __init__(self, data_dir: Path, settings: Mapping[str, str], log_path: Path) -> None:
        self.data_dir = data_dir
        self.settings = dict(settings)
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        env = {
            **os.environ,
            "PODQ_DATA_DIR": str(self.data_dir),
            "PODQ_PORT": str(self.port),
            "PODQ_HOST": "127.0.0.1",
            "PODQ_LOG_LEVEL": "DEBUG",
            "PYTHONPATH": str(REPO_ROOT),
            **self.settings,
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "controller", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=1) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"controller exited with {self.process.returncode}: {self.log()}")
                try:
                    if client.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"controller not healthy after {timeout}s: {self.log()}")
                time.sleep(0.05)  # sleep-ok: polling interval of a deadline-bounded readiness probe

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """kill -9: no shutdown handlers run."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a service manager would send; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60), **kwargs)


def wait_finished(client: httpx.Client, location: str, timeout: float = 60) -> dict[str, Any]:
    """Long-poll a record until it is terminal."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        response = client.get(location, params={"wait": max(0.0, min(remaining, 30))})
        response.raise_for_status()
        record: dict[str, Any] = response.json()
        if record["status"] in TERMINAL:
            return record
        if remaining <= 0:
            raise TimeoutError(f"not finished within {timeout}s: {record}")


def wait_status(client: httpx.Client, location: str, status: str, timeout: float = 30) -> dict[str, Any]:
    """Poll a record until it reaches `status` (for non-terminal states the long poll cannot wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(location)
        response.raise_for_status()
        record: dict[str, Any] = response.json()
        if record["status"] == status:
            return record
        if record["status"] in TERMINAL:
            raise AssertionError(f"wanted {status}, but the query finished: {record}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {status} within {timeout}s: {record}")
        time.sleep(0.02)  # sleep-ok: polling interval of a deadline-bounded wait
