"""A worker started before its request: import everything a query needs, then wait for exactly one request.

Used by the local zygote (`warm_up` only) and by a warm pod on Kubernetes, whose worker has
``PODQ_REQUEST_STDIN=1`` (`protocol.REQUEST_STDIN_ENV`) and no ``PODQ_REQUEST``: it warms up, then blocks
on stdin until the controller attaches (``pods/attach``) and writes the request as one line of JSON.
Whatever else arrives — end of input before a newline, a line longer than `MAX_REQUEST_BYTES`, a line that
is not a JSON object — is no request: the worker exits with `protocol.EXIT_NO_REQUEST` and prints nothing,
so a pod nobody claimed (or whose attach broke) never looks like a query's result.
"""

from __future__ import annotations

import json
from typing import BinaryIO

# Far above any request the controller sends (its body and SQL size caps), so only garbage reaches it.
MAX_REQUEST_BYTES = 16 * 2**20


def warm_up() -> None:
    """Import everything a query imports and build what every query builds alike, so a query pays for
    none of it (tests/integration/test_zygote_warm_up.py checks that a forked child imports nothing more)."""
    # What httpcore (anyio's backend, on the first connection) and polars (its parquet options, on the
    # first scan) import only when a query first needs them.
    import anyio._backends._asyncio  # noqa: F401
    import httpx  # noqa: F401
    import polars
    import polars._utils.parquet  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import sqlglot  # noqa: F401

    import worker_image.__main__
    import worker_image.fetch
    import worker_image.schema
    import worker_image.sql  # noqa: F401
    from worker_image.pinned import ssl_context
    from worker_image.sqlguard import check_query

    # sqlglot loads its dialect (~150 ms) at the first parse; parsing is pure Python and runs no query.
    check_query("SELECT 1 AS x FROM t", ["t"])
    # Parsing the CA bundle takes tens of milliseconds; the context is the same for every query.
    ssl_context()


def wait_for_request(stream: BinaryIO) -> str | None:
    """The one request line read from `stream` (blocks until it arrives), or None when there is none."""
    line = stream.readline(MAX_REQUEST_BYTES + 1)
    if not line.endswith(b"\n"):
        return None  # end of input first, or an overlong line
    try:
        text = line.decode()
        request = json.loads(text)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both are
        return None
    return text if isinstance(request, dict) else None
