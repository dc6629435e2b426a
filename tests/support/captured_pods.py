"""The pods under tests/unit/pods/: captured with `kubectl get pod -o json` on the e2e cluster (v1.33) and
stripped to what classification reads, or hand-written from the Kubernetes source where the state cannot
be produced safely there (each such file's `_comment` says so)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PODS = Path(__file__).parent.parent / "unit" / "pods"


def load(name: str) -> dict[str, Any]:
    """The captured pod `name` (a file stem under PODS), as the API server returns it."""
    pod: dict[str, Any] = json.loads((PODS / f"{name}.json").read_text())
    return pod
