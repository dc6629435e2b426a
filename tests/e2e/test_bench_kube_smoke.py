"""`python -m bench --size smoke --only kube` still runs against the cluster, and leaves nothing behind.

Only that its tables come out filled is checked, never a figure (BENCHMARKS.md is where they are read).
"""

from __future__ import annotations

import pytest

from tests.support.bench_run import assert_tables_filled, run_bench, section
from tests.support.e2e import E2EEnv, kubectl
from tests.support.kube import RUN_ID

pytestmark = pytest.mark.e2e


def test_kube_section_runs_and_deletes_its_namespace(e2e_env: E2EEnv) -> None:
    namespace = f"podq-e2e-{RUN_ID}-bench"
    markdown = run_bench(
        "--only", "kube", "--worker-image", e2e_env.worker_image,
        "--kube-namespace", namespace, "--kube-label", "podq.dev/test=bench-smoke",
    )  # fmt: skip
    assert_tables_filled(section(markdown, "4. Kubernetes mode"))
    assert not kubectl("get", "namespace", namespace, "--ignore-not-found", "-o", "name"), (
        f"the benchmark left its namespace {namespace}"
    )
