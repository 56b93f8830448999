"""Real HTTP model servers on 127.0.0.1 for tests: a handler function answers each request, the
server records what it received. Used through the ``serve`` fixture (tests/labeling/conftest.py)
by the client tests (inference/test_remote.py) and the pre-label job tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, Any] | tuple[int, Any, dict[str, str]]


@dataclass
class Request:
    method: str
    path: str
    body: Any
    headers: dict[str, str]
    at: float
    raw: bytes = b""  # the body as received (what a signature covers)


@dataclass
class ModelServer:
    """A model server on 127.0.0.1: ``handle(request, n)`` answers the n-th request (1-based)
    with (status, JSON body or raw bytes[, headers]); it records requests and counts how many it
    serves at once."""

    handle: Callable[[Request, int], Answer]
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]


Serve = Callable[[Callable[[Request, int], Answer]], ModelServer]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    model: ModelServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client giving up on a slow answer is expected


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def _serve(self) -> None:
        model = self.server.model
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        request = Request(
            self.command, self.path, json.loads(raw) if raw else None, dict(self.headers), 0.0, raw
        )
        with model.lock:
            request.at = time.monotonic()
            model.requests.append(request)
            n = len(model.requests)
            model.active += 1
            model.max_active = max(model.max_active, model.active)
        try:
            answer = model.handle(request, n)
        finally:
            with model.lock:
                model.active -= 1
        status, body, *rest = answer
        headers = rest[0] if rest else {}
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.close_connection = True
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client hung up (timeout test)

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ModelServers:
    """The servers a test started; ``close`` stops them all (sleeping handlers wake on ``stop``)."""

    def __init__(self) -> None:
        self._servers: list[_HTTPServer] = []

    def start(self, handle: Callable[[Request, int], Answer]) -> ModelServer:
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.model = ModelServer(handle, port=httpd.server_address[1])
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        self._servers.append(httpd)
        return httpd.model

    def close(self) -> None:
        for httpd in self._servers:
            httpd.model.stop.set()
            httpd.shutdown()
            httpd.server_close()
