"""Bearer-token auth on the real controller over real HTTP: who gets in, what stays open, what is stored."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.testing.process import ControllerProcess, wait_finished
from tests.support.fixtures import CONTROLLER_DEFAULTS

pytestmark = pytest.mark.integration

StartController = Callable[..., ControllerProcess]

SETTING_TOKEN = "setting-token-7f3a9c"
FILE_TOKEN = "file-token-2b8e41"
WRONG_TOKEN = "wrong-token-d00d5e"
ALL_TOKENS = (SETTING_TOKEN, FILE_TOKEN, WRONG_TOKEN)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def auth_settings(token_file: Path, **more: object) -> dict[str, object]:
    return {"api_tokens": f'["{SETTING_TOKEN}"]', "api_tokens_file": token_file, **more}


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "tokens"
    path.write_text(f"\n{FILE_TOKEN}\n")
    return path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, token_file: Path) -> Iterator[ControllerProcess]:
    """One controller with auth on (a token from the setting, one from the file), metrics left open."""
    directory = tmp_path_factory.mktemp("secured")
    settings = {**CONTROLLER_DEFAULTS, **auth_settings(token_file)}
    env = {f"PODQ_{name.upper()}": str(value) for name, value in settings.items()}
    controller = ControllerProcess(directory / "data", env, directory / "controller.log")
    controller.start()
    yield controller
    controller.stop()
    log = controller.log_path.read_text(errors="replace")
    leaked = [t for t in ALL_TOKENS if t in log]
    assert not leaked, f"tokens in the controller log: {leaked}"


def all_queries(controller: ControllerProcess) -> list[dict[str, Any]]:
    with controller.client(headers=bearer(SETTING_TOKEN)) as client:
        response = client.get("/v1/queries", params={"limit": 500})
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


INVALID = 'Bearer realm="podq", error="invalid_token"'
REFUSED = [
    ("no header", {}, 'Bearer realm="podq"', "required"),
    ("wrong token", bearer(WRONG_TOKEN), INVALID, "not valid"),
    ("token as a prefix", bearer(SETTING_TOKEN[:-1]), INVALID, "not valid"),
    ("token with a suffix", bearer(SETTING_TOKEN + "x"), INVALID, "not valid"),
    ("Basic scheme", {"Authorization": f"Basic {SETTING_TOKEN}"}, 'Bearer realm="podq"', "required"),
    ("scheme without a token", {"Authorization": "Bearer"}, 'Bearer realm="podq"', "required"),
]
CALLS = [
    ("POST", "/v1/queries", {"sql": "SELECT 1 AS x"}),
    ("POST", "/v1/inspections", {"url": "http://127.0.0.1:9/x.parquet"}),
    ("GET", "/v1/queries", None),
    ("GET", "/v1/queries/nope", None),
    ("DELETE", "/v1/queries/nope", None),
    ("GET", "/v1/inspections/nope", None),
    ("GET", "/v1/not-a-route", None),
]


@pytest.mark.parametrize(
    ("headers", "challenge", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_AUTH_1_v1_without_a_valid_token_is_401_and_stores_nothing(
    secured: ControllerProcess, headers: dict[str, str], challenge: str, message: str
) -> None:
    before = all_queries(secured)
    with secured.client(headers=headers) as client:
        responses = [client.request(method, path, json=body) for method, path, body in CALLS]
    for (method, path, _), response in zip(CALLS, responses, strict=True):
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == challenge
        assert response.json() == {
            "error_type": "validation",
            "message": response.json()["message"],
            "details": {},
            "retryable": False,
        }
        assert message in response.json()["message"]
    assert all_queries(secured) == before, "a refused request must not create or change a query"


@pytest.mark.parametrize("token", [SETTING_TOKEN, FILE_TOKEN], ids=["from the setting", "from the file"])
def test_AUTH_2_a_valid_token_gets_in(secured: ControllerProcess, token: str) -> None:
    with secured.client(headers=bearer(token)) as client:
        response = client.post("/v1/queries", json={"sql": "SELECT 1 AS x"})
        assert response.status_code == 202, response.text
        record = wait_finished(client, response.headers["location"])
        lowercase = client.post(
            "/v1/queries", json={"sql": "SELECT 2 AS x"}, headers={"Authorization": f"bearer {token}"}
        )
    assert record["status"] == "succeeded"
    assert lowercase.status_code == 202, "the auth scheme is case-insensitive (RFC 9110 11.1)"


def test_AUTH_3_probes_docs_and_metrics_stay_open_by_default(secured: ControllerProcess) -> None:
    with secured.client() as client:
        statuses = {
            path: client.get(path).status_code for path in ("/healthz", "/readyz", "/metrics", "/docs")
        }
        openapi = client.get("/openapi.json").json()
    assert statuses == {"/healthz": 200, "/readyz": 200, "/metrics": 200, "/docs": 200}
    assert openapi["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    assert openapi["paths"]["/v1/queries"]["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in openapi["paths"]["/healthz"]["get"]


def test_AUTH_4_metrics_demand_a_token_when_the_setting_says_so(
    start_controller: StartController, token_file: Path
) -> None:
    controller = start_controller(**auth_settings(token_file, metrics_require_auth="true"))
    with controller.client() as client:
        anonymous = client.get("/metrics")
        wrong = client.get("/metrics", headers=bearer(WRONG_TOKEN))
        right = client.get("/metrics", headers=bearer(FILE_TOKEN))
        health = client.get("/healthz")
        ready = client.get("/readyz")
    assert anonymous.status_code == 401 and wrong.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert right.status_code == 200 and "podq_queue_depth" in right.text
    assert health.status_code == 200 and ready.status_code == 200


def test_AUTH_5_a_rotated_token_file_takes_effect_without_a_restart(
    start_controller: StartController, tmp_path: Path
) -> None:
    """The Secret volume's way: write the new file beside the old, then swap it in with one rename."""
    token_file = tmp_path / "tokens"
    token_file.write_text("before-rotation\n")
    controller = start_controller(api_tokens_file=token_file)
    with controller.client() as client:
        assert client.get("/v1/queries", headers=bearer("before-rotation")).status_code == 200
        assert client.get("/v1/queries", headers=bearer("after-rotation")).status_code == 401
        staged = tmp_path / "tokens.new"
        staged.write_text("after-rotation\n")
        os.replace(staged, token_file)
        assert client.get("/v1/queries", headers=bearer("after-rotation")).status_code == 200
        assert client.get("/v1/queries", headers=bearer("before-rotation")).status_code == 401
        token_file.write_text("")  # every token revoked: auth stays on and admits no one
        assert client.get("/v1/queries", headers=bearer("after-rotation")).status_code == 401
        assert client.get("/v1/queries").status_code == 401
        assert client.get("/healthz").status_code == 200


