"""`python -m bench --size smoke` still runs: its local sections (the Kubernetes one has its own e2e test).

Only that the tables come out filled with figures is checked; the figures themselves are not judged
(BENCHMARKS.md is where they are read). The engine section needs DuckDB, the `bench` extra, which
tests/run.sh installs.
"""

from __future__ import annotations

import os

import pytest

from tests.support.bench_run import assert_tables_filled, run_bench, section

pytestmark = pytest.mark.integration


def test_local_sections_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "PODQ_E2E_WORKER_IMAGE")}
    workdir = tmp_path_factory.mktemp("bench")
    markdown = run_bench("--workdir", str(workdir), env=env)
    assert "## 4. Kubernetes mode: not run" in markdown
    for heading in (
        "1. Worker engine",
        "2. Local launcher latency",
        "3. API and store",
        "5. Result downloads",
    ):
        assert_tables_filled(section(markdown, heading))
