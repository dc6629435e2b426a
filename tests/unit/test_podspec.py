"""The worker pod spec, rule by rule (controller/launchers/podspec)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.launchers.base import Job, Limits
from controller.launchers.kubernetes.podspec import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_OPERATION,
    ANNOTATION_SQL_SHA256,
    ANNOTATION_SUBMITTED_AT,
    CONTAINER_NAME,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_QUERY_ID,
    PodTemplate,
    build_pod,
    build_pool_pod,
    pod_name,
    query_id_of,
    selector,
)
from controller.quantity import parse_cpu_millicores, parse_memory_bytes
from worker_image.protocol import (
    MEMORY_LIMIT_ENV,
    REQUEST_ENV,
    REQUEST_STDIN_ENV,
    TERMINATION_MESSAGE_ENV,
    TEST_HOOKS_ENV,
    FetchOptions,
    WorkerRequest,
)
from worker_image.request import load_request

pytestmark = pytest.mark.unit

QUERY_ID = "0f8e2d6c4b3a49e1a5c7d9b1e3f5a7c9"
SQL = "SELECT name, count(*) AS n FROM t GROUP BY name"
URL = "http://files.example.test/data/t.parquet"
SUBMITTED = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC).timestamp()
FETCH: FetchOptions = {
    "connect_timeout_seconds": 5.0,
    "read_timeout_seconds": 30.0,
    "total_timeout_seconds": 300.0,
    "max_download_bytes": 2**30,
}
QUERY: WorkerRequest = {
    "operation": "query",
    "fetch": FETCH,
    "sql": SQL,
    "datasets": [{"url": URL, "table_name": "t"}],
    "max_rows": 1000,
    "max_result_bytes": 8 * 2**20,
}
INSPECTION: WorkerRequest = {"operation": "inspect", "fetch": FETCH, "url": URL}
DEBUG = {"sleep_seconds": 2.5}
QUERY_WITH_DEBUG: WorkerRequest = {**QUERY, "debug": DEBUG}
JOB = Job(
    query_id=QUERY_ID,
    attempt=2,
    request=QUERY,
    limits=Limits(cpu_millicores=1500, memory_bytes=256 * 2**20, timeout_seconds=30.5),
)
BARE = PodTemplate(
    namespace="podq-workers",
    instance="analytics",
    image="registry.example.test/podq-worker:1.2.3",
    image_pull_policy="IfNotPresent",
    service_account=None,
    node_selector={},
    tolerations=(),
    priority_class=None,
    image_pull_secrets=(),
    tmp_size="1Gi",
    enable_test_hooks=False,
)
TOLERATION = {"key": "podq.dev/dedicated", "operator": "Equal", "value": "workers", "effect": "NoSchedule"}
FULL = dataclasses.replace(
    BARE,
    service_account="podq-worker",
    node_selector={"pool": "batch"},
    tolerations=(TOLERATION,),
    priority_class="podq-low",
    image_pull_secrets=("regcred", "mirror"),
)
OPTIONAL_SPEC_FIELDS = {
    "serviceAccountName",
    "nodeSelector",
    "tolerations",
    "priorityClassName",
    "imagePullSecrets",
}


def pod(job: Job = JOB, template: PodTemplate = BARE) -> dict[str, Any]:
    return build_pod(job, template, submitted_at=SUBMITTED)


def pod_with_limits(**changes: Any) -> dict[str, Any]:
    """The pod of JOB with these of its limits changed."""
    return pod(dataclasses.replace(JOB, limits=dataclasses.replace(JOB.limits, **changes)))


def container(built: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = built["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env(built: dict[str, Any]) -> dict[str, Any]:
    """The container's environment: a value, or for a variable the kubelet fills, its ``valueFrom``."""
    entries = container(built)["env"]
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    assert all(set(entry) in ({"name", "value"}, {"name", "valueFrom"}) for entry in entries), entries
    return {entry["name"]: entry.get("value", entry.get("valueFrom")) for entry in entries}


def worker_request(built: dict[str, Any]) -> dict[str, Any]:
    request: dict[str, Any] = json.loads(env(built)[REQUEST_ENV])
    return request


class Rule(NamedTuple):
    name: str
    read: Callable[[dict[str, Any]], Any]
    expected: Any


