"""`python -m bench --size smoke` still runs: the local sections, as CI can afford them.

Only that the tables come out filled with figures is checked; the figures themselves are not judged
(BENCHMARKS.md is where they are read). The engine section needs DuckDB (the `bench` extra), which the test
tools do not install; the Kubernetes section has its own e2e smoke test.
"""

from __future__ import annotations

import os

import pytest

from tests.support.bench_run import assert_tables_filled, run_bench, section

pytestmark = pytest.mark.integration


def test_local_latency_and_api_sections_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "PODQ_E2E_WORKER_IMAGE")}
    workdir = tmp_path_factory.mktemp("bench")
    markdown = run_bench("--only", "latency", "--only", "api", "--workdir", str(workdir), env=env)
    assert "## 4. Kubernetes mode" not in markdown
    for heading in ("2. Local launcher latency", "3. API and store"):
        assert_tables_filled(section(markdown, heading))
