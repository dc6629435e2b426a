"""`Client`: the controller's API, blocking (httpx.Client underneath)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

import httpx

from podq.client import _calls
from podq.client._calls import Call, Datasets, ResultFormat
from podq.client.errors import Unreachable, WaitTimeout, query_failed
from podq.client.records import Page, Readiness, Record, ResultFile

DEFAULT_URL = "http://127.0.0.1:8000"


class Client:
    """A podq controller at `url`, with `token` as bearer token when auth is on.

    Submissions carry an `Idempotency-Key` (a new one unless given), so after a transport error they are
    sent again, up to `retries` times, without risk of a second run. Use as a context manager, or
    `close()` it.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self._http = httpx.Client(
            base_url=self.url, headers=_calls.auth_headers(token), timeout=timeout, transport=transport
        )

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        """`PODQ_URL` (default http://127.0.0.1:8000) and `PODQ_TOKEN`."""
        return cls(os.environ.get("PODQ_URL") or DEFAULT_URL, token=os.environ.get("PODQ_TOKEN"), **kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, call: Call) -> Any:
        attempts = 1 + (self.retries if call.repeatable else 0)
        for attempt in range(attempts):
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.body,
                    headers=call.headers,
                    timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                if attempt + 1 == attempts:
                    raise Unreachable(self.url, exc) from exc
                time.sleep(0.5 * 2**attempt)  # sleep-ok: backoff between retries of a lost request
                continue
            return _calls.check(call, response)
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- queries

    def submit(
        self,
        sql: str,
        datasets: Datasets | None = None,
        *,
        cpu: str | None = None,
        memory: str | None = None,
        timeout_seconds: float | None = None,
        queue_timeout_seconds: float | None = None,
        max_rows: int | None = None,
        retry: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        debug: dict[str, Any] | None = None,
    ) -> Record:
        """Queue a query; `datasets` maps table names to parquet URLs. Returns the record (queued).
        `timeout_seconds` bounds the run, `queue_timeout_seconds` the wait before it starts; `retry`
        (`{max_attempts, on, memory_factor, max_memory}`) runs it again after a failed attempt."""
        call = _calls.submit(
            sql,
            datasets,
            cpu=cpu,
            memory=memory,
            timeout_seconds=timeout_seconds,
            queue_timeout_seconds=queue_timeout_seconds,
            max_rows=max_rows,
            retry=retry,
            idempotency_key=idempotency_key,
            debug=debug,
        )
        record: Record = self._call(call)
        return record

    def get(self, query_id: str, *, wait: float | None = None) -> Record:
        """The query's record; with `wait`, held up to that many seconds (at most 300) until it finishes."""
        record: Record = self._call(_calls.get("query", query_id, wait))
        return record

    def list(self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None) -> Page:
        """One page of queries, newest first."""
        page: Page = self._call(_calls.list_queries(status, limit, cursor))
        return page

    def iter_queries(self, *, status: str | None = None, page_size: int = 100) -> Iterator[Record]:
        """Every query, newest first, following the cursors."""
        cursor: str | None = None
        while True:
            page = self.list(status=status, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def wait(self, query_id: str, *, timeout: float | None = None, raise_on_failure: bool = False) -> Record:
        """Long-poll until the query is finished; `WaitTimeout` after `timeout` seconds (None: no limit).
        With `raise_on_failure`, a failed or cancelled query raises its `QueryFailed` subclass."""
        return self._wait("query", query_id, timeout, raise_on_failure)

    def result(self, query_id: str, *, format: ResultFormat = "arrow") -> ResultFile:
        """A succeeded query's result as a file: ``arrow`` (an Arrow IPC stream, the default), ``parquet``,
        ``csv`` or ``json``; Arrow and Parquet keep every column's type. `Conflict` unless it succeeded."""
        file: ResultFile = self._call(_calls.result(query_id, format))
        return file

    def cancel(self, query_id: str) -> Record:
        """Cancel; `Conflict` if it had already succeeded or failed. Cancelling twice is fine."""
        record: Record = self._call(_calls.cancel(query_id))
        return record

    def run(
        self, sql: str, datasets: Datasets | None = None, *, wait_timeout: float | None = None, **kw: Any
    ) -> Record:
        """Submit, wait, and raise the query's `QueryFailed` subclass unless it succeeded."""
        record = self.submit(sql, datasets, **kw)
        return self.wait(record.id, timeout=wait_timeout, raise_on_failure=True)

    # ---------------------------------------------------------------- inspections

    def inspect(
        self,
        url: str,
        *,
        cpu: str | None = None,
        memory: str | None = None,
        timeout_seconds: float | None = None,
        queue_timeout_seconds: float | None = None,
        idempotency_key: str | None = None,
        debug: dict[str, Any] | None = None,
    ) -> Record:
        """Queue an inspection of one parquet dataset; its result is an `InspectionResult`."""
        call = _calls.inspect(
            url,
            cpu=cpu,
            memory=memory,
            timeout_seconds=timeout_seconds,
            queue_timeout_seconds=queue_timeout_seconds,
            idempotency_key=idempotency_key,
            debug=debug,
        )
        record: Record = self._call(call)
        return record

    def get_inspection(self, inspection_id: str, *, wait: float | None = None) -> Record:
        record: Record = self._call(_calls.get("inspect", inspection_id, wait))
        return record

    def wait_inspection(
        self, inspection_id: str, *, timeout: float | None = None, raise_on_failure: bool = False
    ) -> Record:
        return self._wait("inspect", inspection_id, timeout, raise_on_failure)

    # ---------------------------------------------------------------- operations

    def healthz(self) -> bool:
        """True while the controller serves; `Unreachable` when it does not answer."""
        self._call(_calls.healthz())
        return True

    def readyz(self) -> Readiness:
        """Whether the store answers and the launcher can run queries (a 503 is `ready=False`)."""
        readiness: Readiness = self._call(_calls.readyz())
        return readiness

    def _wait(self, operation: str, record_id: str, timeout: float | None, raise_on_failure: bool) -> Record:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            record: Record = self._call(_calls.get(operation, record_id, _calls.next_poll(remaining)))
            if record.finished:
                if raise_on_failure and record.status != "succeeded":
                    raise query_failed(record)
                return record
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(record, timeout or 0.0)
