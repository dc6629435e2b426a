"""The controller's log lines: text (the default) or one JSON object per line (`PODQ_LOG_FORMAT=json`),
for the controller's own loggers and uvicorn's access log alike.

A JSON line has `time` (ISO 8601, UTC), `level`, `logger` and `message`, and where they apply:
`query_id`, `attempt` and `pod` (bound for everything logged while a query runs, by `bind_query` and
`bind_pod`, or given as ``extra``), `error_type` (given as ``extra``), `exception` (the traceback), and
for an access line `client`, `method`, `path`, `http_version` and `status`. A line about a query logged
outside its run follows the code's convention, ``"query %s: ..."`` with the id first, and gets its
`query_id` from there.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from contextvars import ContextVar
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_query_id: ContextVar[str | None] = ContextVar("podq_query_id", default=None)
_attempt: ContextVar[int | None] = ContextVar("podq_attempt", default=None)
_pod: ContextVar[str | None] = ContextVar("podq_pod", default=None)


def bind_query(query_id: str, attempt: int) -> None:
    """Every line logged from here on in this task (and tasks it starts) is about this query's attempt."""
    _query_id.set(query_id)
    _attempt.set(attempt)


def bind_pod(name: str) -> None:
    """... and about this pod."""
    _pod.set(name)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, http_version, status = record.args
            line.update(client=client, method=method, path=path, http_version=http_version, status=status)
        line.update(self._query_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)

    @staticmethod
    def _query_fields(record: logging.LogRecord) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        query_id = getattr(record, "query_id", None) or _query_id.get()
        if query_id is None and str(record.msg).startswith("query %s") and isinstance(record.args, tuple):
            query_id = record.args[0] if record.args else None
        for name, value in (
            ("query_id", query_id),
            ("attempt", getattr(record, "attempt", None) or _attempt.get()),
            ("pod", getattr(record, "pod", None) or _pod.get()),
            ("error_type", getattr(record, "error_type", None)),
        ):
            if value is not None:
                fields[name] = value
        return fields


def logging_config(log_format: LogFormat, level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the controller and uvicorn (passed as uvicorn's `log_config`).

    uvicorn's own messages stay at WARNING, as before; its access log is on, one line per request.
    """
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if log_format == "json" else {"format": TEXT_FORMAT}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "podq", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"podq": formatter},
        "handlers": {"podq": handler},
        "root": {"handlers": ["podq"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "level": "WARNING", "propagate": True},
            "uvicorn.error": {"handlers": [], "level": "WARNING", "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "INFO", "propagate": True},
        },
    }
