"""`python -m worker_image`: run the one operation in the request and report it as one envelope.

See `worker_image.protocol` for the contract: request in ``PODQ_REQUEST`` (or, in a warm pod, one line on
stdin once everything is imported: `worker_image.standby`), the envelope as the last line of stdout, the
exit code, and the termination-message file for errors.

The request is read and checked first, on the main thread: the memory limit it carries is the one the
watch below uses. The operation then runs on a thread of its own; the main thread only waits for it, in
`Thread.join` with a timeout. That keeps two things prompt whatever the operation is doing (inside
polars' native ``collect()``, a blocked download, a system call):

- SIGTERM. A Python signal handler runs on the main thread, between bytecodes; a main thread inside a
  native call would run it only when the call returns, minutes later for a big query, and a pod would
  wait out its whole termination grace period. A lock wait is interrupted by signals (and times out every
  `POLL_SECONDS` anyway), so the handler runs at once.
- The memory watch (`worker_image.memwatch`): between waits the main thread reads the process's
  anonymous memory and, at the threshold, reports ``memory`` and exits with `os._exit` (the operation's
  thread may be in native code and can neither be interrupted nor joined).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Any

from worker_image.memwatch import POLL_SECONDS, MemoryWatch, memory_limit
from worker_image.protocol import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    EXIT_INTERNAL_ERROR,
    EXIT_NO_REQUEST,
    EXIT_USER_ERROR,
    REQUEST_STDIN_ENV,
    TERMINATION_MESSAGE_ENV,
    ErrorInfo,
    ErrorType,
    WorkerError,
    WorkerRequest,
    compact_error,
    encode_envelope,
    error_info,
)
from worker_image.request import load_request, read_request
from worker_image.standby import wait_for_request, warm_up
from worker_image.testhooks import apply_test_hooks
from worker_image.usage import Meter


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
    stdin_request = None
    if os.environ.get(REQUEST_STDIN_ENV) == "1":
        warm_up()
        # Blocks in read(), which SIGTERM interrupts: the handler runs and the worker exits at once.
        if (stdin_request := wait_for_request(sys.stdin.buffer)) is None:
            return EXIT_NO_REQUEST
    meter = Meter()
    try:
        request = load_request(read_request(os.environ) if stdin_request is None else stdin_request)
    except WorkerError as exc:
        return _fail(exc.info(), EXIT_USER_ERROR, meter.report(0))
    # The request's limit, not only the environment's: a warm pod may have been resized since it started.
    watch = MemoryWatch.of(memory_limit(request, os.environ))
    exit_codes: list[int] = []
    operation = threading.Thread(
        target=lambda: exit_codes.append(_operate(request, meter, watch)), name="operation", daemon=True
    )
    operation.start()
    while True:
        operation.join(POLL_SECONDS)
        if not operation.is_alive():
            break
        if watch is not None and (used := watch.over()) is not None:
            _out_of_memory(watch, used, meter)
    if not exit_codes:
        # Only a BaseException `_operate` lets through (KeyboardInterrupt, SystemExit) ends it without a code.
        info = error_info(ErrorType.INTERNAL, "worker failed: the operation ended abruptly")
        return _fail(info, EXIT_INTERNAL_ERROR, _usage(meter, watch))
    return exit_codes[0]


def _usage(meter: Meter, watch: MemoryWatch | None) -> dict[str, Any]:
    return meter.report(watch.peak_bytes if watch is not None else 0)


def _operate(request: WorkerRequest, meter: Meter, watch: MemoryWatch | None) -> int:
    try:
        result = _execute(request, meter)
        envelope = encode_envelope({"ok": True, "result": result, "usage": _usage(meter, watch)})
    except WorkerError as exc:
        return _fail(exc.info(), EXIT_USER_ERROR, _usage(meter, watch))
    except MemoryError as exc:
        # Free whatever the failed operation still holds, so that reporting it has memory to work with.
        traceback.clear_frames(exc.__traceback__)
        info = error_info(ErrorType.MEMORY, "the query ran out of memory")
        return _fail(info, EXIT_USER_ERROR, _usage(meter, watch))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # polars panics derive from BaseException
        traceback.print_exc()
        info = error_info(ErrorType.INTERNAL, f"worker failed: {type(exc).__name__}: {exc}")
        return _fail(info, EXIT_INTERNAL_ERROR, _usage(meter, watch))
    _print(envelope)
    return 0


def _execute(request: WorkerRequest, meter: Meter) -> dict[str, Any]:
    # Held, not used: a test hook's allocation stays resident while the operation runs.
    ballast = apply_test_hooks(request.get("debug"), os.environ)
    with tempfile.TemporaryDirectory(prefix="podq-") as directory:
        result = _run(request, Path(directory), meter)
    del ballast
    return result


def _run(request: WorkerRequest, directory: Path, meter: Meter) -> dict[str, Any]:
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
        meter=meter,
    )


def _out_of_memory(watch: MemoryWatch, used: int, meter: Meter) -> None:
    """Report the query as out of memory and exit now, whatever the operation's thread is doing."""
    limit = watch.limit_bytes
    message = (
        f"the query ran out of memory (limit {limit / 2**20:g} MiB): stopped at {used / 2**20:.0f} MiB, "
        f"within {(limit - watch.threshold_bytes) / 2**20:.0f} MiB of the limit"
    )
    details = {
        "limit_bytes": limit,
        "peak_bytes": used,
        "threshold_bytes": watch.threshold_bytes,
        "stopped_by": "worker",
    }
    info = error_info(ErrorType.MEMORY, message, details)
    _write_termination_message(compact_error(info))
    usage = meter.report(max(used, watch.peak_bytes))
    envelope = encode_envelope({"ok": False, "error": info, "usage": usage})
    # Straight to the file descriptor: sys.stdout's buffer and lock may be the operation thread's just now.
    data = ("\n" + envelope + "\n").encode()
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(sys.stdout.fileno(), data) :]
    os._exit(EXIT_USER_ERROR)


def _fail(info: ErrorInfo, exit_code: int, usage: dict[str, Any]) -> int:
    _write_termination_message(compact_error(info))
    _print(encode_envelope({"ok": False, "error": info, "usage": usage}))
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
