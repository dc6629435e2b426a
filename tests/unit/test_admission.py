import re
from typing import Any

import pytest
from pydantic import ValidationError

from controller.launchers.base import QueryLimits
from controller.models import InspectionIn, QueryIn
from controller.queue.admission import Rejected, admit_inspection, admit_query
from controller.settings import Settings

pytestmark = pytest.mark.unit

SETTINGS = Settings(
    max_cpu="2",
    max_memory="1Gi",
    max_timeout_seconds=120,
    max_rows_limit=5000,
    max_sql_bytes=100,
    max_datasets=2,
    default_cpu="500m",
    default_memory="256Mi",
    default_timeout_seconds=30,
    default_max_rows=1000,
)
DATASET = {"url": "http://example.test/a.parquet", "table_name": "a"}


def query(**fields: Any) -> QueryIn:
    return QueryIn.model_validate({"sql": "SELECT 1", **fields})


def test_defaults_fill_what_the_request_leaves_out() -> None:
    admitted = admit_query(query(datasets=[DATASET]), SETTINGS)
    assert admitted.limits == QueryLimits(
        cpu="500m", memory="256Mi", timeout_seconds=30, cpu_millicores=500, memory_bytes=256 * 2**20
    )
    assert admitted.request["max_rows"] == 1000
    assert admitted.request["max_result_bytes"] == SETTINGS.max_result_bytes
    assert admitted.request["datasets"] == [DATASET]
    assert admitted.request["fetch"]["max_download_bytes"] == SETTINGS.max_download_bytes
    assert "debug" not in admitted.request


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"limits": {"cpu": "2500m"}}, "limits.cpu"),
        ({"limits": {"memory": "2Gi"}}, "limits.memory"),
        ({"limits": {"timeout_seconds": 121}}, "limits.timeout_seconds"),
        ({"max_rows": 5001}, "max_rows"),
        ({"sql": "SELECT " + "1" * 100}, "sql"),
        ({"sql": "SELECT 'é" + "x" * 90 + "'"}, "sql"),
        ({"datasets": [DATASET, {**DATASET, "table_name": "b"}, {**DATASET, "table_name": "c"}]}, "datasets"),
        ({"debug": {"crash": "exit"}}, "debug"),
    ],
)
def test_caps_are_refused_naming_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(Rejected) as refused:
        admit_query(query(**fields), SETTINGS)
    assert refused.value.field == field


def test_limits_at_the_maxima_are_accepted() -> None:
    admitted = admit_query(
        query(limits={"cpu": "2", "memory": "1Gi", "timeout_seconds": 120}, max_rows=5000), SETTINGS
    )
    assert admitted.limits.cpu_millicores == 2000
    assert admitted.limits.memory_bytes == 2**30


