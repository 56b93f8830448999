"""``request_json`` against real HTTP servers on 127.0.0.1, allowed through ``allowed_networks``.

Loopback is never a public address, so every success here also shows that the operator's
allow-list is what lets a model server on an internal network be reached.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from storage.fetch import FetchPolicy, FetchRefused, request_json

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
Route = Callable[["_Handler"], None]


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"request_json asked a resolver about {host!r}")


REFUSING = FetchPolicy(connect_timeout=2.0, read_timeout=2.0, total_timeout=5.0, resolver=no_dns)
ALLOWED = replace(REFUSING, allowed_networks=LOOPBACK)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    routes: dict[str, Route]
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    app: Server

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hanging up on a refused answer is expected


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        app = self.server.app
        app.seen.append(Seen(self.command, self.path, dict(self.headers), body))
        self.close_connection = True
        app.routes.get(self.path, lambda h: h.reply(404, b'{"detail": "not found"}'))(self)

    do_GET = do_POST = do_PUT = _handle

    def reply(self, status: int, body: bytes, content_type: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[dict[str, Route]], Server]]:
    servers: list[_HTTPServer] = []

    def start(routes: dict[str, Route]) -> Server:
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.app = Server(routes, port=httpd.server_address[1])
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        servers.append(httpd)
        return httpd.app

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def echo(handler: _Handler) -> None:
    seen = handler.server.app.seen[-1]
    payload = {
        "method": seen.method,
        "body": json.loads(seen.body) if seen.body else None,
        "content_type": seen.headers.get("Content-Type"),
        "authorization": seen.headers.get("Authorization"),
    }
    handler.reply(200, json.dumps(payload).encode())


def test_it_posts_json_to_an_allowed_server_and_parses_the_answer(serve: Callable[..., Server]) -> None:
    server = serve({"/predict": echo})

    response = request_json(
        "POST", server.url("/predict"), {"items": [{"key": "1", "text": "héllo"}]}, policy=ALLOWED
    )

    assert response.status == 200
    assert response.data == {
        "method": "POST",
        "body": {"items": [{"key": "1", "text": "héllo"}]},
        "content_type": "application/json; charset=utf-8",
        "authorization": None,
    }
    assert response.headers["content-type"] == "application/json"
    status, data, *_ = response  # a tuple too: status and parsed body first
    assert (status, data) == (200, response.data)


def test_the_same_url_is_refused_without_the_allow_list_before_connecting(
    serve: Callable[..., Server],
) -> None:
    server = serve({"/predict": echo})

    with pytest.raises(FetchRefused) as refused:
        request_json("POST", server.url("/predict"), {"items": []}, policy=REFUSING)

    assert refused.value.code == "address_not_allowed"
    assert server.seen == []


def test_a_name_resolving_outside_the_allow_list_is_refused(serve: Callable[..., Server]) -> None:
    server = serve({"/health": echo})
    policy = replace(ALLOWED, resolver=lambda host, port: ["127.0.0.1", "10.1.2.3"])

    with pytest.raises(FetchRefused) as refused:
        request_json("GET", f"http://models.internal:{server.port}/health", policy=policy)

    assert refused.value.code == "address_not_allowed"
    assert server.seen == []


def test_it_sends_given_headers_over_url_credentials(serve: Callable[..., Server]) -> None:
    server = serve({"/health": echo})
    url = f"http://user:secret@127.0.0.1:{server.port}/health"

    from_url = request_json("GET", url, policy=ALLOWED)
    given = request_json("GET", url, policy=ALLOWED, headers={"Authorization": "Bearer t0ken"})

    assert from_url.data["authorization"] == "Basic dXNlcjpzZWNyZXQ="
    assert from_url.data["method"] == "GET"
    assert from_url.data["content_type"] is None  # no body, no Content-Type
    assert given.data["authorization"] == "Bearer t0ken"


def test_a_server_sleeping_past_the_deadline_is_a_timeout(serve: Callable[..., Server]) -> None:
    stop = threading.Event()

    def sleepy(handler: _Handler) -> None:
        stop.wait(5)
        handler.reply(200, b"{}")

    server = serve({"/predict": sleepy})
    policy = replace(ALLOWED, read_timeout=5.0, total_timeout=0.5)

    started = time.monotonic()
    with pytest.raises(FetchRefused) as refused:
        request_json("POST", server.url("/predict"), {"items": []}, policy=policy)
    elapsed = time.monotonic() - started
    stop.set()

    assert refused.value.code == "timeout"
    assert elapsed < 1.5


def test_an_answer_over_the_size_limit_is_refused(serve: Callable[..., Server]) -> None:
    big = json.dumps({"results": ["x" * 2000]}).encode()
    server = serve({"/predict": lambda h: h.reply(200, big)})

    with pytest.raises(FetchRefused) as refused:
        request_json("POST", server.url("/predict"), {}, policy=replace(ALLOWED, max_bytes=1000))

    assert refused.value.code == "too_large"


def test_an_answer_without_length_over_the_limit_is_cut_off(serve: Callable[..., Server]) -> None:
    def stream(handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()  # no Content-Length: the body ends when the connection closes
        handler.wfile.write(b'["' + b"x" * 5000 + b'"]')

    server = serve({"/predict": stream})

    with pytest.raises(FetchRefused) as refused:
        request_json("POST", server.url("/predict"), {}, policy=replace(ALLOWED, max_bytes=1000))

    assert refused.value.code == "too_large"


def test_a_success_that_is_not_json_is_refused_with_its_own_code(serve: Callable[..., Server]) -> None:
    server = serve(
        {
            "/html": lambda h: h.reply(200, b"<html>proxy login</html>", "text/html"),
            "/nan": lambda h: h.reply(200, b'{"score": NaN}'),
        }
    )

    for path in ("/html", "/nan"):
        with pytest.raises(FetchRefused) as refused:
            request_json("GET", server.url(path), policy=ALLOWED)
        assert refused.value.code == "not_json"


def test_an_error_status_comes_back_with_its_body_for_the_caller(serve: Callable[..., Server]) -> None:
    server = serve(
        {
            "/json": lambda h: h.reply(429, b'{"detail": "slow down"}', Retry_After="3"),
            "/text": lambda h: h.reply(500, b"Traceback (most recent call last): ...", "text/plain"),
        }
    )

    throttled = request_json("POST", server.url("/json"), {}, policy=ALLOWED)
    crashed = request_json("POST", server.url("/text"), {}, policy=ALLOWED)

    assert (throttled.status, throttled.data, throttled.headers["retry-after"]) == (
        429,
        {"detail": "slow down"},
        "3",
    )
    assert (crashed.status, crashed.data) == (500, None)
    assert crashed.text.startswith("Traceback")


def test_an_empty_success_has_no_data(serve: Callable[..., Server]) -> None:
    server = serve({"/setup": lambda h: h.reply(204, b"")})

    response = request_json("POST", server.url("/setup"), {"project": "1.0"}, policy=ALLOWED)

    assert (response.status, response.data) == (204, None)


def test_a_redirect_is_returned_not_followed(serve: Callable[..., Server]) -> None:
    server = serve({"/predict": lambda h: h.reply(307, b"", Location="/elsewhere")})

    response = request_json("POST", server.url("/predict"), {"items": []}, policy=ALLOWED)

    assert response.status == 307
    assert response.headers["location"] == "/elsewhere"
    assert [seen.path for seen in server.seen] == ["/predict"]


def test_a_closed_port_is_a_connection_failure() -> None:
    with socket.socket() as probe:  # a port bound and released: nothing listens there
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/health"

    with pytest.raises(FetchRefused) as refused:
        request_json("GET", url, policy=ALLOWED)

    assert refused.value.code == "connection_failed"


def test_it_refuses_a_method_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="method"):
        request_json("TRACE", "http://127.0.0.1:1/", policy=ALLOWED)
