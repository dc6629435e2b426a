"""The `podq` command: `podq serve` runs the controller; the commands that talk to one (submit, get, list,
wait, cancel, inspect, result) are podq/cli.py, on the Python client."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from podq.cli import EXAMPLES, add_commands
from podq.render import format_table

__all__ = ["build_parser", "format_table", "main"]

# `podq serve` refusing to start: bad settings, or a store it cannot open.
EXIT_USAGE = 2
EXIT_STORE = 3
EXIT_KUBECONFIG = 4


def _serve(args: argparse.Namespace) -> int:
    import logging.config

    import uvicorn
    from pydantic import ValidationError

    from controller.http.app import create_app
    from controller.logs import logging_config
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
    if settings.launcher == "kubernetes":
        # A kubeconfig that cannot be used (a missing file, an unknown context, an exec plugin that fails)
        # stops the controller here with one line, not in the app's startup with a traceback.
        from controller.launchers.kubernetes.client.config import KubeConfigError, load_config

        try:
            load_config(settings.kube_config, settings.kube_context)
        except KubeConfigError as exc:
            print(f"podq: refusing to start: {exc}", file=sys.stderr)
            return EXIT_KUBECONFIG
    config = logging_config(settings.log_format, settings.log_level)
    logging.config.dictConfig(config)
    try:
        store = open_store(settings)
    except (StoreUnavailable, SchemaTooNew) as exc:
        print(f"podq: refusing to start: {exc}", file=sys.stderr)
        return EXIT_STORE
    serving = f"podq serving on http://{settings.host}:{settings.port} ({store.description})"
    if settings.log_format == "text":
        print(serving, flush=True)
    else:  # stdout and stderr carry JSON lines only
        logging.getLogger(__name__).info("%s", serving)
    uvicorn.run(create_app(settings, store), host=settings.host, port=settings.port, log_config=config)
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
