"""SSRF: the worker (a real subprocess) against real local servers under the fetch address policy.

Each refusal is proven to happen before any connection: the server that would have answered records
every request, and the refused path never appears there. Loopback stands in for the internal network;
the servers on 127.0.0.1 and 127.0.0.2 play an allowed and a blocked host.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.testing.fileserver import FileServer
from controller.testing.process import ControllerProcess, wait_finished
from tests.support.fixtures import RunWorker, fetch_options, inspect_request
from tests.support.parquet_files import generate
from worker_image.fetch import fetch_all
from worker_image.protocol import EXIT_USER_ERROR, WorkerError

pytestmark = pytest.mark.integration

NOTHING_ALLOWED: dict[str, Any] = {"allowed_networks": []}
ONLY_FIRST_HOST: dict[str, Any] = {"allowed_networks": ["127.0.0.1/32"]}


def refused(run: Any, address_class: str) -> dict[str, Any]:
    assert run.exit_code == EXIT_USER_ERROR, run.stderr
    assert run.envelope is not None and run.envelope["ok"] is False, run.stdout
    error: dict[str, Any] = run.envelope["error"]
    assert error["error_type"] == "validation", error
    assert error["retryable"] is False
    assert error["details"]["address_class"] == address_class, error
    assert address_class in error["message"]
    return error


def probe() -> str:
    return f"never-fetched-{uuid.uuid4().hex}.parquet"


@pytest.fixture(scope="module")
def second_host(parquet_dir: Path) -> Iterator[FileServer]:
    """The fixture files again, on 127.0.0.2: a host that is only reachable if the policy allows it."""
    with FileServer(parquet_dir, host="127.0.0.2") as server:
        yield server


def port_of(server: FileServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    ("spelling", "address_class"),
    [
        ("127.0.0.1", "loopback"),
        ("127.0.0.1.", "loopback"),
        ("2130706433", "loopback"),
        ("0x7f000001", "loopback"),
        ("0177.0.0.1", "loopback"),
        ("127.1", "loopback"),
        ("localhost", "loopback"),
        ("[::ffff:127.0.0.1]", "IPv4-mapped IPv6 (127.0.0.1: loopback)"),
    ],
)
def test_loopback_in_any_spelling_is_refused_before_connecting(
    run_worker: RunWorker, http_file_server: FileServer, spelling: str, address_class: str
) -> None:
    path = probe()
    url = f"http://{spelling}:{port_of(http_file_server)}/{path}"
    error = refused(run_worker(inspect_request(url, **NOTHING_ALLOWED)), address_class)
    assert error["details"]["address"] in ("127.0.0.1", "::ffff:7f00:1")
    assert not http_file_server.requested(path)


@pytest.mark.parametrize("spelling", ["2130706433", "0x7f.1", "127.0.0.1.", "localhost"])
def test_an_allowed_address_is_reached_in_any_spelling(
    run_worker: RunWorker, http_file_server: FileServer, spelling: str
) -> None:
    path = f"simple.parquet?{uuid.uuid4().hex}"
    # ::1 too: "localhost" may also resolve to it, and one refused answer refuses the name.
    policy = {"allowed_networks": ["127.0.0.1/32", "::1/128"]}
    run = run_worker(inspect_request(f"http://{spelling}:{port_of(http_file_server)}/{path}", **policy))
    assert run.envelope is not None and run.envelope["ok"] is True, run.stdout
    assert http_file_server.requested(path)


@pytest.mark.parametrize(
    "spelling",
    [
        "169.254.169.254",
        "2852039166",
        "0xa9fea9fe",
        "0251.0376.0251.0376",
        "169.254.43518",
        "169.254.169.254.",
    ],
)
def test_the_metadata_address_is_refused_in_any_spelling(run_worker: RunWorker, spelling: str) -> None:
    # Nothing listens there; a connection attempt would end as a `network` timeout, not this.
    error = refused(
        run_worker(inspect_request(f"http://{spelling}/latest/meta-data/", **ONLY_FIRST_HOST)),
        "link-local (cloud metadata)",
    )
    assert error["details"]["address"] == "169.254.169.254"


def test_the_mapped_metadata_address_is_refused(run_worker: RunWorker) -> None:
    refused(
        run_worker(inspect_request("http://[::ffff:169.254.169.254]/latest/", **ONLY_FIRST_HOST)),
        "IPv4-mapped IPv6 (169.254.169.254: link-local (cloud metadata))",
    )


def test_a_redirect_to_a_blocked_host_is_refused_before_connecting(
    run_worker: RunWorker, http_file_server: FileServer, second_host: FileServer
) -> None:
    path = probe()
    url = f"{http_file_server.url}/redirect?to={second_host.url}/{path}"
    error = refused(run_worker(inspect_request(url, **ONLY_FIRST_HOST)), "loopback")
    assert error["details"]["address"] == "127.0.0.2"
    assert http_file_server.requested(f"/redirect?to={second_host.url}/{path}")
    assert not second_host.requested(path)


def test_the_blocked_list_wins_over_the_allowed_list(run_worker: RunWorker, second_host: FileServer) -> None:
    path = probe()
    policy = {"allowed_networks": ["127.0.0.0/8"], "blocked_networks": ["127.0.0.2/32"]}
    refused(
        run_worker(inspect_request(f"{second_host.url}/{path}", **policy)),
        "blocked network (PODQ_FETCH_BLOCKED_NETWORKS)",
    )
    assert not second_host.requested(path)


def test_credentials_in_a_url_are_refused_and_never_echoed(
    run_worker: RunWorker, http_file_server: FileServer
) -> None:
    path = probe()
    url = http_file_server.url.replace("http://", "http://reader:hunter2@") + f"/{path}"
    run = run_worker(inspect_request(url))
    assert run.envelope is not None and run.envelope["ok"] is False
    assert run.envelope["error"]["error_type"] == "validation"
    assert "must not carry a user name or password" in run.envelope["error"]["message"]
    assert "hunter2" not in run.stdout + run.stderr
    assert not http_file_server.requested(path)


# ---------------------------------------------------------------- content encoding and the size cap


def test_a_gzip_bomb_is_capped_on_its_decoded_size(
    run_worker: RunWorker, http_file_server: FileServer
) -> None:
    # 200 MiB of zeros compress to some 200 KiB, under the cap: only counting decoded bytes stops it.
    url = f"{http_file_server.url}/gzip?bytes={200 * 2**20}"
    run = run_worker(inspect_request(url, max_download_bytes=2**20))
    assert run.envelope is not None and run.envelope["ok"] is False, run.stdout
    error = run.envelope["error"]
    assert error["error_type"] == "network"
    assert error["message"] == f"download too large: {url} sent more than the limit of {2**20} bytes"
    assert error["retryable"] is False


def test_a_gzip_encoded_dataset_is_decoded(run_worker: RunWorker, http_file_server: FileServer) -> None:
    run = run_worker(inspect_request(f"{http_file_server.url}/gzip?file=simple.parquet"))
    assert run.envelope is not None and run.envelope["ok"] is True, run.stdout
    assert run.envelope["result"]["row_count"] == 10


def test_an_encoding_not_asked_for_is_refused(run_worker: RunWorker, http_file_server: FileServer) -> None:
    url = f"{http_file_server.url}/gzip?file=simple.parquet&encoding=br"
    run = run_worker(inspect_request(url))
    assert run.envelope is not None and run.envelope["ok"] is False, run.stdout
    assert run.envelope["error"]["error_type"] == "network"
    assert run.envelope["error"]["message"].startswith("unsupported Content-Encoding 'br'")


# ---------------------------------------------------------------- DNS rebinding (in process)


@pytest.fixture
def rebinding_servers(tmp_path: Path) -> Iterator[tuple[FileServer, FileServer]]:
    """The same port on 127.0.0.1 (allowed) and 127.0.0.2 (blocked), so an answer's port cannot tell."""
    generate(tmp_path)
    first = FileServer(tmp_path)
    try:
        second = FileServer(tmp_path, host="127.0.0.2", port=port_of(first))
    except OSError:
        first.stop()
        raise
    with first, second:
        yield first, second


