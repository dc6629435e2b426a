"""The `podq` command: `podq serve` runs the controller; the commands that talk to one (submit, get, list,
wait, cancel, inspect, result) are podq/cli.py, on the Python client."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from podq.cli import EXAMPLES, add_commands
from podq.render import format_table

__all__ = ["build_parser", "format_table", "main"]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from controller.http.app import create_app
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
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(f"podq serving on http://{settings.host}:{settings.port} (data in {settings.data_dir})", flush=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podq",
        description="Run SQL over parquet datasets on a podq controller, or run the controller itself.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the controller (settings from PODQ_* env)")
    serve.add_argument("--host", help="listen address (PODQ_HOST)")
    serve.add_argument("--port", type=int, help="listen port (PODQ_PORT)")
    serve.add_argument("--data-dir", help="store and scratch directory (PODQ_DATA_DIR)")
    serve.add_argument("--max-concurrent", type=int, help="queries running at once (PODQ_MAX_CONCURRENT)")
    serve.set_defaults(func=_serve)

    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