# The request as the worker gets it: the job's, with the memory limit it is to watch (memwatch.py).
SENT = {**QUERY, "limits": {"memory_bytes": JOB.limits.memory_bytes}}

RULES = [
    Rule("a v1 Pod", lambda p: (p["apiVersion"], p["kind"]), ("v1", "Pod")),
    Rule("named podq-<query id>", lambda p: p["metadata"]["name"], f"podq-{QUERY_ID}"),
    Rule("in the template's namespace", lambda p: p["metadata"]["namespace"], "podq-workers"),
    Rule(
        "labelled worker, managed by podq, instance, query id",
        lambda p: p["metadata"]["labels"],
        {
            LABEL_NAME: "podq-worker",
            LABEL_MANAGED_BY: "podq",
            LABEL_INSTANCE: "analytics",
            LABEL_QUERY_ID: QUERY_ID,
        },
    ),
    Rule(
        "submission time annotated in RFC 3339 UTC",
        lambda p: p["metadata"]["annotations"][ANNOTATION_SUBMITTED_AT],
        "2024-05-06T07:08:09.123Z",
    ),
    Rule(
        "sha256 of the SQL annotated",
        lambda p: p["metadata"]["annotations"][ANNOTATION_SQL_SHA256],
        hashlib.sha256(SQL.encode()).hexdigest(),
    ),
    Rule("attempt annotated", lambda p: p["metadata"]["annotations"][ANNOTATION_ATTEMPT], "2"),
    Rule("operation annotated", lambda p: p["metadata"]["annotations"][ANNOTATION_OPERATION], "query"),
    Rule("never restarted", lambda p: p["spec"]["restartPolicy"], "Never"),
    Rule("deadline is the timeout rounded up", lambda p: p["spec"]["activeDeadlineSeconds"], 31),
    Rule(
        "stopped within 2 s of SIGTERM: a worker has nothing to clean up",
        lambda p: p["spec"]["terminationGracePeriodSeconds"],
        2,
    ),
    Rule("no service-account token", lambda p: p["spec"]["automountServiceAccountToken"], False),
    Rule("no service links", lambda p: p["spec"]["enableServiceLinks"], False),
    Rule(
        "no optional scheduling field when unset",
        lambda p: OPTIONAL_SPEC_FIELDS & set(p["spec"]),
        set(),
    ),
    Rule(
        "pod runs as a fixed non-root uid with seccomp RuntimeDefault",
        lambda p: p["spec"]["securityContext"],
        {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    ),
    Rule(
        "one container, named worker",
        lambda p: [c["name"] for c in p["spec"]["containers"]],
        [CONTAINER_NAME],
    ),
    Rule(
        "the template's image and pull policy",
        lambda p: (container(p)["image"], container(p)["imagePullPolicy"]),
        ("registry.example.test/podq-worker:1.2.3", "IfNotPresent"),
    ),
    Rule(
        "no command or args: the image's entrypoint runs the worker",
        lambda p: {"command", "args"} & set(container(p)),
        set(),
    ),
    Rule(
        "requests equal limits: millicores and bytes",
        lambda p: container(p)["resources"],
        {
            "requests": {"cpu": "1500m", "memory": "268435456"},
            "limits": {"cpu": "1500m", "memory": "268435456"},
        },
    ),
    Rule(
        "container: no escalation, no capabilities, read-only root, non-root",
        lambda p: container(p)["securityContext"],
        {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
    ),
    Rule(
        "termination message at the default path, else the log tail",
        lambda p: (container(p)["terminationMessagePath"], container(p)["terminationMessagePolicy"]),
        ("/dev/termination-log", "FallbackToLogsOnError"),
    ),
    Rule(
        "a size-capped emptyDir for /tmp",
        lambda p: p["spec"]["volumes"],
        [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
    ),
    Rule(
        "/tmp mounted writable",
        lambda p: container(p)["volumeMounts"],
        [{"name": "tmp", "mountPath": "/tmp"}],
    ),
    Rule("the request with its memory limit in PODQ_REQUEST", worker_request, SENT),
    Rule("polars threads from the cpu limit", lambda p: env(p)["POLARS_MAX_THREADS"], "2"),
    Rule(
        "polars never spills: the worker's memory watch stops a query at its limit",
        lambda p: env(p)["POLARS_OOC_MEMORY_BUDGET_FRACTION"],
        "1000",
    ),
    Rule("HOME is the writable /tmp", lambda p: env(p)["HOME"], "/tmp"),
    Rule("unbuffered output", lambda p: env(p)["PYTHONUNBUFFERED"], "1"),
    Rule("UTF-8 mode, for the envelope's byte count", lambda p: env(p)["PYTHONUTF8"], "1"),
    Rule(
        "the memory limit for the worker's own watch, as the kubelet has it (downward API)",
        lambda p: env(p)[MEMORY_LIMIT_ENV],
        {"resourceFieldRef": {"containerName": "worker", "resource": "limits.memory"}},
    ),
    Rule(
        "no test hooks, no termination path override",
        lambda p: {TEST_HOOKS_ENV, TERMINATION_MESSAGE_ENV} & set(env(p)),
        set(),
    ),
]


@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
def test_pod_follows_rule(rule: Rule) -> None:
    assert rule.read(pod()) == rule.expected


def test_pod_is_plain_json() -> None:
    built = pod(template=FULL)
    assert json.loads(json.dumps(built)) == built


def test_the_worker_accepts_the_request_it_is_given() -> None:
    assert load_request(env(pod())[REQUEST_ENV]) == SENT


def test_an_inspection_pod_hashes_the_url() -> None:
    annotations = pod(dataclasses.replace(JOB, request=INSPECTION))["metadata"]["annotations"]
    assert annotations[ANNOTATION_OPERATION] == "inspect"
    assert annotations[ANNOTATION_SQL_SHA256] == hashlib.sha256(URL.encode()).hexdigest()


@pytest.mark.parametrize(
    ("timeout_seconds", "deadline"),
    [(0.001, 1), (1.0, 1), (1.01, 2), (59.5, 60), (600.0, 600)],
    ids=["sub-second is one second", "whole seconds stay", "a fraction rounds up", "half", "ten minutes"],
)
def test_deadline_is_a_whole_second_at_least_the_timeout(timeout_seconds: float, deadline: int) -> None:
    assert pod_with_limits(timeout_seconds=timeout_seconds)["spec"]["activeDeadlineSeconds"] == deadline


@pytest.mark.parametrize(
    ("cpu_millicores", "threads"),
    [(1, 1), (500, 1), (1000, 1), (1001, 2), (4000, 4)],
    ids=["1m", "half a core", "one core", "just over one core", "four cores"],
)
def test_polars_threads_are_the_cpu_limit_in_whole_cores(cpu_millicores: int, threads: int) -> None:
    assert env(pod_with_limits(cpu_millicores=cpu_millicores))["POLARS_MAX_THREADS"] == str(threads)


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("serviceAccountName", "podq-worker"),
        ("nodeSelector", {"pool": "batch"}),
        ("tolerations", [TOLERATION]),
        ("priorityClassName", "podq-low"),
        ("imagePullSecrets", [{"name": "regcred"}, {"name": "mirror"}]),
    ],
)
def test_optional_scheduling_field_is_set_from_the_template(field: str, expected: Any) -> None:
    assert pod(template=FULL)["spec"][field] == expected


def test_the_service_account_never_brings_its_token() -> None:
    assert pod(template=FULL)["spec"]["automountServiceAccountToken"] is False


def test_pods_have_no_owner_unless_the_template_names_one() -> None:
    assert "ownerReferences" not in pod()["metadata"]
    owner = {"apiVersion": "v1", "kind": "ServiceAccount", "name": "podq", "uid": "0f1e2d3c"}
    assert pod(template=dataclasses.replace(BARE, owner=owner))["metadata"]["ownerReferences"] == [owner]


def test_empty_service_account_and_priority_class_are_unset() -> None:
    template = dataclasses.replace(BARE, service_account="", priority_class="")
    assert OPTIONAL_SPEC_FIELDS & set(pod(template=template)["spec"]) == set()


def test_pods_share_nothing_mutable_with_the_template() -> None:
    first = pod(template=FULL)
    first["spec"]["nodeSelector"]["pool"] = "changed"
    first["spec"]["tolerations"][0]["value"] = "changed"
    second = pod(template=FULL)
    assert second["spec"]["nodeSelector"] == {"pool": "batch"}
    assert second["spec"]["tolerations"] == [TOLERATION]


class Hooks(NamedTuple):
    name: str
    enabled: bool
    request: WorkerRequest
    # what the worker gets
    request_debug: dict[str, Any] | None
    hooks_env: bool


HOOKS = [
    Hooks("debug section stripped when hooks are disabled", False, QUERY_WITH_DEBUG, None, False),
    Hooks("debug section and hooks passed when enabled", True, QUERY_WITH_DEBUG, DEBUG, True),
    Hooks("no hooks for a request without debug, even when enabled", True, QUERY, None, False),
    Hooks("nothing to strip, nothing to enable", False, QUERY, None, False),
]


@pytest.mark.parametrize("case", HOOKS, ids=[case.name for case in HOOKS])
def test_debug_section_reaches_the_worker_only_with_test_hooks(case: Hooks) -> None:
    template = dataclasses.replace(BARE, enable_test_hooks=case.enabled)
    built = pod(dataclasses.replace(JOB, request=case.request), template)
    request = worker_request(built)
    assert request.get("debug") == case.request_debug
    assert {key: value for key, value in request.items() if key != "debug"} == SENT
    assert (env(built).get(TEST_HOOKS_ENV) == "1") is case.hooks_env


def test_stripping_the_debug_section_leaves_the_job_alone() -> None:
    job = dataclasses.replace(JOB, request=QUERY_WITH_DEBUG)
    pod(job)
    assert job.request["debug"] == DEBUG


@pytest.mark.parametrize(
    "query_id",
    [QUERY_ID, uuid.uuid4().hex, "a", "x" * 58, "retry-2"],
    ids=["hex id", "the API's uuid4 hex", "one character", "longest", "inner hyphen"],
)
def test_pod_name_of_a_valid_query_id(query_id: str) -> None:
    assert pod_name(query_id) == f"podq-{query_id}"


@pytest.mark.parametrize(
    "query_id",
    ["", "x" * 59, "ABC", "a_b", "a.b", "-a", "a-", "a/b", "a b", "é"],
    ids=[
        "empty",
        "name over 63",
        "uppercase",
        "underscore",
        "dot",
        "leading hyphen",
        "trailing hyphen",
        "slash",
        "space",
        "non-ascii",
    ],
)
def test_query_id_making_an_invalid_name_is_refused(query_id: str) -> None:
    with pytest.raises(ValueError, match="makes no valid pod name"):
        pod_name(query_id)
    with pytest.raises(ValueError, match="makes no valid pod name"):
        pod(dataclasses.replace(JOB, query_id=query_id))


def test_a_refused_query_id_is_told_what_a_valid_one_is() -> None:
    message = (
        "query id 'A_b' makes no valid pod name: it takes at most 58 lowercase letters, digits and '-', "
        "starting and ending alphanumeric"
    )
    with pytest.raises(ValueError) as refused:
        pod_name("A_b")
    assert str(refused.value) == message


def test_an_instance_of_63_characters_is_a_label_value() -> None:
    assert dataclasses.replace(BARE, instance="x" * 63).instance == "x" * 63


@pytest.mark.parametrize("instance", ["", "x" * 64, "has space", "-podq", "podq-", "a/b"], ids=str)
def test_instance_that_is_no_label_value_is_refused(instance: str) -> None:
    with pytest.raises(ValueError, match="not a valid label value"):
        dataclasses.replace(BARE, instance=instance)


def _matches(label_selector: str, labels: dict[str, str]) -> bool:
    pairs = [term.split("=", 1) for term in label_selector.split(",")]
    return all(labels.get(key) == value for key, value in pairs)


def test_selector_names_managed_by_and_instance() -> None:
    assert selector("analytics") == "app.kubernetes.io/managed-by=podq,app.kubernetes.io/instance=analytics"


def test_selector_matches_the_instances_own_pods_only() -> None:
    own = pod()["metadata"]["labels"]
    other = pod(template=dataclasses.replace(BARE, instance="other"))["metadata"]["labels"]
    assert _matches(selector(BARE.instance), own)
    assert not _matches(selector(BARE.instance), other)


@pytest.mark.parametrize(
    ("given_pod", "expected"),
    [
        (pod(), QUERY_ID),
        ({"metadata": {"name": "x", "labels": {LABEL_QUERY_ID: "abc"}}}, "abc"),
        ({}, None),
        ({"metadata": None}, None),
        ({"metadata": {"name": "x"}}, None),
        ({"metadata": {"labels": None}}, None),
        ({"metadata": {"labels": {LABEL_INSTANCE: "analytics"}}}, None),
        ({"metadata": {"labels": {LABEL_QUERY_ID: 123}}}, None),
    ],
    ids=[
        "built pod",
        "label only",
        "no metadata",
        "null metadata",
        "no labels",
        "null labels",
        "other labels",
        "not a string",
    ],
)
def test_query_id_of(given_pod: dict[str, Any], expected: str | None) -> None:
    assert query_id_of(given_pod) == expected


@given(
    cpu_millicores=st.integers(min_value=1, max_value=1_000_000),
    memory_bytes=st.integers(min_value=1, max_value=2**50),
    timeout_seconds=st.floats(min_value=0, max_value=86_400, exclude_min=True, allow_nan=False),
)
def test_resources_round_trip_for_any_admitted_limits(
    cpu_millicores: int, memory_bytes: int, timeout_seconds: float
) -> None:
    limits = Limits(cpu_millicores=cpu_millicores, memory_bytes=memory_bytes, timeout_seconds=timeout_seconds)
    built = pod(dataclasses.replace(JOB, limits=limits))
    resources = container(built)["resources"]
    assert resources["requests"] == resources["limits"]
    assert parse_cpu_millicores(resources["limits"]["cpu"]) == cpu_millicores
    assert parse_memory_bytes(resources["limits"]["memory"]) == memory_bytes
    deadline = built["spec"]["activeDeadlineSeconds"]
    assert type(deadline) is int
    # The smallest whole number of seconds, at least one, that covers the timeout.
    assert deadline >= timeout_seconds
    assert deadline == 1 or deadline - 1 < timeout_seconds
    # As many threads as whole cores the limit covers, at least one.
    threads = int(env(built)["POLARS_MAX_THREADS"])
    assert threads * 1000 >= cpu_millicores
    assert threads == 1 or (threads - 1) * 1000 < cpu_millicores


# A pool pod (warm.py): started before any query claims it ------------------------------------------------

OWNED = dataclasses.replace(
    FULL, owner={"apiVersion": "apps/v1", "kind": "Deployment", "name": "podq", "uid": "u1"}
)
POOL_LABELS = {"podq.dev/pool": "warm"}


def pool_pod(template: PodTemplate) -> dict[str, Any]:
    return build_pool_pod(
        template,
        "podq-pool-7f3a",
        POOL_LABELS,
        cpu_millicores=JOB.limits.cpu_millicores,
        memory_bytes=JOB.limits.memory_bytes,
    )


@pytest.mark.parametrize("template", [OWNED, dataclasses.replace(OWNED, enable_test_hooks=True)])
def test_a_pool_pod_is_the_query_pod_at_its_limits_without_the_query(template: PodTemplate) -> None:
    pooled, queried = pool_pod(template), pod(JOB, template)

    assert pooled["metadata"] == {
        "ownerReferences": [dict(OWNED.owner or {})],
        "name": "podq-pool-7f3a",
        "namespace": template.namespace,
        "labels": {
            **{k: v for k, v in queried["metadata"]["labels"].items() if k != LABEL_QUERY_ID},
            **POOL_LABELS,
        },
    }, "no query id, no annotations of a query"
    assert "activeDeadlineSeconds" not in pooled["spec"], "the deadline is set when a query claims the pod"
    worker = container(pooled)
    assert (worker["stdin"], worker["stdinOnce"]) == (True, True), "the request comes on stdin, once"
    hooks = {TEST_HOOKS_ENV: "1"} if template.enable_test_hooks else {}
    assert env(pooled) == {
        **{k: v for k, v in env(queried).items() if k not in (REQUEST_ENV, TEST_HOOKS_ENV)},
        REQUEST_STDIN_ENV: "1",
        **hooks,
    }
    # Everything else is the query's pod.
    for built in (pooled, queried):
        del built["metadata"], built["spec"]["containers"][0]["env"]
        built["spec"].pop("activeDeadlineSeconds", None)
    del pooled["spec"]["containers"][0]["stdin"], pooled["spec"]["containers"][0]["stdinOnce"]
    assert pooled == queried
