"""A real HTTP server on 127.0.0.1 or a given address (a free port) serving a directory, plus routes that
misbehave on demand.

=============================  ==========================================================================
``/<file>``                    the file from the served directory
``/status/<code>``             an empty response with that status
``/slow?seconds=S&drip=D``     200 and headers at once, then one byte every D seconds (no bytes at all
                               without ``drip``) until S seconds have passed or the server stops
``/big?bytes=N``               N bytes streamed without a Content-Length; ``&content_length=M`` sends
                               ``Content-Length: M`` instead (which may be a lie)
``/redirect?to=/<path>``       302 to that path (or to any absolute URL)
``/gzip?bytes=N``              N zero bytes gzip-compressed (a compression bomb for large N), sent with
                               ``Content-Encoding: gzip`` (or ``&encoding=E``) and the compressed length
``/gzip?file=<name>``          that file from the served directory, gzip-compressed the same way
=============================  ==========================================================================

Every request's path (with query) is recorded in `FileServer.requests`. `stop()` returns promptly:
slow responses end as soon as the server stops.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

_CHUNK = 64 * 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, directory: Path, host: str, port: int) -> None:
        super().__init__((host, port), partial(_Handler, directory=str(directory)))
        self.directory = directory
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.paths: list[str] = []


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.paths.append(self.path)
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        try:
            if url.path.startswith("/status/"):
                self._status(int(url.path.removeprefix("/status/")))
            elif url.path == "/slow":
                self._slow(float(query["seconds"]), float(query.get("drip", 0)))
            elif url.path == "/big":
                self._big(int(query["bytes"]), query.get("content_length"))
            elif url.path == "/gzip":
                self._gzip(query)
            elif url.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", query["to"])
                self.end_headers()
            else:
                super().do_GET()
        except (ConnectionError, TimeoutError):
            pass  # the client went away (it gave up, as the tests intend)

    def _status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _slow(self, seconds: float, drip: float) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.flush()
        stopping = self.server.stopping
        # sleep-ok: holding the response open is this route's behaviour; it ends as soon as the server stops.
        for _ in range(round(seconds / drip) if drip else 1):
            if stopping.wait(drip or seconds):
                return
            if drip:
                self.wfile.write(b"x")
                self.wfile.flush()

    def _gzip(self, query: dict[str, str]) -> None:
        if "file" in query:
            body = _gzipped([(self.server.directory / query["file"]).read_bytes()])
        else:
            size = int(query["bytes"])
            zeros = b"\0" * _CHUNK
            body = _gzipped(zeros[: min(_CHUNK, size - offset)] for offset in range(0, size, _CHUNK))
        self.send_response(200)
        self.send_header("Content-Encoding", query.get("encoding", "gzip"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _big(self, size: int, content_length: str | None) -> None:
        self.send_response(200)
        if content_length is not None:
            self.send_header("Content-Length", content_length)
        self.end_headers()
        chunk = b"\0" * _CHUNK
        for offset in range(0, size, _CHUNK):
            if self.server.stopping.is_set():
                return
            self.wfile.write(chunk[: size - offset])

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are recorded in `paths`; stderr stays quiet


def _gzipped(chunks: Iterable[bytes]) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return b"".join([*(compressor.compress(chunk) for chunk in chunks), compressor.flush()])


class FileServer:
    """Serves `directory` at `url` (no trailing slash) until `stop()`; also a context manager.

    It listens on loopback unless told a `host` (e.g. the address pods reach this machine at), on a free
    port unless told a `port`."""

    def __init__(self, directory: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server(directory, host, port)
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"http://{bound_host!s}:{bound_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fixture-file-server", daemon=True
        )
        self._thread.start()

    @property
    def requests(self) -> list[str]:
        with self._server.lock:
            return list(self._server.paths)

    def requested(self, fragment: str) -> bool:
        return any(fragment in path for path in self.requests)

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FileServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
