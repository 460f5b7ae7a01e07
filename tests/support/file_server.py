"""A real HTTP file server on loopback, for download tests.

It serves in-memory files with HTTP/1.1 range support and can misbehave on purpose, per
file: drop the connection after N body bytes, serve wrong bytes, ignore `Range`, answer
with an error status, demand a bearer token, pause mid-file until the test says go on,
or hold every response at a barrier (which only parallel clients can pass). It counts
the body bytes it sends and logs each request, so tests can assert what went over the
wire rather than guess.
"""

from __future__ import annotations

import contextlib
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_WRITE_PIECE = 16 * 1024
# Upper bound for the waits inside the handler, so a failing test ends instead of hanging.
HANDLER_WAIT_S = 30.0


@dataclass
class Behaviour:
    """How the server treats one path."""

    drop_after: int | None = None  # close the connection after this many body bytes...
    drop_times: int | None = 1  # ...on this many requests (None: on every request)
    corrupt: bool = False  # same length, different bytes
    ignore_range: bool = False  # answer Range requests with 200 and the whole file
    status: int | None = None  # answer with this status and no file
    token: str | None = None  # require `Authorization: Bearer <token>`
    pause_after: int | None = None  # after this many body bytes, wait for `release()`
    barrier: threading.Barrier | None = None  # wait here before sending the body
    content_length: int | None = None  # announce this length instead of the real one


@dataclass
class Request:
    path: str
    range: str | None
    authorization: str | None
    status: int = 0
    bytes_sent: int = 0


@dataclass
class _File:
    data: bytes
    behaviour: Behaviour = field(default_factory=Behaviour)
    drops_done: int = 0


class FileServer:
    """`with FileServer() as server: url = server.add("/m.gguf", data, drop_after=100)`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._files: dict[str, _File] = {}
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self.paused = threading.Event()  # set when a response reached `pause_after`
        self._pauses = 0  # responses that reached `pause_after`
        self._paused_changed = threading.Condition()
        self._release = threading.Event()
        self._httpd = _QuietServer((host, 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def add(self, path: str, data: bytes, **behaviour: Any) -> str:
        with self._lock:
            self._files[path] = _File(data, Behaviour(**behaviour))
        return self.url(path)

    def configure(self, path: str, **behaviour: Any) -> None:
        """Replace the behaviour of `path` (counters restart)."""
        with self._lock:
            self._files[path] = _File(self._files[path].data, Behaviour(**behaviour))

    def wait_paused(self, responses: int) -> bool:
        """Wait until `responses` responses are held at `pause_after`; False on timeout."""
        with self._paused_changed:
            return self._paused_changed.wait_for(
                lambda: self._pauses >= responses, timeout=HANDLER_WAIT_S
            )

    def release(self) -> None:
        """Let paused responses continue."""
        self._release.set()

    def bytes_sent(self, path: str | None = None) -> int:
        with self._lock:
            return sum(r.bytes_sent for r in self.requests if path is None or r.path == path)

    def requests_for(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=HANDLER_WAIT_S)

    def __enter__(self) -> FileServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- used by the handler ---------------------------------------------------------

    def _lookup(self, path: str) -> _File | None:
        with self._lock:
            return self._files.get(path)

    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _count(self, request: Request, n: int) -> None:
        with self._lock:
            request.bytes_sent += n

    def _should_drop(self, entry: _File) -> bool:
        with self._lock:
            b = entry.behaviour
            if b.drop_after is None or (
                b.drop_times is not None and entry.drops_done >= b.drop_times
            ):
                return False
            entry.drops_done += 1
            return True


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-response are what these tests do on purpose.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _make_handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            request = Request(path, self.headers.get("Range"), self.headers.get("Authorization"))
            server._log(request)
            entry = server._lookup(path)
            try:
                self._serve(entry, request)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _serve(self, entry: _File | None, request: Request) -> None:
            if entry is None:
                return self._status(request, 404)
            b = entry.behaviour
            if b.token is not None and request.authorization != f"Bearer {b.token}":
                return self._status(request, 401 if request.authorization is None else 403)
            if b.status is not None:
                return self._status(request, b.status)
            data = entry.data
            if b.corrupt:
                data = bytes(x ^ 0xFF for x in data)
            start, status = 0, 200
            match = _RANGE.fullmatch(request.range or "")
            if match and not b.ignore_range:
                start = int(match.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    request.status = 416
                    return None
                status = 206
            body = data[start:]
            request.status = status
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            length = b.content_length if b.content_length is not None else len(body)
            self.send_header("Content-Length", str(length))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if b.barrier is not None:
                try:
                    b.barrier.wait(timeout=HANDLER_WAIT_S)
                except threading.BrokenBarrierError:
                    return self._drop()
            limit = len(body)
            if server._should_drop(entry):
                limit = min(limit, b.drop_after or 0)
            sent = 0
            while sent < limit:
                if b.pause_after is not None and sent == b.pause_after:
                    self.wfile.flush()
                    server.paused.set()
                    with server._paused_changed:
                        server._pauses += 1
                        server._paused_changed.notify_all()
                    server._release.wait(timeout=HANDLER_WAIT_S)
                piece_end = min(limit, sent + _WRITE_PIECE)
                if b.pause_after is not None and sent < b.pause_after < piece_end:
                    piece_end = b.pause_after
                self.wfile.write(body[sent:piece_end])
                server._count(request, piece_end - sent)
                sent = piece_end
            self.wfile.flush()
            if limit < len(body):
                self._drop()
            return None

        def _status(self, request: Request, status: int) -> None:
            request.status = status
            message = f"HTTP {status}\n".encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            self.wfile.write(message)

        def _drop(self) -> None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    return Handler