def test_the_connection_goes_to_the_address_that_was_checked(
    monkeypatch: pytest.MonkeyPatch, rebinding_servers: tuple[FileServer, FileServer], tmp_path: Path
) -> None:
    """A name whose first answer is allowed and every later one is not (DNS rebinding): the worker looks
    it up once and connects to that answer; a second lookup would reach the blocked server."""
    allowed, blocked = rebinding_servers
    answers: list[str] = []
    real_getaddrinfo = asyncio.base_events.BaseEventLoop.getaddrinfo

    async def rebinding(self: asyncio.AbstractEventLoop, host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.podq.test":
            return await real_getaddrinfo(self, host, *args, **kwargs)  # type: ignore[arg-type]
        answers.append("127.0.0.1" if not answers else "127.0.0.2")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[-1], port_of(allowed)))]

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", rebinding)
    path = f"simple.parquet?{uuid.uuid4().hex}"
    url = f"http://rebind.podq.test:{port_of(allowed)}/{path}"
    [downloaded] = fetch_all([url], fetch_options(**ONLY_FIRST_HOST), tmp_path)  # type: ignore[arg-type]
    assert downloaded.read_bytes().startswith(b"PAR1")
    assert answers == ["127.0.0.1"]
    assert allowed.requested(path)
    assert not blocked.requested(path)


def test_a_name_with_any_blocked_answer_is_refused(
    monkeypatch: pytest.MonkeyPatch, http_file_server: FileServer, tmp_path: Path
) -> None:
    async def mixed(self: asyncio.AbstractEventLoop, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port)),
        ]

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", mixed)
    path = probe()
    url = f"http://mixed.podq.test:{port_of(http_file_server)}/{path}"
    with pytest.raises(WorkerError) as caught:
        fetch_all([url], fetch_options(**ONLY_FIRST_HOST), tmp_path)  # type: ignore[arg-type]
    assert caught.value.details["address_class"] == "private"
    assert caught.value.message.startswith("refused to fetch from mixed.podq.test (10.0.0.1): private")
    assert not http_file_server.requested(path)


# ---------------------------------------------------------------- through the controller


def test_the_controller_policy_reaches_the_worker(
    start_controller: Callable[..., ControllerProcess], http_file_server: FileServer
) -> None:
    """Default settings: a name is admitted unresolved, and the worker refuses the loopback it resolves to."""
    path = probe()
    controller = start_controller(fetch_allowed_networks="[]")
    with controller.client() as client:
        response = client.post(
            "/v1/inspections", json={"url": f"http://localhost:{port_of(http_file_server)}/{path}"}
        )
        assert response.status_code == 202, response.text
        record = wait_finished(client, response.headers["location"])
    assert record["status"] == "failed"
    assert record["error"]["error_type"] == "validation"
    assert record["error"]["details"]["address_class"] == "loopback"
    assert not http_file_server.requested(path)
