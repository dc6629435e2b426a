"""The worker pods' owner: the service account named by the controller's own bound token."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from controller.launchers.kubernetes.client.config import KubeConfig
from controller.launchers.kubernetes.owner import (
    OwnerError,
    ServiceAccountIdentity,
    identity_from_token,
    service_account_owner,
)

pytestmark = pytest.mark.unit

# The claims of a bound token as kube-apiserver 1.33 issues them to a pod (values changed).
CLAIMS = {
    "aud": ["https://kubernetes.default.svc"],
    "exp": 1795000000,
    "iss": "https://kubernetes.default.svc",
    "kubernetes.io": {
        "namespace": "analytics",
        "node": {"name": "node-1", "uid": "7d0c2c55-1111-4a8e-9a4c-1f6f9f3c0a01"},
        "pod": {"name": "podq-6d9f7c-abcde", "uid": "0b7e2f1a-2222-4d7e-8c9a-1b2c3d4e5f60"},
        "serviceaccount": {"name": "podq", "uid": "5a1f4c2e-3333-4b6d-9e8f-0a1b2c3d4e5f"},
        "warnafter": 1794000000,
    },
    "sub": "system:serviceaccount:analytics:podq",
}


def jwt(claims: Any, *, padded: bool = False) -> str:
    def part(value: Any) -> str:
        encoded = base64.urlsafe_b64encode(json.dumps(value).encode()).decode()
        return encoded if padded else encoded.rstrip("=")

    return f"{part({'alg': 'RS256', 'kid': 'k'})}.{part(claims)}.c2lnbmF0dXJl"


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_identity_of_a_bound_token(padded: bool) -> None:
    assert identity_from_token(jwt(CLAIMS, padded=padded) + "\n") == ServiceAccountIdentity(
        namespace="analytics", name="podq", uid="5a1f4c2e-3333-4b6d-9e8f-0a1b2c3d4e5f"
    )


def test_owner_reference_names_the_account_by_uid() -> None:
    identity = ServiceAccountIdentity(namespace="analytics", name="podq", uid="u-1")
    assert identity.owner_reference() == {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "name": "podq",
        "uid": "u-1",
    }


LEGACY = {"iss": "kubernetes/serviceaccount", "kubernetes.io/serviceaccount/namespace": "analytics"}


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("not-a-jwt", "not a JWT"),
        ("a.b.c.d", "not a JWT"),
        ("aGVhZA.!!!.c2ln", "cannot be read"),
        (jwt("a string"), "no kubernetes.io/serviceaccount claim"),
        (jwt(LEGACY), "no kubernetes.io/serviceaccount claim"),
        (jwt({"kubernetes.io": {"namespace": "analytics"}}), "no kubernetes.io/serviceaccount claim"),
        (jwt({"kubernetes.io": {"namespace": "analytics", "serviceaccount": {"name": "podq"}}}), "lacks"),
        (jwt({"kubernetes.io": {"serviceaccount": {"name": "podq", "uid": "u"}}}), "lacks"),
    ],
    ids=[
        "one-part",
        "four-parts",
        "bad-base64",
        "claims-not-object",
        "legacy",
        "no-account",
        "no-uid",
        "no-ns",
    ],
)
def test_a_token_naming_no_service_account_is_refused(token: str, message: str) -> None:
    with pytest.raises(OwnerError, match=message):
        identity_from_token(token)


def token_config(tmp_path: Path, token: str) -> KubeConfig:
    path = tmp_path / "token"
    path.write_text(token)
    return KubeConfig(None, token_file=path, source="in-cluster service account")


def test_launcher_owner_in_the_controllers_namespace(tmp_path: Path) -> None:
    owner = service_account_owner(token_config(tmp_path, jwt(CLAIMS)), "analytics")
    assert owner["uid"] == "5a1f4c2e-3333-4b6d-9e8f-0a1b2c3d4e5f"


def test_launcher_refuses_an_owner_in_another_namespace(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"controller's namespace 'analytics'.*not 'workers'"):
        service_account_owner(token_config(tmp_path, jwt(CLAIMS)), "workers")


def test_launcher_refuses_an_owner_without_a_token_file() -> None:
    config = KubeConfig(None, source="kubeconfig /k (context c)")
    with pytest.raises(RuntimeError, match="needs a service-account token file; kubeconfig /k"):
        service_account_owner(config, "analytics")


def test_launcher_names_the_setting_when_the_token_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"PODQ_WORKER_OWNED_BY_SERVICE_ACCOUNT: .*not a JWT"):
        service_account_owner(token_config(tmp_path, "opaque"), "analytics")
