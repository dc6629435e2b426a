"""The `podq` commands that talk to a controller, on `podq.client` (`podq serve` is controller/cli.py).

Exit codes: 0 success; 1 the query or inspection failed or was cancelled (its typed error on stderr);
2 the controller could not be reached or refused the request (HTTP 4xx/5xx), or the command line is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from podq.client import (
    DEFAULT_URL,
    APIError,
    Client,
    InspectionResult,
    PodqError,
    QueryResult,
    Record,
    Unreachable,
)
from podq.render import format_inspection, format_records, format_table

EXIT_OK = 0
EXIT_QUERY_FAILED = 1
EXIT_REFUSED = 2

EXAMPLES = """\
examples:
  podq submit --sql "SELECT 1 AS x" --wait
  podq submit --wait --memory 1Gi --dataset t=https://data.example.com/sales.parquet \\
      --sql "SELECT name, sum(value) AS total FROM t GROUP BY name"
  id=$(podq submit --sql "SELECT 42 AS answer")     # without --wait: prints the query's id
  podq wait "$id"
  podq get "$id" --output json
  podq list --status failed --limit 10
  podq result "$id" --format csv -o answer.csv
  podq result "$id" --format parquet -o answer.parquet   # typed: decimals, time zones, lists
  podq inspect https://data.example.com/sales.parquet
  podq cancel "$id"

