"""Every setting of the controller, read from `PODQ_*` environment variables.

The README's configuration table is generated from this class (`python -m controller.settings`), and a test
keeps the two in step.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from controller.models import RETRY_TYPES, RetryOn
from controller.quantity import parse_cpu_millicores, parse_memory_bytes
from controller.testcrash import parse_crash_at
from worker_image.netpolicy import parse_networks

# A pool holds its pods' requests on the nodes whether used or not; more than this is a typo.
MAX_WARM_POOL_SIZE = 100
MIN_WARM_POOL_IDLE_SECONDS = 10


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "podq"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PODQ_", extra="ignore")

    launcher: Literal["local", "kubernetes"] = Field(
        "local",
        description="Where queries run. `local`: one subprocess per query on this host. `kubernetes`: one "
        "pod per query, in `PODQ_KUBE_NAMESPACE`.",
    )
    host: str = Field("127.0.0.1", description="Address `podq serve` listens on; loopback unless exposed.")
    port: int = Field(8000, ge=0, le=65535, description="Port `podq serve` listens on.")
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Holds the SQLite store (`podq.db`) and per-query scratch space. "
        "Default `$XDG_DATA_HOME/podq`, else `~/.local/share/podq`.",
    )
    database_url: SecretStr | None = Field(
        None,
        description="A PostgreSQL database for the store (`postgresql://user:password@host:5432/podq`, "
        "libpq's URL form; `?sslmode=require` and the like pass through), shared by any number of "
        "controllers, all active. Unset: SQLite in `PODQ_DATA_DIR`, for one controller. The schema is "
        "created and migrated at start.",
    )
    database_pool_size: int = Field(
        8, ge=1, description="Most connections a controller opens to PostgreSQL (one more listens)."
    )
    database_timeout_seconds: float = Field(
        2,
        gt=0,
        description="Longest wait for a PostgreSQL connection, at start and per request; past it a "
        "submission is answered 503 with `Retry-After`.",
    )
    heartbeat_seconds: float = Field(
        2, gt=0, description="PostgreSQL: how often a controller tells the others it is alive."
    )
    replica_stale_seconds: float = Field(
        15,
        gt=0,
        description="PostgreSQL: a controller silent this long is taken for dead, and the queries it ran "
        "are started again by another (while attempts remain). At least 3 heartbeats.",
    )
    max_concurrent: int = Field(
        2,
        ge=1,
        description="Queries running at once, across all controllers sharing a database; the rest wait "
        "FIFO. Default fits a 2-core host.",
    )
    max_queued: int = Field(
        1000,
        ge=1,
        description="Queries and inspections that may wait to start; one more is refused with 429 and "
        "`Retry-After`, storing nothing. The queue is on disk, so this bounds the backlog, not memory: "
        "1000 one-second queries at the default concurrency are ~8 minutes of waiting, beyond which a "
        "client is better told to come back than left waiting.",
    )
    max_attempts: int = Field(
        2,
        ge=1,
        description="Times a query may be started, counting its retries. A query running when the "
        "controller died is started again after restart while it has attempts left, else fails as "
        "`internal` (retryable).",
    )
    default_retry_max_attempts: int = Field(
        3, ge=1, description="Attempts in all of a query whose `retry` sets no `max_attempts`."
    )
    max_retry_attempts: int = Field(5, ge=1, description="Largest `retry.max_attempts`; above it is a 422.")
    default_retry_on: list[RetryOn] = Field(
        default_factory=lambda: list(RETRY_TYPES),
        description="Error types that start another attempt when a query's `retry` sets no `on` (JSON list).",
    )
    default_retry_memory_factor: float = Field(
        2.0, gt=1, description="Memory growth factor of a retry after `memory` when `retry` sets none."
    )
    default_cpu: str = Field("1", description="CPU limit of a query that sets none (Kubernetes quantity).")
    default_memory: str = Field("512Mi", description="Memory limit of a query that sets none.")
    default_timeout_seconds: float = Field(60, gt=0, description="Deadline of a query that sets none.")
    max_cpu: str = Field("2", description="Largest CPU limit a query may ask for; above it is a 422.")
    max_memory: str = Field("4Gi", description="Largest memory limit a query may ask for; above it is a 422.")
    max_timeout_seconds: float = Field(600, gt=0, description="Largest deadline a query may ask for.")
    default_queue_timeout_seconds: float = Field(
        0,
        ge=0,
        description="Queue deadline of a query that sets no `limits.queue_timeout_seconds`: how long it may "
        "wait, queued and then (Kubernetes) pending, before its worker runs; past it the query fails as "
        "`timeout` with `phase: queue`. 0: no queue deadline, a query waits as long as it takes.",
    )
    max_queue_timeout_seconds: float = Field(
        86_400, gt=0, description="Largest queue deadline a query may ask for; above it is a 422."
    )
    default_max_rows: int = Field(1000, ge=1, description="Rows returned when a query sets no `max_rows`.")
    max_rows_limit: int = Field(100_000, ge=1, description="Largest `max_rows` a query may ask for.")
    max_result_bytes: int = Field(
        8_388_608,
        ge=65_536,
        le=33_554_432,
        description="Largest result a query returns, in bytes: its JSON rows, Arrow stream and Parquet file "
        'together; rows beyond it are cut and the result says `"truncated_by": "bytes"`. Below kubelet\'s '
        "default 10 MiB log rotation, which could cut a result read from a pod log; at most 32 MiB (the "
        "launchers read at most 64 MiB of output).",
    )
    max_sql_bytes: int = Field(65_536, ge=1, description="Largest SQL text accepted (UTF-8 bytes).")
    max_body_bytes: int = Field(262_144, ge=1024, description="Largest request body accepted.")
    max_datasets: int = Field(32, ge=1, description="Most datasets one query may register.")
    fetch_connect_timeout_seconds: float = Field(5, gt=0, description="Connect timeout of a dataset fetch.")
    fetch_read_timeout_seconds: float = Field(
        30, gt=0, description="Longest wait for the next bytes of a dataset download."
    )
    fetch_total_timeout_seconds: float = Field(
        300,
        gt=0,
        description="Deadline for one dataset download as a whole (the query's own deadline "
        "still applies on top).",
    )
    max_download_bytes: int = Field(
        1_073_741_824, ge=1, description="Largest dataset download, counted while streaming."
    )
    fetch_allowed_networks: list[str] = Field(
        default_factory=list,
        description="Networks dataset URLs may reach although they are not public, as a JSON list of CIDRs: "
        '`["10.20.0.0/16"]`. By default loopback, link-local (the cloud metadata address), private, '
        "carrier-grade NAT, multicast and reserved addresses are refused (README, Dataset URLs).",
    )
    fetch_blocked_networks: list[str] = Field(
        default_factory=list,
        description="Further networks dataset URLs may not reach, as a JSON list of CIDRs: the cluster's "
        "service and pod ranges when they are public addresses. Wins over `PODQ_FETCH_ALLOWED_NETWORKS`.",
    )
    memory_enforcement: Literal["auto", "cgroup", "rlimit"] = Field(
        "auto",
        description="How the local launcher caps memory: a cgroup per query where the hierarchy is "
        "writable (`auto` prefers it), else RLIMIT_AS.",
    )
    local_warm_start: bool = Field(
        True,
        description="Local launcher: fork each query's worker from a zygote that has already imported "
        "polars and the worker (one per polars thread count), confined as a cold worker; a query starts in "
        "tens of milliseconds instead of ~0.4 s (`/readyz` shows the zygotes; with none up, queries start "
        "cold). `false`: every query starts a new interpreter.",
    )
    worker_python: str = Field(
        sys.executable,
        description="Python interpreter the local launcher runs `-m worker_image` with; default the "
        "controller's own.",
    )
    enable_test_hooks: bool = Field(
        False,
        description="Test only: accept a request's `debug` section (crash, sleep, allocate) and pass it to "
        "the worker. Never enable in production.",
    )
    test_crash_at: str | None = Field(
        None,
        description="Test only, honoured only with `PODQ_ENABLE_TEST_HOOKS`: the controller SIGKILLs itself "
        "the first time it reaches this point, for restart tests. `before_finish`: a worker has ended, its "
        "outcome is not stored yet; `after_finish`: right after a query's terminal state is committed; "
        "kubernetes only: `after_create` (a pod was just created), `before_log` (a pod ended, its log is "
        "not read yet), `before_delete` (an outcome is stored, its pod not deleted yet), with a warm pool "
        "`after_claim` (a pool pod claimed, the request not written), `after_resize` (its resize asked for, "
        "not applied yet), `mid_attach` (the attach to its worker "
        "open, the request not written) and `after_attach` (the request written, the worker's output read, "
        "nothing stored). `point@N`: the Nth time. Never set in "
        "production.",
    )
    log_level: str = Field("INFO", description="Python logging level of the controller.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`text`: one readable line per record, for a terminal. `json`: one JSON object per line "
        "(`time`, `level`, `logger`, `message`, and `query_id`, `attempt`, `pod`, `error_type` where they "
        "apply; uvicorn's access lines add `method`, `path`, `status`), for log collectors such as Loki or "
        "Elasticsearch. Text by default, since `podq serve` on a laptop is read by a person.",
    )

    # The kubernetes launcher.
    kube_config: Path | None = Field(
        None,
        description="Kubeconfig file of the kubernetes launcher. Unset: `$KUBECONFIG`, else the in-cluster "
        "service account, else `~/.kube/config`.",
    )
    kube_context: str | None = Field(None, description="Kubeconfig context; unset: its current context.")
    kube_namespace: str | None = Field(
        None,
        description="Namespace of the worker pods. Unset: the controller's own namespace in a cluster, else "
        "the kubeconfig context's, else `default`.",
    )
    kube_instance: str = Field(
        "podq",
        description="`app.kubernetes.io/instance` label of this controller's pods (the Helm release): a "
        "controller only watches, adopts and deletes pods carrying its own.",
    )
    worker_image: str = Field("podq-worker:0.1.0", description="Image of the worker pods.")
    worker_image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = Field(
        "IfNotPresent", description="`imagePullPolicy` of the worker container."
    )
    worker_service_account: str | None = Field(
        None, description="Service account of the worker pods (its token is never mounted). Unset: default."
    )
    worker_node_selector: dict[str, str] = Field(
        default_factory=dict, description='Node selector of the worker pods, as JSON: `{"pool": "batch"}`.'
    )
    worker_tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Tolerations of the worker pods, as a JSON list of Kubernetes tolerations.",
    )
    worker_priority_class: str | None = Field(None, description="`priorityClassName` of the worker pods.")
    worker_image_pull_secrets: list[str] = Field(
        default_factory=list,
        description='Names of image pull secrets of the worker pods, as JSON: `["regcred"]`.',
    )
    worker_tmp_size: str = Field(
        "1Gi", description="Size limit of the worker's writable `/tmp` (an emptyDir; the root is read-only)."
    )
    worker_owned_by_service_account: bool = Field(
        False,
        description="Make every worker pod a dependent of the controller's own service account (read "
        "from its in-cluster token), so deleting that account (`helm uninstall`) garbage-collects the "
        "worker pods, running ones included. Needs the workers in the controller's namespace.",
    )
    pod_ttl_seconds: float = Field(
        0,
        ge=0,
        description="How long a finished worker pod is kept after its outcome is stored, for `kubectl logs` "
        "and `describe`; 0 deletes it at once.",
    )
    unschedulable_after_seconds: float = Field(
        60,
        gt=0,
        description="How long a worker pod may stay unschedulable before the query fails as "
        "`unschedulable`. Limits no node could ever hold are refused with a 422 at submission instead.",
    )
    image_pull_grace_seconds: float = Field(
        60,
        gt=0,
        description="How long a worker pod may fail to pull its image before the query fails as `image`.",
    )
    kube_warm_pool_size: int = Field(
        0,
        ge=0,
        le=MAX_WARM_POOL_SIZE,
        description="Worker pods kept started ahead of demand at the default limits (`PODQ_DEFAULT_CPU`, "
        "`PODQ_DEFAULT_MEMORY`); a query with exactly those limits takes one (its request written to the "
        "waiting worker's stdin through `pods/attach`) instead of waiting for a pod to start, and the pool "
        "is refilled. Each idle pod holds its CPU and memory requests on a node. Needs `patch` on pods and "
        "`get`, `create` on `pods/attach`. 0: off, every query starts its own pod.",
    )
    kube_warm_pool_resize: bool = Field(
        True,
        description="With a warm pool, a query asking for more CPU and/or memory than the pool's size class "
        "(and less of neither, and no more polars threads) claims a pool pod and resizes it in place "
        "(`pods/resize`, Kubernetes v1.33 or later) instead of starting a cold pod; a resize refused or "
        "not applied within 10 s deletes that pod and starts the query cold (miss reason `resize_refused`). "
        "Needs `patch` on `pods/resize`. On by default: on the harness such a query took 1.9 s through a "
        "resized pool pod against 4.1 s (500m) to 5.6 s (200m) on a cold pod (BENCHMARKS.md). `false`: "
        "clusters older than v1.33, or a pool whose pods are not to grow.",
    )
    kube_warm_pool_max_idle_seconds: float = Field(
        600,
        ge=MIN_WARM_POOL_IDLE_SECONDS,
        description="An idle warm pool pod this many seconds old is deleted and replaced by a new one, so no "
        "pod pins its node (and its requests) for ever and a replacement lands where the scheduler would "
        "place a pod now. 10 minutes: a pod costs ~3 s to start, so recycling it costs little; at least 10, "
        "since a pool replaced faster than its pods start would never be ready.",
    )
    kube_qps: float = Field(
        20,
        gt=0,
        description="Sustained requests per second to the API server (kube-controller-manager's default). "
        "Each query makes 5 requests, so this bounds dispatch at `PODQ_KUBE_QPS / 5` pods per second.",
    )
    kube_burst: int = Field(30, ge=1, description="Requests allowed above `PODQ_KUBE_QPS` in a burst.")
    kube_request_timeout_seconds: float = Field(
        30, gt=0, description="Client-side timeout of every API request, so a dropped connection cannot hang."
    )
    kube_watch_seconds: int = Field(
        290, ge=1, description="Server-side timeout of one watch request; it is then resumed."
    )
    kube_relist_seconds: float = Field(
        300, gt=0, description="Period of a full relist of the worker pods, a safety net under the watch."
    )

    # API access.
    api_tokens: list[SecretStr] = Field(
        default_factory=list,
        description='Bearer tokens the API accepts, as a JSON list: `["t0k3n-a", "t0k3n-b"]`. With neither '
        "this nor `PODQ_API_TOKENS_FILE` set, auth is off. `/healthz`, `/readyz`, `/docs` and "
        "`/openapi.json` are always open.",
    )
    api_tokens_file: FilePath | None = Field(
        None,
        description="A file of bearer tokens, one per line (a mounted Secret). Re-read when it changes, so "
        "rotation needs no restart; set, it turns auth on even when empty (then no token is valid).",
    )
    metrics_require_auth: bool = Field(
        False, description="With auth on, `/metrics` also demands a token; off, scrapers need none."
    )
    idempotency_key_ttl_seconds: float = Field(
        86_400,
        gt=0,
        description="How long an `Idempotency-Key` is remembered; a retry within it gets the first query "
        "back, later the key is free again.",
    )

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme, sep, rest = value.get_secret_value().partition("://")
            if scheme not in ("postgresql", "postgres") or not sep or not rest:
                raise ValueError("must be a postgresql:// URL (postgresql://user:password@host:5432/db)")
        return value

    @model_validator(mode="after")
    def _retries(self) -> Settings:
        if self.default_retry_max_attempts > self.max_retry_attempts:
            raise ValueError(
                f"PODQ_DEFAULT_RETRY_MAX_ATTEMPTS ({self.default_retry_max_attempts}) must be at most "
                f"PODQ_MAX_RETRY_ATTEMPTS ({self.max_retry_attempts})"
            )
        return self

    @model_validator(mode="after")
    def _heartbeats(self) -> Settings:
        if self.replica_stale_seconds < 3 * self.heartbeat_seconds:
            raise ValueError(
                f"PODQ_REPLICA_STALE_SECONDS ({self.replica_stale_seconds}) must be at least 3 heartbeats "
                f"(PODQ_HEARTBEAT_SECONDS is {self.heartbeat_seconds})"
            )
        return self

    @field_validator("test_crash_at")
    @classmethod
    def _crash_at(cls, value: str | None) -> str | None:
        if value is not None:
            parse_crash_at(value)
        return value

    @field_validator("default_cpu", "max_cpu")
    @classmethod
    def _cpu(cls, value: str) -> str:
        parse_cpu_millicores(value)
        return value

    @field_validator("default_memory", "max_memory", "worker_tmp_size")
    @classmethod
    def _memory(cls, value: str) -> str:
        parse_memory_bytes(value)
        return value

    @field_validator("fetch_allowed_networks", "fetch_blocked_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)
        return value

    @property
    def database_path(self) -> Path:
        return self.data_dir / "podq.db"


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return f"`{json.dumps(field.default_factory())}`"  # type: ignore[call-arg]
    return "unset" if field.default is None else f"`{field.default}`"


def markdown_table() -> str:
    """The README's configuration table."""
    lines = ["| Variable | Default | Description |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "see description" if name in ("data_dir", "worker_python") else _default(field)
        lines.append(f"| `PODQ_{name.upper()}` | {default} | {field.description} |")
    return "\n".join(lines)


def update_readme(readme: Path) -> None:
    text = readme.read_text()
    start, end = "<!-- settings-table:start -->\n", "\n<!-- settings-table:end -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    readme.write_text(f"{head}{start}{markdown_table()}{end}{tail}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--update-readme"]:
        update_readme(Path(__file__).resolve().parents[1] / "README.md")
    else:
        print(markdown_table())
