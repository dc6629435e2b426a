"""The `podq` command: `podq serve` runs the controller, `podq submit` sends it a query."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_QUERY_FAILED = 1
EXIT_USAGE = 2
EXIT_STORE = 3


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from controller.http.app import create_app
    from controller.queue.store import SchemaTooNew, StoreUnavailable, open_store
    from controller.settings import Settings

    overrides = {
        k: v
        for k, v in (
            ("host", args.host),
            ("port", args.port),
            ("data_dir", args.data_dir),
            ("max_concurrent", args.max_concurrent),
        )
        if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            print(
                f"podq: refusing to start: {f'PODQ_{where.upper()}: ' if where else ''}{error['msg']}",
                file=sys.stderr,
            )
        return EXIT_USAGE
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        store = open_store(settings)
    except (StoreUnavailable, SchemaTooNew) as exc:
        print(f"podq: refusing to start: {exc}", file=sys.stderr)
        return EXIT_STORE
    print(f"podq serving on http://{settings.host}:{settings.port} ({store.description})", flush=True)
    uvicorn.run(create_app(settings, store), host=settings.host, port=settings.port, log_level="warning")
    return 0


def _dataset(text: str) -> dict[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url:
        raise argparse.ArgumentTypeError(f"expected NAME=URL, got {text!r}")
    return {"table_name": name, "url": url}


def _submit(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"sql": args.sql, "datasets": args.dataset}
    limits = {
        k: v
        for k, v in (("cpu", args.cpu), ("memory", args.memory), ("timeout_seconds", args.timeout))
        if v is not None
    }
    if limits:
        body["limits"] = limits
    if args.max_rows is not None:
        body["max_rows"] = args.max_rows
    headers = {}
    if token := os.environ.get("PODQ_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    with httpx.Client(base_url=args.url, headers=headers, timeout=30) as client:
        try:
            response = client.post("/v1/queries", json=body)
            if response.status_code != 202:
                return _print_error(response.json(), f"HTTP {response.status_code}")
            record = response.json()
            while args.wait and record["status"] in ("queued", "running"):
                response = client.get(f"/v1/queries/{record['id']}", params={"wait": 60}, timeout=90)
                response.raise_for_status()
                record = response.json()
        except httpx.HTTPError as exc:
            print(f"podq: cannot reach {args.url}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.json:
        print(json.dumps(record, indent=2))
    elif record["status"] == "succeeded":
        print(format_table(record["result"]))
    elif record["error"]:
        return _print_error(record["error"], record["status"])
    else:
        print(f"query {record['id']} is {record['status']}")
    return 0 if record["status"] in ("succeeded", "queued", "running") else EXIT_QUERY_FAILED


def _print_error(error: dict[str, Any], label: str) -> int:
    print(f"{label}: {error.get('error_type')}: {error.get('message')}", file=sys.stderr)
    if error.get("details"):
        print(json.dumps(error["details"], indent=2), file=sys.stderr)
    return EXIT_QUERY_FAILED


def format_table(result: dict[str, Any]) -> str:
    """A plain text table of a query result, with a footer when rows were cut."""
    headers = [c["name"] for c in result["columns"]]
    cells = [["NULL" if v is None else str(v) for v in row] for row in result["rows"]]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = [
        " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
        "-+-".join("-" * w for w in widths),
        *(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells),
    ]
    shown, total = len(result["rows"]), result["total_rows"]
    lines.append(f"({shown} of {total} rows)" if result["truncated"] else f"({total} rows)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podq", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the controller (settings from PODQ_* env)")
    serve.add_argument("--host", help="listen address (PODQ_HOST)")
    serve.add_argument("--port", type=int, help="listen port (PODQ_PORT)")
    serve.add_argument("--data-dir", help="store and scratch directory (PODQ_DATA_DIR)")
    serve.add_argument("--max-concurrent", type=int, help="queries running at once (PODQ_MAX_CONCURRENT)")
    serve.set_defaults(func=_serve)

    submit = commands.add_parser("submit", help="submit a query and print its result")
    submit.add_argument("--url", default=os.environ.get("PODQ_URL", DEFAULT_URL), help="controller URL")
    submit.add_argument("--sql", required=True)
    submit.add_argument(
        "--dataset",
        type=_dataset,
        action="append",
        default=[],
        metavar="NAME=URL",
        help="register the parquet at URL as table NAME (repeatable)",
    )
    submit.add_argument("--cpu")
    submit.add_argument("--memory")
    submit.add_argument("--timeout", type=float, help="deadline in seconds")
    submit.add_argument("--max-rows", type=int)
    submit.add_argument("--wait", action="store_true", help="wait for the result")
    submit.add_argument("--json", action="store_true", help="print the whole record as JSON")
    submit.set_defaults(func=_submit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
