"""Asking the API server what a service account may do (``kubectl auth can-i``), as that account with the
groups its token carries, so the answer is the authorizer's own, not a reading of the Role."""

from __future__ import annotations

import subprocess
from typing import NamedTuple

KUBECTL_TIMEOUT_SECONDS = 60


class Account(NamedTuple):
    namespace: str
    name: str


def can_i(account: Account, verb: str, resource: str, namespace: str | None, subresource: str = "") -> bool:
    """Whether the service account may do this (in every namespace at once when `namespace` is None)."""
    args = [
        "kubectl",
        "auth",
        "can-i",
        verb,
        resource,
        f"--as=system:serviceaccount:{account.namespace}:{account.name}",
        "--as-group=system:serviceaccounts",
        f"--as-group=system:serviceaccounts:{account.namespace}",
        "--as-group=system:authenticated",
    ]
    args.append("--all-namespaces" if namespace is None else f"--namespace={namespace}")
    if subresource:
        args.append(f"--subresource={subresource}")
    done = subprocess.run(args, capture_output=True, text=True, timeout=KUBECTL_TIMEOUT_SECONDS, check=False)
    answer = done.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i: {done.returncode} {answer!r} {done.stderr.strip()}"
    return answer == "yes"
