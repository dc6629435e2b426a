"""Downloads dataset URLs to local files, within the request's timeouts, size cap and address policy.

Only http and https, without user name or password. Several URLs download concurrently; each has its
own deadline (`total_timeout_seconds`) on top of httpx's connect and read timeouts, so a server that
drips bytes cannot hold the worker past it. The size cap counts decoded bytes while streaming
(worker_image/decoding.py); a Content-Length above it is refused before the body is read when the body
is not encoded (an encoded length says nothing about the decoded size). Proxy environment variables
are ignored.

Addresses follow the request's `FetchPolicy` (worker_image/netpolicy.py): every connection is made by
worker_image/pinned.py to an address judged after the one lookup. Redirects are followed, at most
`MAX_REDIRECTS`, and each hop is judged like the first URL: refusing them all would break ordinary
storage (presigned URLs, CDNs), and the check happens at connect time anyway.

Every failure is a typed `WorkerError`: `validation` for a URL that may not or cannot be fetched at all
(including one refused by the address policy), `network` for the rest.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx

from worker_image.decoding import ACCEPT_ENCODING, Decoder, DecodingError, decoder_for
from worker_image.netpolicy import FetchPolicy, Refused
from worker_image.netpolicy import check_url as check_policy
from worker_image.pinned import pinned_transport
from worker_image.protocol import ErrorType, FetchOptions, WorkerError

MAX_REDIRECTS = 5
# Client errors that may well succeed when asked again.
_RETRYABLE_CLIENT_STATUSES = frozenset({408, 425, 429})


def policy_of(options: FetchOptions) -> FetchPolicy:
    try:
        return FetchPolicy.from_lists(
            options.get("allowed_networks", []), options.get("blocked_networks", [])
        )
    except ValueError as exc:
        raise WorkerError(ErrorType.VALIDATION, f"invalid fetch network list: {exc}") from None


def check_url(url: str, policy: FetchPolicy) -> None:
    try:
        check_policy(url, policy)
    except Refused as exc:
        raise _refused(url, exc) from None


def _refused(url: str, exc: Refused) -> WorkerError:
    # A refusal is `validation`, not `network`: it follows from where the URL points, so asking again
    # cannot change it (network errors are retryable), and no connection was attempted.
    return WorkerError(
        ErrorType.VALIDATION, exc.message, retryable=False, url=_redacted(url), **exc.details()
    )


def _redacted(url: str) -> str:
    try:
        return str(httpx.URL(url).copy_with(userinfo=b""))
    except httpx.InvalidURL:
        return url


def fetch_all(urls: Sequence[str], options: FetchOptions, directory: Path) -> list[Path]:
    """Downloads every URL into `directory`; returns the files in the order of `urls`."""
    policy = policy_of(options)
    for url in urls:
        check_url(url, policy)
    return asyncio.run(_fetch_all(urls, options, policy, directory)) if urls else []


def _hop_check(policy: FetchPolicy) -> Callable[[httpx.Request], Awaitable[None]]:
    """Judges each request's URL, redirects included; the addresses of a name are judged on connect."""

    async def check(request: httpx.Request) -> None:
        check_policy(str(request.url), policy)

    return check


async def _fetch_all(
    urls: Sequence[str], options: FetchOptions, policy: FetchPolicy, directory: Path
) -> list[Path]:
    timeout = httpx.Timeout(
        connect=options["connect_timeout_seconds"],
        read=options["read_timeout_seconds"],
        write=options["read_timeout_seconds"],
        pool=options["connect_timeout_seconds"],
    )
    async with httpx.AsyncClient(
        transport=pinned_transport(policy),
        timeout=timeout,
        trust_env=False,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        headers={"Accept-Encoding": ACCEPT_ENCODING},
        event_hooks={"request": [_hop_check(policy)]},
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
    except Refused as exc:
        raise _refused(url, exc) from None
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
        encoding = response.headers.get("content-encoding")
        try:
            decoder = decoder_for(encoding)
        except DecodingError as exc:
            raise _network(f"{exc} fetching {url}", url, retryable=False) from None
        declared = _content_length(response)
        if encoding is None and declared is not None and declared > limit:
            raise _too_large(url, limit, content_length=declared)
        received = 0
        with dest.open("wb") as out:
            async with aclosing(_decoded(response, decoder, url)) as pieces:
                async for piece in pieces:
                    received += len(piece)
                    if received > limit:
                        raise _too_large(url, limit)
                    out.write(piece)


async def _decoded(response: httpx.Response, decoder: Decoder, url: str) -> AsyncGenerator[bytes]:
    try:
        async for raw in response.aiter_raw():
            for piece in decoder.feed(raw):
                yield piece
        for piece in decoder.flush():
            yield piece
    except DecodingError as exc:
        raise _network(f"{exc} fetching {url}", url, retryable=False) from None


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


def _network(message: str, url: str, retryable: bool | None = None, **details: Any) -> WorkerError:
    return WorkerError(ErrorType.NETWORK, message, retryable=retryable, url=url, **details)
