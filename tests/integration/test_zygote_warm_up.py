"""The zygote's warm-up (worker_image/zygote.py): a child forked after it runs a real query or inspection
over HTTP without importing a single module more, and without parsing the CA bundle again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.fixtures import REPO_ROOT, inspect_request, query_request
from worker_image.protocol import REQUEST_ENV, decode_envelope

pytestmark = pytest.mark.integration

# Warms up as the zygote does, forks, and runs the worker's main in the child as the zygote's child does;
# the child then reports the modules it imported and the TLS contexts it built.
PROBE = """
import json, os, sys
from worker_image.standby import warm_up
warm_up()
from worker_image.pinned import ssl_context
before, built = set(sys.modules), ssl_context.cache_info().misses
pid = os.fork()
if pid == 0:
    from worker_image.__main__ import main
    main()
    built_here = ssl_context.cache_info().misses - built
    report = {"imported": sorted(set(sys.modules) - before), "tls_contexts_built": built_here}
    print(json.dumps(report), flush=True)
    os._exit(0)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def _forked_run(request: dict[str, Any], tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PODQ_")}
    env.update({"PYTHONPATH": str(REPO_ROOT), REQUEST_ENV: json.dumps(request), "TMPDIR": str(tmp_path)})
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    worker_output, _, report_line = done.stdout.rstrip("\n").rpartition("\n")
    return decode_envelope(worker_output), json.loads(report_line)


@pytest.mark.parametrize("operation", ["query", "inspect"])
def test_a_forked_child_imports_nothing_and_builds_no_tls_context(
    operation: str, file_server: str, sample_datasets: list[dict[str, str]], tmp_path: Path
) -> None:
    if operation == "query":
        sql = "SELECT t1.id, COUNT(*) AS n FROM table1 t1 JOIN table2 t2 ON t1.id = t2.id GROUP BY t1.id"
        request = query_request(sql, sample_datasets)
    else:
        request = inspect_request(f"{file_server}/simple.parquet")
    envelope, report = _forked_run(request, tmp_path)
    assert envelope["ok"] is True, envelope
    assert report == {"imported": [], "tls_contexts_built": 0}
