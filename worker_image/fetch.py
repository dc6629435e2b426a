"""Downloads dataset URLs to local files, within the request's timeouts and size cap.

Only http and https. Several URLs download concurrently; each has its own deadline
(`total_timeout_seconds`) on top of httpx's connect and read timeouts, so a server that drips bytes
cannot hold the worker past it. The size cap counts the bytes actually received (after any content
decoding); a Content-Length already above it is refused before the body is read. Proxy environment
variables are ignored and redirects are followed (at most `MAX_REDIRECTS`). Every failure is a typed
`WorkerError`: `validation` for a URL that cannot be fetched at all, `network` for the rest.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from worker_image.protocol import ErrorType, FetchOptions, WorkerError

MAX_REDIRECTS = 5
# Client errors that may well succeed when asked again.
_RETRYABLE_CLIENT_STATUSES = frozenset({408, 425, 429})


def check_url(url: str) -> None:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise WorkerError(ErrorType.VALIDATION, f"invalid dataset URL {url!r}: {exc}", url=url) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise WorkerError(
            ErrorType.VALIDATION,
            f"dataset URLs must be http:// or https:// with a host; refused {url!r}",
            url=url,
        )


def fetch_all(urls: Sequence[str], options: FetchOptions, directory: Path) -> list[Path]:
    """Downloads every URL into `directory`; returns the files in the order of `urls`."""
    for url in urls:
        check_url(url)
    return asyncio.run(_fetch_all(urls, options, directory)) if urls else []


async def _fetch_all(urls: Sequence[str], options: FetchOptions, directory: Path) -> list[Path]:
    timeout = httpx.Timeout(
        connect=options["connect_timeout_seconds"],
        read=options["read_timeout_seconds"],
        write=options["read_timeout_seconds"],
        pool=options["connect_timeout_seconds"],
    )
    async with httpx.AsyncClient(
        timeout=timeout, trust_env=False, follow_redirects=True, max_redirects=MAX_REDIRECTS
    ) as client:
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(_fetch_one(client, url, options, directory / f"dataset-{index}"))
                    for index, url in enumerate(urls)
                ]
        except BaseExceptionGroup as failures:
            # The group cancels the other downloads on the first failure; report that failure.
            raise _first_leaf(failures) from None
    return [task.result() for task in tasks]


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def _fetch_one(client: httpx.AsyncClient, url: str, options: FetchOptions, dest: Path) -> Path:
    total = options["total_timeout_seconds"]
    try:
        async with asyncio.timeout(total):
            await _download(client, url, options["max_download_bytes"], dest)
    except TimeoutError:
        raise _network(
            f"fetch timeout: {url} did not download within {total:g}s", url, timeout_seconds=total
        ) from None
    except httpx.ConnectTimeout:
        seconds = options["connect_timeout_seconds"]
        raise _network(
            f"fetch timeout: no connection to {url} within {seconds:g}s", url, timeout_seconds=seconds
        ) from None
    except httpx.ReadTimeout:
        seconds = options["read_timeout_seconds"]
        raise _network(
            f"fetch timeout: {url} sent no data for {seconds:g}s", url, timeout_seconds=seconds
        ) from None
    except httpx.ConnectError as exc:
        raise _connect_error(url, exc) from None
    except httpx.TooManyRedirects:
        raise _network(f"more than {MAX_REDIRECTS} redirects fetching {url}", url) from None
    except httpx.UnsupportedProtocol as exc:
        # Only a redirect can get here: the URL itself was checked before.
        raise WorkerError(
            ErrorType.VALIDATION, f"{url} redirected to an unsupported URL: {exc}", url=url
        ) from None
    except httpx.HTTPError as exc:
        raise _network(f"error fetching {url}: {type(exc).__name__}: {exc}", url) from None
    return dest


async def _download(client: httpx.AsyncClient, url: str, limit: int, dest: Path) -> None:
    async with client.stream("GET", url) as response:
        if response.is_error:
            raise _status_error(url, response)
        declared = _content_length(response)
        if declared is not None and declared > limit:
            raise _too_large(url, limit, content_length=declared)
        received = 0
        with dest.open("wb") as out:
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > limit:
                    raise _too_large(url, limit)
                out.write(chunk)


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _status_error(url: str, response: httpx.Response) -> WorkerError:
    status = response.status_code
    retryable = status >= 500 or status in _RETRYABLE_CLIENT_STATUSES
    reason = f" {response.reason_phrase}" if response.reason_phrase else ""
    return WorkerError(
        ErrorType.NETWORK,
        f"HTTP {status}{reason} fetching {url}",
        retryable=retryable,
        url=url,
        status_code=status,
    )


def _too_large(url: str, limit: int, content_length: int | None = None) -> WorkerError:
    if content_length is None:
        message = f"download too large: {url} sent more than the limit of {limit} bytes"
        extra: dict[str, Any] = {}
    else:
        message = (
            f"download too large: {url} declares {content_length} bytes, over the limit of {limit} bytes"
        )
        extra = {"content_length": content_length}
    return WorkerError(
        ErrorType.NETWORK, message, retryable=False, url=url, max_download_bytes=limit, **extra
    )


def _connect_error(url: str, exc: httpx.ConnectError) -> WorkerError:
    host = exc.request.url.host
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return _network(
                f"DNS lookup failed for host {host!r} fetching {url}: {cause.strerror}", url, host=host
            )
        if isinstance(cause, ConnectionRefusedError):
            port = exc.request.url.port or {"http": 80, "https": 443}[exc.request.url.scheme]
            return _network(f"connection refused by {host}:{port} fetching {url}", url, host=host, port=port)
        cause = cause.__cause__ or cause.__context__
    return _network(f"could not connect fetching {url}: {exc}", url, host=host)


def _network(message: str, url: str, **details: Any) -> WorkerError:
    return WorkerError(ErrorType.NETWORK, message, url=url, **details)
