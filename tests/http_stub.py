"""Stand-in HTTP servers for tests: a quiet request handler with helpers to read a
request body and answer, and a server on a free loopback port in a thread."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class StubHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing; subclasses write ``do_GET``/``do_POST``."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send_body(self, status: int, body: bytes, content_type: str | None = "application/json",
                  headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, document: Any) -> None:
        self.send_body(status, json.dumps(document).encode())


class _Server(ThreadingHTTPServer):
    expect_disconnects = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not self.expect_disconnects:
            super().handle_error(request, client_address)


class StubServer:
    """``handler`` served on 127.0.0.1 (``port`` 0 picks a free one) from a daemon
    thread, between :meth:`start` and :meth:`stop` or as a context manager."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0,
                 expect_disconnects: bool = False) -> None:
        self.server = _Server(("127.0.0.1", port), handler)
        # A client that stops reading half way is what some tests provoke on purpose.
        self.server.expect_disconnects = expect_disconnects
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True)

    def start(self) -> StubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
