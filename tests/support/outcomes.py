"""What the launchers' classification tables expect of an outcome: the local launcher's worker ends
(tests/unit/test_local_outcome.py) and the Kubernetes launcher's pod fates (tests/unit/test_pod_fate.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from controller.launchers.base import Outcome

# The one-row result the tables' workers report in their envelope.
RESULT = {"columns": [{"name": "n", "type": "Int64"}], "rows": [[1]], "total_rows": 1, "truncated": False}


def assert_typed_error(error: Mapping[str, Any], error_type: str, details: Mapping[str, Any]) -> None:
    """An error in the API's shape: this type, a message, `details` among its details, JSON all through."""
    assert error["error_type"] == error_type
    assert error["message"]
    assert details.items() <= error["details"].items()
    json.dumps(error)


def assert_outcome(outcome: Outcome, expected: str, details: Mapping[str, Any]) -> None:
    """`expected` is "result" (RESULT, no error) or the error type the outcome fails with (and no result)."""
    if expected == "result":
        assert outcome.error is None
        assert outcome.result == RESULT
        return
    assert outcome.result is None
    assert outcome.error is not None
    assert_typed_error(outcome.error, expected, details)