def test_debug_passes_through_only_when_enabled() -> None:
    enabled = SETTINGS.model_copy(update={"enable_test_hooks": True})
    admitted = admit_query(query(debug={"crash": "exit"}), enabled)
    assert admitted.request.get("debug") == {"crash": "exit"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"sql": ""}, "at least 1 character"),
        ({"sql": "   "}, "sql is empty"),
        ({}, "Field required"),
        ({"sql": "SELECT 1", "datasets": [DATASET, DATASET]}, "duplicate table_name"),
        ({"sql": "SELECT 1", "datasets": [DATASET, {**DATASET, "table_name": "A"}]}, "duplicate table_name"),
        ({"sql": "SELECT 1", "datasets": [{**DATASET, "table_name": "a b"}]}, "pattern"),
        ({"sql": "SELECT 1", "datasets": [{**DATASET, "table_name": "1a"}]}, "pattern"),
        ({"sql": "SELECT 1", "datasets": [{**DATASET, "table_name": 'a";--'}]}, "pattern"),
        ({"sql": "SELECT 1", "datasets": [{**DATASET, "url": "file:///etc/passwd"}]}, "only http and https"),
        ({"sql": "SELECT 1", "datasets": [{**DATASET, "url": "ftp://x/y.parquet"}]}, "only http and https"),
        ({"sql": "SELECT 1", "limits": {"timeout_seconds": 0}}, "greater than 0"),
        ({"sql": "SELECT 1", "limits": {"timeout_seconds": -5}}, "greater than 0"),
        ({"sql": "SELECT 1", "limits": {"memory": "lots"}}, "not a Kubernetes quantity"),
        ({"sql": "SELECT 1", "limits": {"cpu": "0"}}, "cpu must be positive"),
        ({"sql": "SELECT 1", "max_rows": 0}, "greater than or equal to 1"),
        ({"sql": "SELECT 1", "max_rows": -1}, "greater than or equal to 1"),
        ({"sql": "SELECT 1", "unexpected": True}, "Extra inputs"),
    ],
)
def test_malformed_bodies_fail_validation(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        QueryIn.model_validate(body)


def test_inspection_takes_the_same_limits() -> None:
    admitted = admit_inspection(InspectionIn(url="https://example.test/x.parquet"), SETTINGS)
    assert admitted.request == {
        "operation": "inspect",
        "fetch": admitted.request["fetch"],
        "url": "https://example.test/x.parquet",
    }
    with pytest.raises(Rejected):
        admit_inspection(
            InspectionIn.model_validate({"url": "http://x/y", "limits": {"memory": "8Gi"}}), SETTINGS
        )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://2852039166/x.parquet", "link-local (cloud metadata)"),
        ("http://0xa9fea9fe/x.parquet", "link-local (cloud metadata)"),
        ("http://0251.0376.0251.0376/x.parquet", "link-local (cloud metadata)"),
        ("http://[::ffff:169.254.169.254]/x.parquet", "IPv4-mapped IPv6"),
        ("http://127.0.0.1.:8000/x.parquet", "loopback"),
        ("http://10.88.0.1/x.parquet", "private"),
        ("https://user:secret@example.test/x.parquet", "must not carry a user name or password"),
    ],
)
def test_dataset_urls_outside_the_fetch_policy_are_refused_naming_the_field(url: str, message: str) -> None:
    with pytest.raises(Rejected) as refused:
        admit_query(query(datasets=[DATASET, {"url": url, "table_name": "b"}]), SETTINGS)
    assert refused.value.field == "datasets[1].url"
    assert message in refused.value.message
    with pytest.raises(Rejected) as refused:
        admit_inspection(InspectionIn(url=url), SETTINGS)
    assert refused.value.field == "url"


def test_the_fetch_policy_settings_admit_and_travel_to_the_worker() -> None:
    policy = {"fetch_allowed_networks": ["10.88.0.1/32"], "fetch_blocked_networks": ["10.96.0.0/12"]}
    admitted = admit_inspection(
        InspectionIn(url="http://10.88.0.1:8080/x.parquet"), SETTINGS.model_copy(update=policy)
    )
    assert admitted.request["fetch"].get("allowed_networks") == ["10.88.0.1/32"]
    assert admitted.request["fetch"].get("blocked_networks") == ["10.96.0.0/12"]
    # A name is not resolved at admission: the worker judges the addresses it connects to.
    assert admit_inspection(InspectionIn(url="http://localhost/x.parquet"), SETTINGS)


@pytest.mark.parametrize("field", ["fetch_allowed_networks", "fetch_blocked_networks"])
def test_malformed_fetch_networks_stop_the_settings(field: str) -> None:
    with pytest.raises(ValidationError, match=re.escape("'10.0.0.1/8' is not a network in CIDR notation")):
        Settings(**{field: ["10.0.0.1/8"]})


def test_a_request_too_big_for_the_worker_environment_is_refused() -> None:
    roomy = SETTINGS.model_copy(update={"max_sql_bytes": 10**6, "max_datasets": 100})
    long_urls = [
        {"url": f"http://example.test/{'x' * 4000}/{i}.parquet", "table_name": f"t{i}"} for i in range(30)
    ]
    with pytest.raises(Rejected) as refused:
        admit_query(query(datasets=long_urls), roomy)
    assert refused.value.field == "body"
    assert "once encoded for the worker" in refused.value.message