def test_AUTH_6_without_tokens_auth_is_off(running_controller: ControllerProcess) -> None:
    with running_controller.client() as client:
        response = client.post("/v1/queries", json={"sql": "SELECT 1 AS x"}, headers=bearer(WRONG_TOKEN))
        openapi = client.get("/openapi.json").json()
    assert response.status_code == 202, "with auth off a token is ignored, whatever it is"
    assert "securitySchemes" not in openapi.get("components", {})


def test_AUTH_7_a_missing_token_file_stops_the_controller_from_starting(
    start_controller: StartController, tmp_path: Path
) -> None:
    refusal = "refusing to start: PODQ_API_TOKENS_FILE: Path does not point to a file"
    with pytest.raises(RuntimeError, match=refusal):
        start_controller(api_tokens_file=tmp_path / "absent")


def test_AUTH_8_a_bad_token_gets_401_before_the_body_is_parsed(secured: ControllerProcess) -> None:
    with secured.client() as client:
        garbage = client.post(
            "/v1/queries",
            content=b'{"sql": ',
            headers={**bearer(WRONG_TOKEN), "content-type": "application/json"},
        )
    assert garbage.status_code == 401, "an unauthenticated caller learns nothing about the body's schema"


def test_AUTH_9_a_token_with_non_ascii_bytes_is_refused_not_a_crash(secured: ControllerProcess) -> None:
    with httpx.Client(base_url=secured.url) as client:
        response = client.get("/v1/queries", headers={"Authorization": b"Bearer \xff\xfe"})
    assert response.status_code == 401


def test_AUTH_10_podq_submit_sends_PODQ_TOKEN(secured: ControllerProcess) -> None:
    """The CLI against a controller with auth on: `$PODQ_TOKEN` gets in, no token is a 401 and exit 2
    (refused by the controller; 1 is kept for a query that failed)."""
    command = [sys.executable, "-m", "controller", "submit", "--url", secured.url, "--sql", "SELECT 1 AS x"]
    env = {k: v for k, v in os.environ.items() if k != "PODQ_TOKEN"}

    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    accepted = subprocess.run(
        [*command, "--wait"],
        capture_output=True,
        text=True,
        env={**env, "PODQ_TOKEN": FILE_TOKEN},
        timeout=60,
        check=False,
    )

    assert refused.returncode == 2 and "401" in refused.stderr, refused
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.splitlines() == ["x", "-", "1", "(1 rows)"]