environment:
  PODQ_URL    the controller (default http://127.0.0.1:8000; --url overrides)
  PODQ_TOKEN  bearer token, when the controller has auth on

exit codes:
  0  success
  1  the query (or inspection) failed or was cancelled; its typed error goes to stderr
  2  the controller could not be reached or refused the request, or the command line is wrong
"""


def _dataset(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url:
        raise argparse.ArgumentTypeError(f"expected NAME=URL, got {text!r}")
    return name, url


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, token=os.environ.get("PODQ_TOKEN") or None)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _failed(record: Record) -> int:
    error = record.error
    kind = error.error_type if error else record.status
    message = error.message if error else ""
    print(f"{record.operation} {record.id} {record.status}: {kind}: {message}", file=sys.stderr)
    if error and error.details:
        print(json.dumps(error.details, indent=2), file=sys.stderr)
    return EXIT_QUERY_FAILED


def _show(record: Record, output: str) -> int:
    """A record as --output asks; the exit code follows its status."""
    if output == "json":
        _print_json(record.raw)
    elif isinstance(record.result, QueryResult):
        print(format_table(record.result))
    elif isinstance(record.result, InspectionResult):
        print(format_inspection(record.result))
    elif not record.finished:
        print(f"{record.operation} {record.id} is {record.status}")
    if record.status in ("failed", "cancelled"):
        return _failed(record) if output != "json" else EXIT_QUERY_FAILED
    return EXIT_OK


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "cpu": args.cpu,
        "memory": args.memory,
        "timeout_seconds": args.timeout,
        "queue_timeout_seconds": args.queue_timeout,
    }


def _submit(podq: Client, args: argparse.Namespace) -> int:
    record = podq.submit(
        args.sql,
        dict(args.dataset),
        max_rows=args.max_rows,
        idempotency_key=args.idempotency_key,
        **_limits(args),
    )
    if args.wait:
        return _show(podq.wait(record.id), args.output)
    if args.output == "json":
        _print_json(record.raw)
    else:
        print(record.id)
    return EXIT_OK


def _get(podq: Client, args: argparse.Namespace) -> int:
    return _show(podq.get(args.id, wait=args.wait), args.output)


def _wait(podq: Client, args: argparse.Namespace) -> int:
    return _show(podq.wait(args.id), args.output)


def _list(podq: Client, args: argparse.Namespace) -> int:
    page = podq.list(status=args.status, limit=args.limit, cursor=args.cursor)
    if args.output == "json":
        _print_json({"items": [r.raw for r in page.items], "next_cursor": page.next_cursor})
    else:
        print(format_records(page.items))
        if page.next_cursor:
            print(f"(more: --cursor {page.next_cursor})")
    return EXIT_OK


def _cancel(podq: Client, args: argparse.Namespace) -> int:
    record = podq.cancel(args.id)
    if args.output == "json":
        _print_json(record.raw)
    else:
        print(f"query {record.id} cancelled")
    return EXIT_OK


def _inspect(podq: Client, args: argparse.Namespace) -> int:
    record = podq.inspect(args.dataset_url, idempotency_key=args.idempotency_key, **_limits(args))
    return _show(podq.wait_inspection(record.id), args.output)


def _result(podq: Client, args: argparse.Namespace) -> int:
    record = podq.wait(args.id)
    if record.status != "succeeded" or not isinstance(record.result, QueryResult):
        return _failed(record)
    file = podq.result(args.id, format=args.format)
    content = file.content
    if args.format == "json":
        # The API's compact JSON, indented for a reader; the same values.
        content = (json.dumps(json.loads(content), ensure_ascii=False, indent=2) + "\n").encode()
    if args.file is not None:
        Path(args.file).write_bytes(content)
        print(f"wrote {file.returned_rows} rows to {args.file}", file=sys.stderr)
    elif args.format in ("arrow", "parquet") and sys.stdout.isatty():
        print(f"podq: {args.format} is binary: write it to a file with -o FILE", file=sys.stderr)
        return EXIT_REFUSED
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(content)
        sys.stdout.buffer.flush()
    if file.truncated:
        print(
            f"podq: the result was cut by max_{file.truncated_by or 'rows'}: "
            f"{file.returned_rows} of {file.total_rows} rows",
            file=sys.stderr,
        )
    return EXIT_OK


def run(handler: Any, args: argparse.Namespace) -> int:
    """Runs a command's handler with a client, turning the client's exceptions into exit codes."""
    try:
        with _client(args) as podq:
            code: int = handler(podq, args)
            return code
    except Unreachable as exc:
        print(f"podq: {exc}", file=sys.stderr)
    except APIError as exc:
        print(f"podq: {exc}", file=sys.stderr)
        errors = exc.error.details.get("errors")
        if errors:
            print(json.dumps(errors, indent=2), file=sys.stderr)
    except PodqError as exc:
        print(f"podq: {exc}", file=sys.stderr)
    return EXIT_REFUSED


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("PODQ_URL") or DEFAULT_URL,
        help="the controller (default: $PODQ_URL, else %(default)s)",
    )
    common.add_argument(
        "--output",
        choices=["table", "json"],
        default="table",
        help="table (default): the result as a table that fits the terminal; json: the whole record",
    )
    return common


def _limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cpu", help="CPU limit, a Kubernetes quantity: 500m, 2")
    parser.add_argument("--memory", help="memory limit, a Kubernetes quantity: 512Mi, 2Gi")
    parser.add_argument("--timeout", type=float, help="run deadline in seconds, once the worker runs")
    parser.add_argument(
        "--queue-timeout", type=float, help="queue deadline in seconds: how long it may wait to start running"
    )
    parser.add_argument("--idempotency-key", help="sent as Idempotency-Key (default: a new random key)")


def add_commands(commands: Any) -> None:
    """Adds submit, get, list, wait, cancel, inspect and result to `podq`'s subcommands."""
    common = _common()

    def command(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text,
            epilog=EXAMPLES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(func=lambda args: run(handler, args))
        return parser

    submit = command("submit", _submit, "submit a query; with --wait, wait and print its result")
    submit.add_argument("--sql", required=True, help="one SELECT statement")
    submit.add_argument(
        "--dataset",
        type=_dataset,
        action="append",
        default=[],
        metavar="NAME=URL",
        help="register the parquet file at URL as table NAME (repeatable)",
    )
    _limit_options(submit)
    submit.add_argument("--max-rows", type=int, help="rows returned at most")
    submit.add_argument("--wait", action="store_true", help="wait for the query to finish")
    submit.add_argument(
        "--json", dest="output", action="store_const", const="json", help="same as --output json"
    )

    get = command("get", _get, "print a query's record, or its result once it succeeded")
    get.add_argument("id")
    get.add_argument(
        "--wait", type=float, metavar="SECONDS", help="wait up to SECONDS (at most 300) for it to finish"
    )

    listing = command("list", _list, "list queries, newest first")
    listing.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    listing.add_argument(
        "--limit", type=int, default=20, help="at most this many (1-500; default %(default)s)"
    )
    listing.add_argument("--cursor", help="the page after this cursor (printed under a full page)")

    wait = command("wait", _wait, "wait for a query to finish and print its result")
    wait.add_argument("id")

    cancel = command(
        "cancel", _cancel, "cancel a queued or running query (exits 2 if it had already finished)"
    )
    cancel.add_argument("id")

    inspect = command("inspect", _inspect, "inspect one parquet dataset: its columns, types and row count")
    inspect.add_argument("dataset_url", metavar="URL")
    _limit_options(inspect)

    result = command(
        "result", _result, "wait for a query and write its result as CSV, JSON, Arrow or Parquet"
    )
    result.add_argument("id")
    result.add_argument(
        "--format",
        choices=["csv", "json", "arrow", "parquet"],
        default="csv",
        help="csv (default), json (columns with types, rows), arrow (an Arrow IPC stream) or parquet; "
        "Arrow and Parquet keep every column's type and need -o FILE on a terminal",
    )
    result.add_argument("-o", "--file", metavar="FILE", help="write to FILE instead of stdout")
