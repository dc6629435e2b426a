"""Every attempt at a query, one row each in `attempts`: begun by the claim that starts it, ended with its
outcome in the transaction that records the query's, or interrupted when a controller stops or dies while
it runs. The record's `attempts` are these rows, oldest first; only the newest `KEPT` of a query are kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.queue.store.base import Connection, dumps, loads
from worker_image.protocol import ErrorType, error_info

# Attempts kept per query: a query handed back to the queue at every graceful stop has no bound of its own.
KEPT = 20

# The outcome of an attempt its controller stopped (gracefully) or lost (a crash, a takeover).
HANDED_BACK = error_info(
    ErrorType.INTERNAL, "the controller stopped gracefully while this attempt ran; the query was queued again"
)
INTERRUPTED = error_info(
    ErrorType.INTERNAL, "the controller running this attempt stopped (a restart, or another took over)"
)


@dataclass(frozen=True)
class Attempt:
    number: int
    limits: dict[str, Any]
    # running | succeeded | failed | cancelled | interrupted
    status: str
    error: dict[str, Any] | None
    placement: dict[str, Any]
    started_at: float
    finished_at: float | None
    # What it used (controller/launchers/usage.py); None when nothing was recorded.
    usage: dict[str, Any] | None = None


def begin(db: Connection, query_id: str, limits: str, now: float) -> None:
    """A claimed query's new attempt (`limits`: as the queries row stores them), and the oldest beyond
    `KEPT` dropped."""
    db.execute(
        "INSERT INTO attempts (query_id, number, limits, status, started_at)"
        " SELECT ?, COALESCE(MAX(number), 0) + 1, ?, 'running', ? FROM attempts WHERE query_id = ?",
        (query_id, limits, now, query_id),
    )
    db.execute(
        "DELETE FROM attempts WHERE query_id = ?"
        " AND number <= (SELECT MAX(number) FROM attempts WHERE query_id = ?) - ?",
        (query_id, query_id, KEPT),
    )


def end(
    db: Connection,
    query_ids: Sequence[str],
    status: str,
    *,
    now: float,
    error: Mapping[str, object] | None = None,
    placement: Mapping[str, Any] | None = None,
    usage: Mapping[str, Any] | None = None,
) -> None:
    """End the running attempt of each query with `status` (and what is known of it)."""
    if not query_ids:
        return
    marks = ", ".join("?" * len(query_ids))
    db.execute(
        "UPDATE attempts SET status = ?, error = ?, placement = COALESCE(?, placement), usage = ?,"
        f" finished_at = ? WHERE finished_at IS NULL AND query_id IN ({marks})",
        (status, dumps(error), dumps(placement), dumps(usage), now, *query_ids),
    )


def of(db: Connection, query_ids: Sequence[str]) -> dict[str, list[Attempt]]:
    """The kept attempts of each query, oldest first (a query that never started has none)."""
    found: dict[str, list[Attempt]] = {query_id: [] for query_id in query_ids}
    if not query_ids:
        return found
    marks = ", ".join("?" * len(query_ids))
    raws = db.execute(
        f"SELECT * FROM attempts WHERE query_id IN ({marks}) ORDER BY query_id, number", tuple(query_ids)
    ).fetchall()
    for raw in raws:
        found[raw["query_id"]].append(
            Attempt(
                number=raw["number"],
                limits=loads(raw["limits"]),
                status=raw["status"],
                error=loads(raw["error"]),
                placement=loads(raw["placement"]),
                started_at=raw["started_at"],
                finished_at=raw["finished_at"],
                usage=loads(raw["usage"]),
            )
        )
    return found
