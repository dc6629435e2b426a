"""`python -m worker_image`: run the one operation in the request and report it as one envelope.

See `worker_image.protocol` for the contract: request in ``PODQ_REQUEST``, the envelope as the last line
of stdout, the exit code, and the termination-message file for errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from worker_image.protocol import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    EXIT_INTERNAL_ERROR,
    EXIT_USER_ERROR,
    REQUEST_ENV,
    TERMINATION_MESSAGE_ENV,
    ErrorInfo,
    ErrorType,
    WorkerError,
    WorkerRequest,
    compact_error,
    encode_envelope,
    error_info,
)
from worker_image.request import load_request
from worker_image.testhooks import apply_test_hooks


def _terminate(signum: int, frame: object) -> None:
    os._exit(128 + signum)


def main() -> int:
    # In a pod the worker is PID 1, whose SIGTERM the kernel ignores unless a handler is installed: without
    # one, a deleted pod or an exceeded deadline would wait out the whole termination grace period.
    signal.signal(signal.SIGTERM, _terminate)
    # Libraries (sqlglot) log warnings; stdout is reserved for the envelope.
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        envelope = encode_envelope({"ok": True, "result": _execute()})
    except WorkerError as exc:
        return _fail(exc.info(), EXIT_USER_ERROR)
    except MemoryError as exc:
        # Free whatever the failed operation still holds, so that reporting it has memory to work with.
        traceback.clear_frames(exc.__traceback__)
        return _fail(error_info(ErrorType.MEMORY, "the query ran out of memory"), EXIT_USER_ERROR)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # polars panics derive from BaseException
        traceback.print_exc()
        info = error_info(ErrorType.INTERNAL, f"worker failed: {type(exc).__name__}: {exc}")
        return _fail(info, EXIT_INTERNAL_ERROR)
    _print(envelope)
    return 0


def _execute() -> dict[str, Any]:
    request = load_request(os.environ.get(REQUEST_ENV))
    # Held, not used: a test hook's allocation stays resident while the operation runs.
    ballast = apply_test_hooks(request.get("debug"), os.environ)
    with tempfile.TemporaryDirectory(prefix="podq-") as directory:
        result = _run(request, Path(directory))
    del ballast
    return result


def _run(request: WorkerRequest, directory: Path) -> dict[str, Any]:
    # Imported here so that a refused request never pays for importing polars.
    if request["operation"] == "inspect":
        from worker_image.schema import inspect_dataset

        return inspect_dataset(request["url"], request["fetch"], directory)
    from worker_image.sql import run_query

    return run_query(
        request["sql"],
        request.get("datasets", []),
        request["fetch"],
        directory,
        max_rows=request["max_rows"],
        max_result_bytes=request["max_result_bytes"],
    )


def _fail(info: ErrorInfo, exit_code: int) -> int:
    _write_termination_message(compact_error(info))
    _print(encode_envelope({"ok": False, "error": info}))
    return exit_code


def _write_termination_message(text: str) -> None:
    path = os.environ.get(TERMINATION_MESSAGE_ENV)
    # Outside Kubernetes nothing mounts the default file; never create it on a developer's machine.
    if path is None and not os.path.exists(DEFAULT_TERMINATION_MESSAGE_PATH):
        return
    with contextlib.suppress(OSError):
        Path(path or DEFAULT_TERMINATION_MESSAGE_PATH).write_text(text)


def _print(envelope: str) -> None:
    # The leading newline ends any unterminated stray output, so the envelope starts its own line.
    sys.stdout.write("\n" + envelope + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
