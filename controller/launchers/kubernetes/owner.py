"""The owner reference that ties worker pods to the controller's own service account.

A namespaced object is garbage-collected once all its owners are gone. Owned by the controller's
service account — which the Helm release creates and `helm uninstall` deletes, and which outlives
every upgrade — the worker pods go with the release, running ones included, and stay through upgrades,
when the next controller adopts them. Owners cannot be in another namespace, so this holds only while
the workers run in the controller's own namespace.

The service account's name and uid come from the controller's in-cluster token: a bound token's
``kubernetes.io`` claim names them. The claims are only read, not verified; it is the controller's own
token, and the API server, not this code, decides what the token may do.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from controller.launchers.kubernetes.client.config import KubeConfig


class OwnerError(Exception):
    """The token names no service account."""


@dataclass(frozen=True)
class ServiceAccountIdentity:
    namespace: str
    name: str
    uid: str

    def owner_reference(self) -> dict[str, Any]:
        # blockOwnerDeletion is left unset: setting it needs `update` on the owner's finalizers, which
        # the controller's Role does not grant, and nothing has to wait for the pods to go.
        return {"apiVersion": "v1", "kind": "ServiceAccount", "name": self.name, "uid": self.uid}


def identity_from_token(token: str) -> ServiceAccountIdentity:
    """The service account a bound service-account token (a JWT) was issued to."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise OwnerError("the service-account token is not a JWT")
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError) as exc:
        raise OwnerError(f"the service-account token's claims cannot be read: {exc}") from None
    kubernetes = claims.get("kubernetes.io") if isinstance(claims, dict) else None
    account = kubernetes.get("serviceaccount") if isinstance(kubernetes, dict) else None
    if not isinstance(kubernetes, dict) or not isinstance(account, dict):
        raise OwnerError(
            "the service-account token has no kubernetes.io/serviceaccount claim "
            "(a legacy secret-based token? bound tokens are the default since Kubernetes 1.22)"
        )
    fields = (kubernetes.get("namespace"), account.get("name"), account.get("uid"))
    if not all(isinstance(value, str) and value for value in fields):
        raise OwnerError("the service-account token's kubernetes.io claim lacks the namespace, name or uid")
    namespace, name, uid = (str(value) for value in fields)
    return ServiceAccountIdentity(namespace=namespace, name=name, uid=uid)


def service_account_owner(config: KubeConfig, namespace: str) -> dict[str, Any]:
    """The owner reference of the worker pods: the service account whose token the controller uses."""
    what = "PODQ_WORKER_OWNED_BY_SERVICE_ACCOUNT"
    if config.token_file is None:
        raise RuntimeError(f"{what} needs a service-account token file; {config.source} has none")
    try:
        identity = identity_from_token(config.token_file.read_text())
    except (OSError, OwnerError) as exc:
        raise RuntimeError(f"{what}: {exc}") from None
    if identity.namespace != namespace:
        raise RuntimeError(
            f"{what} needs the worker pods in the controller's namespace {identity.namespace!r} "
            f"(owners cannot be in another namespace), not {namespace!r}"
        )
    return identity.owner_reference()
