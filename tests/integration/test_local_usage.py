"""What an attempt used, on the local launcher with real workers, in each memory enforcement mode (cgroup
where writable, and rlimit) and each start mode: the worker's own figures against the job cgroup's, and
per dataset what the real file server served."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, cast

import pyarrow.parquet as pq
import pytest

from controller.launchers.base import Job, Limits, Outcome
from tests.support.fixtures import BOTH_START_MODES, HUNGRY_SQL, query_request
from tests.support.leaks import session_members
from worker_image.protocol import WorkerRequest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_worker_leaks")]

MIB = 2**20
# The known amount a query fills (the worker's `allocate_mb` hook: allocated, touched, held to the end).
FILL_MIB = 600
LIMIT_MIB = 1024
TWO_TABLES_SQL = "SELECT count(*) AS n FROM table1 CROSS JOIN table2"


def make_job(request: dict[str, Any], memory_mib: int) -> Job:
    limits = Limits(cpu_millicores=2000, memory_bytes=memory_mib * MIB, timeout_seconds=60)
    query_id = f"test-{uuid.uuid4().hex[:12]}"
    return Job(query_id=query_id, attempt=1, request=cast(WorkerRequest, request), limits=limits)


def run_one(local_launcher: Any, job: Job) -> Outcome:
    async def scenario() -> Outcome:
        async with local_launcher() as launcher:
            outcome: Outcome = await launcher.run(job)
            assert session_members(outcome.placement["pid"]) == []
            return outcome

    return asyncio.run(scenario())


@BOTH_START_MODES
def test_the_reported_peak_is_within_a_fifth_of_the_cgroups_for_a_query_filling_a_known_amount(
    local_launcher: Any, memory_enforcement: str, sample_datasets: list[dict[str, str]]
) -> None:
    request = {**query_request("SELECT 1 AS x", []), "debug": {"allocate_mb": FILL_MIB}}
    outcome = run_one(local_launcher, make_job(request, LIMIT_MIB))

    assert outcome.error is None, outcome.error
    usage = outcome.usage
    assert usage is not None
    peak = usage["peak_memory_bytes"]
    assert usage["peak_memory_source"] == "worker"
    assert FILL_MIB * MIB <= peak < LIMIT_MIB * MIB, usage
    assert usage["peak_resident_bytes"] >= peak, usage
    if memory_enforcement == "cgroup":
        cgroup_peak = usage["cgroup_peak_memory_bytes"]
        assert cgroup_peak is not None and abs(peak - cgroup_peak) <= 0.2 * cgroup_peak, usage
    else:
        assert usage["cgroup_peak_memory_bytes"] is None, usage
    assert usage["cpu_seconds"] > 0, usage
    assert usage["phases"]["starting"] is not None and usage["phases"]["execute"] is not None, usage


def test_each_dataset_is_counted_as_served_and_as_its_footer_declares(
    local_launcher: Any, sample_datasets: list[dict[str, str]], parquet_dir: Path
) -> None:
    outcome = run_one(local_launcher, make_job(query_request(TWO_TABLES_SQL, sample_datasets), 512))

    assert outcome.error is None, outcome.error
    assert outcome.usage is not None
    expected = []
    for dataset in sample_datasets:
        path = parquet_dir / dataset["url"].rsplit("/", 1)[1]
        footer = pq.read_metadata(path)
        uncompressed = sum(
            footer.row_group(g).column(c).total_uncompressed_size
            for g in range(footer.num_row_groups)
            for c in range(footer.num_columns)
        )
        expected.append(
            {
                "table_name": dataset["table_name"],
                "bytes_fetched": path.stat().st_size,
                "rows": footer.num_rows,
                "uncompressed_bytes": uncompressed,
            }
        )
    assert outcome.usage["datasets"] == expected
    phases = outcome.usage["phases"]
    assert all(phases[name] is not None and phases[name] >= 0 for name in ("fetch", "execute", "encode"))


def test_a_query_stopped_at_its_memory_limit_records_what_it_reached(
    local_launcher: Any, memory_enforcement: str, sample_datasets: list[dict[str, str]]
) -> None:
    outcome = run_one(local_launcher, make_job(query_request(HUNGRY_SQL, sample_datasets), 256))

    assert outcome.error is not None and outcome.error["error_type"] == "memory", outcome.error
    usage = outcome.usage
    assert usage is not None
    # Stopped by its own watch within 1/8 of the limit, or killed at it (by the kernel: the cgroup's peak;
    # an allocation refused under rlimit: the limit).
    assert 0.8 * 256 * MIB <= usage["peak_memory_bytes"] <= 1.05 * 256 * MIB, usage
    if usage["peak_memory_source"] == "worker":
        assert usage["datasets"] and usage["phases"]["fetch"] is not None, "what was known before it stopped"
    else:
        expected = "cgroup" if memory_enforcement == "cgroup" else "limit"
        assert usage["peak_memory_source"] == expected, usage
