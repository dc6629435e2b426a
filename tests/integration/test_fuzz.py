"""Schemathesis against the OpenAPI document the real controller serves: whatever it is sent, valid or not,
no operation answers with a server error.

The controller runs with production settings (test hooks off) except its worker: `false` stands in for
`python -m worker_image`, so an accepted query fails at once as a crash instead of running. The HTTP
surface is what is fuzzed here; a real worker would only add minutes of CPU and would fetch whatever
dataset URLs the fuzzer invents, which must not leave this machine.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error

from controller.testing.process import ControllerProcess

pytestmark = pytest.mark.integration

# Examples per operation and generation mode: the module stays within about a minute on a 2-core host.
EXAMPLES = 200


@pytest.fixture(scope="module")
def served_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    directory = tmp_path_factory.mktemp("fuzz")
    stand_in = shutil.which("false")
    assert stand_in is not None
    controller = ControllerProcess(
        directory / "data", {"PODQ_WORKER_PYTHON": stand_in}, directory / "controller.log"
    )
    controller.start()
    yield schemathesis.openapi.from_url(f"{controller.url}/openapi.json")
    with httpx.Client(base_url=controller.url) as client:
        assert client.get("/healthz").status_code == 200, "the controller survived the fuzzing"
    controller.stop()
    log = Path(controller.log_path).read_text(errors="replace")
    assert "unhandled error" not in log, log[-4000:]


# Each operation is fuzzed on its own, so every one gets the same budget and every failing one is reported
# (schemathesis' pytest loader `from_fixture` does not run under pytest 9.2: it reads `Function._nodeid`).
@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
def test_FUZZ_1_no_operation_answers_with_a_server_error(
    served_schema: schemathesis.BaseSchema, mode: schemathesis.GenerationMode
) -> None:
    failures: dict[str, str] = {}
    fuzzed: list[str] = []
    calls = Counter[str]()
    operations = [result.ok() for result in served_schema.get_all_operations()]
    assert len(operations) >= 9, [op.label for op in operations]
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call_and_validate(checks=[not_a_server_error])
            calls[f"{case.operation.label} {response.status_code}"] += 1

        try:
            fuzz()
        except Unsatisfiable:
            # Negative mode on an operation with nothing to get wrong (no body, no constrained parameter).
            continue
        except Exception as exc:
            failures[operation.label] = str(exc)
        fuzzed.append(operation.label)
    print(f"\nFUZZ {mode}: {calls.total()} requests over {len(fuzzed)} operations: {sorted(calls.items())}")
    if mode is schemathesis.GenerationMode.POSITIVE:
        assert calls["POST /v1/queries 202"] > 0, "valid submissions were generated and accepted"
    assert {"POST /v1/queries", "POST /v1/inspections", "GET /v1/queries"} <= set(fuzzed)
    assert not failures, "\n\n".join(f"{label}:\n{message}" for label, message in failures.items())


def test_FUZZ_2_a_list_cursor_beyond_sqlite_integers_is_422_not_500(
    running_controller: ControllerProcess,
) -> None:
    """Found by FUZZ_1: `?cursor=` of 19+ digits overflowed SQLite's INTEGER in the page query."""
    with running_controller.client() as client:
        for cursor in ("9" * 19, "9223372036854775808", "1" + "0" * 40):
            response = client.get("/v1/queries", params={"cursor": cursor})
            assert response.status_code == 422, response.text
            assert response.json()["error_type"] == "validation"
        assert client.get("/v1/queries", params={"cursor": "9" * 18}).status_code == 200
