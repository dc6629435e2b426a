"""The Kubernetes API requests a controller made, counted by kind from its log (the launcher's client logs
every request at INFO as ``kubernetes API: <VERB> <path> ...``), for the requests-per-query figure that
turns ``PODQ_KUBE_QPS`` into a bound on pods per second."""

from __future__ import annotations

import re
from collections import Counter

# The kinds every query makes once its pod exists; watches, lists and node reads are shared.
PER_QUERY = ("create pod", "read log", "delete pod", "create event")
_REQUEST_LINE = re.compile(r"kubernetes API: (\w+) (/\S*)")


def request_kinds(log: str) -> dict[str, int]:
    kinds: Counter[str] = Counter()
    for method, path in _REQUEST_LINE.findall(log):
        if method == "WATCH":
            kinds["watch pods"] += 1
        elif method == "POST" and path.endswith("/pods"):
            kinds["create pod"] += 1
        elif method == "GET" and path.endswith("/log"):
            kinds["read log"] += 1
        elif method == "DELETE":
            kinds["delete pod"] += 1
        elif method == "POST" and path.endswith("/events"):
            kinds["create event"] += 1
        else:
            kinds[f"other ({method} {path.rsplit('/', 1)[-1]})"] += 1
    return dict(kinds)
