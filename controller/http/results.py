"""`GET /v1/queries/{id}/result`: a succeeded query's result in the format the client asks for.

The worker's result carries its rows three times (worker_image/sql.py): as JSON (`rows`, what the record
shows) and typed, as the base64 of an Arrow IPC stream (`arrow`) and of a Parquet file (`parquet`), both
written by polars with zstd compression (worker_image/encode.py). The controller decodes nothing: it
serves what the worker wrote, so its image needs neither polars nor pyarrow, and every format holds the
same rows, cut by the same caps:

=========  ====================================  =========================================================
format     media type                            body
=========  ====================================  =========================================================
json       application/json                      the record's `result`: columns, rows, total_rows, truncation
csv        text/csv                              a header row, then the JSON rows: null is empty, booleans
                                                 and nested values are JSON, anything else its JSON text
arrow      application/vnd.apache.arrow.stream   the worker's Arrow IPC stream, as it wrote it
parquet    application/vnd.apache.parquet        the worker's Parquet file, as it wrote it
=========  ====================================  =========================================================

The format comes from `?format=` or else from `Accept` (q-values honoured; `*/*` or no header is JSON).
A result stored by a podq before typed results has no typed forms: it still renders as JSON and CSV,
and answers 409 for Arrow and Parquet.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from dataclasses import dataclass
from typing import Any

FORMATS: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
}
TYPED = frozenset({"arrow", "parquet"})
# Media types a client may ask for, beyond FORMATS' own (older or informal names of the same formats).
_ACCEPTED: dict[str, str] = {
    **{media.split(";")[0]: name for name, media in FORMATS.items()},
    "application/vnd.apache.arrow.file": "arrow",
    "application/x-parquet": "parquet",
    "application/*": "json",
    "text/*": "csv",
    "*/*": "json",
}


class NotAcceptable(Exception):
    """No format podq has matches the request."""


def negotiate(format_param: str | None, accept: str | None) -> str:
    """The format name: `format_param` if given, else the best match for `accept`; `NotAcceptable` if none."""
    if format_param is not None:
        if format_param not in FORMATS:
            raise NotAcceptable(f"unknown format {format_param!r}; podq has: {', '.join(FORMATS)}")
        return format_param
    if not accept or not accept.strip():
        return "json"
    choices: list[tuple[float, int, str]] = []
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        name = _ACCEPTED.get(media.lower())
        if name is not None and quality > 0:
            # Wildcards rank below a named type of the same quality.
            choices.append((quality, 0 if "*" in media else 1, name))
    if not choices:
        raise NotAcceptable(f"none of the media types in Accept is served; podq has: {_media_list()}")
    # max() keeps the first of equals: the client's order breaks ties.
    return max(choices, key=lambda choice: (choice[0], choice[1]))[2]


def _media_list() -> str:
    return ", ".join(media.split(";")[0] for media in FORMATS.values())


@dataclass(frozen=True)
class Rendered:
    body: bytes
    media_type: str
    headers: dict[str, str]


def has_typed(result: dict[str, Any]) -> bool:
    return all(isinstance(result.get(name), str) and result[name] for name in TYPED)


def truncation_headers(result: dict[str, Any]) -> dict[str, str]:
    """What the caps did, for every format (Arrow and Parquet bodies cannot say it themselves)."""
    headers = {
        "Podq-Total-Rows": str(result["total_rows"]),
        "Podq-Returned-Rows": str(len(result["rows"])),
        "Podq-Truncated": "true" if result["truncated"] else "false",
    }
    if result.get("truncated_by"):
        headers["Podq-Truncated-By"] = str(result["truncated_by"])
    return headers


def render(query_id: str, result: dict[str, Any], name: str) -> Rendered:
    """The result in format `name` (a key of FORMATS); a typed format needs a result stored with it
    (`has_typed`)."""
    headers = truncation_headers(result)
    if name != "json":
        extension = {"arrow": "arrows"}.get(name, name)
        headers["Content-Disposition"] = f'attachment; filename="{query_id}.{extension}"'
    if name == "json":
        public = {key: value for key, value in result.items() if key not in TYPED}
        body = json.dumps(public, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    elif name == "csv":
        body = _csv(result).encode()
    else:
        body = base64.b64decode(result[name])
    return Rendered(body, FORMATS[name], headers)


def _csv(result: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([column["name"] for column in result["columns"]])
    for row in result["rows"]:
        writer.writerow([_cell(value) for value in row])
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
