"""The URL fetcher against real HTTP servers on 127.0.0.1, with a fake resolver instead of DNS.

Every TCP connect the fetcher makes goes through ``connects`` (autouse): it records the address and
really connects only to 127.0.0.1, where these tests run their own listeners. A forbidden address
therefore never receives a packet even if the fetcher had a bug; the assertions on ``connects``
and on each server's ``seen`` show that the fetcher refused before connecting.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from storage import fetch
from storage.fetch import FetchPolicy, FetchRefused, fetch_to_file, is_public_address, resolve_host

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)
Route = Callable[["_Handler"], None]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, routes: dict[str, Route], tls: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes = routes
        self.seen: list[Seen] = []
        self.stopping = threading.Event()
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the fetcher hanging up on a refused response is expected


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.seen.append(Seen(self.path, dict(self.headers)))
        self.close_connection = True
        self.server.routes.get(self.path, not_found)(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Origin:
    server: _Server

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def seen(self) -> list[Seen]:
        return self.server.seen

    def url(self, path: str = "/", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


@pytest.fixture
def serve() -> Iterator[Callable[..., Origin]]:
    """Start HTTP(S) servers on 127.0.0.1 with ephemeral ports; each counts what it receives."""
    servers: list[_Server] = []

    def start(routes: dict[str, Route], tls: ssl.SSLContext | None = None) -> Origin:
        server = _Server(routes, tls)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        servers.append(server)
        return Origin(server)

    yield start
    for server in servers:
        server.stopping.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    calls: list[tuple[str, int]] = []
    real = socket.create_connection

    def record(
        address: tuple[str, int], timeout: float | None = None, *args: Any, **kwargs: Any
    ) -> socket.socket:
        calls.append((address[0], address[1]))
        if address[0] != "127.0.0.1":
            raise ConnectionRefusedError(f"the test stopped a connect to {address[0]}")
        return real(address, timeout)

    monkeypatch.setattr(fetch.socket, "create_connection", record)
    return calls


@dataclass
class FakeDNS:
    """Answers from a table, one list of answers per lookup (the last repeats); never real DNS."""

    answers: dict[str, list[list[str]]]
    calls: list[str] = field(default_factory=list)

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not in the test's DNS")
        answers = self.answers[host]
        return answers[min(self.calls.count(host), len(answers)) - 1]


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"the fetcher asked a resolver about {host!r}")


BASE = FetchPolicy(connect_timeout=2.0, read_timeout=2.0, total_timeout=5.0, resolver=no_dns)
ALLOW_LOOPBACK = replace(BASE, allowed_networks=LOOPBACK)


def refusal(url: str, policy: FetchPolicy, dest: io.BytesIO | None = None) -> FetchRefused:
    with pytest.raises(FetchRefused) as caught:
        fetch_to_file(url, dest if dest is not None else io.BytesIO(), policy=policy)
    return caught.value


# --- Routes ---------------------------------------------------------------------------------------


def body(data: bytes, content_type: str = "application/octet-stream", length: int | None = None) -> Route:
    def respond(handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data) if length is None else length))
        handler.end_headers()
        handler.wfile.write(data)

    return respond


def redirect(location: str, status: int = 302) -> Route:
    def respond(handler: _Handler) -> None:
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return respond


def chunked(parts: list[bytes]) -> Route:
    def respond(handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for part in parts:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        handler.wfile.write(b"0\r\n\r\n")

    return respond


def drip(handler: _Handler, data: bytes) -> None:
    """Send ``data`` a byte every 50 ms, for 3 s at most: a fetcher without a deadline then sees
    the connection close early and the test fails instead of hanging."""
    until = time.monotonic() + 3
    for byte in data:
        if handler.server.stopping.wait(0.05) or time.monotonic() > until:
            return
        handler.wfile.write(bytes([byte]))


def drip_body(handler: _Handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "100000")
    handler.end_headers()
    drip(handler, b"x" * 100000)


def drip_headers(handler: _Handler) -> None:
    drip(handler, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10000)


def stall(handler: _Handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "10")
    handler.end_headers()
    handler.server.stopping.wait(3)


def not_found(handler: _Handler) -> None:
    handler.send_error(404)


# --- Fetching what is allowed ---------------------------------------------------------------------


def test_it_streams_the_body_of_an_allowed_server_and_hashes_it(
    serve: Callable[..., Origin], connects: list[tuple[str, int]]
) -> None:
    data = bytes(range(256)) * 4000
    origin = serve({"/data.bin": body(data, content_type="image/png")})
    dest = io.BytesIO()

    result = fetch_to_file(origin.url("/data.bin"), dest, policy=ALLOW_LOOPBACK)

    assert dest.getvalue() == data
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert (result.status, result.content_type, result.url) == (200, "image/png", origin.url("/data.bin"))
    assert result.redirects == ()
    assert connects == [("127.0.0.1", origin.port)]


def test_it_follows_relative_redirects_and_reports_them(serve: Callable[..., Origin]) -> None:
    origin = serve({"/a": redirect("/b"), "/b": redirect("c?x=1", status=307), "/c?x=1": body(b"done")})
    dest = io.BytesIO()

    result = fetch_to_file(origin.url("/a"), dest, policy=ALLOW_LOOPBACK)

    assert dest.getvalue() == b"done"
    assert result.redirects == (origin.url("/b"), origin.url("/c?x=1"))
    assert result.url == origin.url("/c?x=1")


def test_it_ignores_proxies_from_the_environment(
    serve: Callable[..., Origin], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = serve({})
    origin = serve({"/f": body(b"direct")})
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy.url())
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    fetch_to_file(origin.url("/f"), io.BytesIO(), policy=ALLOW_LOOPBACK)
    refused = refusal("http://10.0.0.1/", BASE)

    assert len(origin.seen) == 1
    assert proxy.seen == []
    assert refused.code == "address_not_allowed"


def test_it_sends_credentials_from_the_url_only_to_their_origin(serve: Callable[..., Origin]) -> None:
    other = serve({"/end": body(b"ok")})
    origin = serve({"/start": redirect("/next"), "/next": redirect(other.url("/end", host="other.example"))})
    dns = FakeDNS({"data.example": [["127.0.0.1"]], "other.example": [["127.0.0.1"]]})
    policy = replace(ALLOW_LOOPBACK, resolver=dns)

    result = fetch_to_file(
        origin.url("/start", host="user:s%40cret@data.example"), io.BytesIO(), policy=policy
    )

    expected = "Basic dXNlcjpzQGNyZXQ="  # user:s@cret
    assert [seen.headers.get("Authorization") for seen in origin.seen] == [expected, expected]
    assert "Authorization" not in other.seen[0].headers
    assert "cret" not in result.url and all("cret" not in url for url in result.redirects)


def test_a_non_ascii_host_and_path_are_sent_as_idna_and_percent_escapes(serve: Callable[..., Origin]) -> None:
    origin = serve({"/caf%C3%A9.jpg": body(b"ok")})
    dns = FakeDNS({"xn--bcher-kva.example": [["127.0.0.1"]]})

    result = fetch_to_file(
        origin.url("/café.jpg", host="bücher.example"),
        io.BytesIO(),
        policy=replace(ALLOW_LOOPBACK, resolver=dns),
    )

    assert result.url == origin.url("/caf%C3%A9.jpg", host="xn--bcher-kva.example")
    assert origin.seen[0].headers["Host"] == f"xn--bcher-kva.example:{origin.port}"


@pytest.mark.parametrize(
    "url", ["http://user:hunter2@10.0.0.1/", "http://user:hunter2@host:99999/", "http://user:hunter2@[::zz]/"]
)
def test_a_refusal_never_repeats_the_password_in_the_url(url: str) -> None:
    assert "hunter2" not in refusal(url, BASE).message


# --- Addresses that are refused -------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1.",
        "2130706433",
        "0x7f000001",
        "0x7f.1",
        "0177.0.0.1",
        "127.1",
        "0x7F.0.0.0x1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::]",
        "0.0.0.0",  # noqa: S104  (a URL's host, not an address to bind)
        "0",
    ],
)
def test_it_refuses_every_spelling_of_the_local_host_without_connecting(
    host: str, serve: Callable[..., Origin], connects: list[tuple[str, int]]
) -> None:
    origin = serve({"/": body(b"secret")})

    refused = refusal(f"http://{host}:{origin.port}/", BASE)

    assert refused.code == "address_not_allowed"
    assert "not a public address" in refused.message
    assert origin.seen == []
    assert connects == []


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.0.0.1", "169.254.169.254", "fd00::1", "100.64.0.1", "::ffff:10.0.0.1", "fe80::1"],
)
def test_it_refuses_a_name_that_resolves_to_a_forbidden_address_without_connecting(
    address: str, connects: list[tuple[str, int]]
) -> None:
    dns = FakeDNS({"evil.example": [[address]]})

    refused = refusal("http://evil.example/latest/meta-data/", replace(BASE, resolver=dns))

    assert refused.code == "address_not_allowed"
    assert str(ipaddress.ip_address(address)) in refused.message
    assert connects == []


def test_it_refuses_localhost_by_what_it_resolves_to(
    serve: Callable[..., Origin], connects: list[tuple[str, int]]
) -> None:
    origin = serve({"/": body(b"secret")})
    dns = FakeDNS({"localhost": [["127.0.0.1", "::1"]]})

    refused = refusal(origin.url(host="localhost"), replace(BASE, resolver=dns))

    assert refused.code == "address_not_allowed"
    assert origin.seen == [] and connects == []


def test_it_refuses_a_name_when_any_one_of_its_addresses_is_forbidden(
    serve: Callable[..., Origin], connects: list[tuple[str, int]]
) -> None:
    origin = serve({"/": body(b"secret")})
    dns = FakeDNS({"mixed.example": [["127.0.0.1", "10.0.0.1"]]})

    refused = refusal(origin.url(host="mixed.example"), replace(ALLOW_LOOPBACK, resolver=dns))

    assert refused.code == "address_not_allowed"
    assert "10.0.0.1" in refused.message
    assert origin.seen == [] and connects == []


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.example/latest/meta-data/",
        "http://[fd00::1]/",
        "http://0x0a000001/",
        "https://10.0.0.1:8443/admin",
    ],
)
def test_a_redirect_to_a_forbidden_address_is_refused_before_connecting(
    location: str, serve: Callable[..., Origin], connects: list[tuple[str, int]]
) -> None:
    origin = serve({"/start": redirect(location)})
    dns = FakeDNS({"data.example": [["127.0.0.1"]], "metadata.example": [["169.254.169.254"]]})

    refused = refusal(origin.url("/start", host="data.example"), replace(ALLOW_LOOPBACK, resolver=dns))

    assert refused.code == "address_not_allowed"
    assert len(origin.seen) == 1
    assert connects == [("127.0.0.1", origin.port)]


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://example.com/x", "gopher://127.0.0.1:70/"])
def test_a_redirect_to_another_scheme_is_refused(location: str, serve: Callable[..., Origin]) -> None:
    origin = serve({"/start": redirect(location)})

    refused = refusal(origin.url("/start"), ALLOW_LOOPBACK)

    assert refused.code == "scheme_not_allowed"
    assert len(origin.seen) == 1


def test_it_connects_to_the_address_it_checked_even_if_the_name_rebinds(
    serve: Callable[..., Origin], connects: list[tuple[str, int]]
) -> None:
    origin = serve({"/file": body(b"public data")})
    # First answer allowed, every later one the metadata service: a second lookup would be fatal.
    dns = FakeDNS({"rebind.example": [["127.0.0.1"], ["169.254.169.254"]]})

    result = fetch_to_file(
        origin.url("/file", host="rebind.example"), io.BytesIO(), policy=replace(ALLOW_LOOPBACK, resolver=dns)
    )

    assert result.size == len(b"public data")
    assert dns.calls == ["rebind.example"]
    assert connects == [("127.0.0.1", origin.port)]
    assert origin.seen[0].headers["Host"] == f"rebind.example:{origin.port}"


def test_a_name_that_rebinds_between_redirects_is_checked_again_and_refused(
    serve: Callable[..., Origin], connects: list[tuple[str, int]]
) -> None:
    origin = serve({"/start": redirect("/next"), "/next": body(b"secret")})
    dns = FakeDNS({"rebind.example": [["127.0.0.1"], ["169.254.169.254"]]})

    refused = refusal(origin.url("/start", host="rebind.example"), replace(ALLOW_LOOPBACK, resolver=dns))

    assert refused.code == "address_not_allowed"
    assert dns.calls == ["rebind.example", "rebind.example"]
    assert connects == [("127.0.0.1", origin.port)]
    assert [seen.path for seen in origin.seen] == ["/start"]


@pytest.mark.parametrize(
    "address, public",
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("2002:808:808::1", True),
        ("10.1.2.3", False),
        ("172.31.255.255", False),
        ("192.168.1.1", False),
        ("100.127.255.254", False),
        ("169.254.169.254", False),
        ("192.0.2.10", False),
        ("198.18.0.1", False),
        ("198.51.100.1", False),
        ("203.0.113.1", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::", False),
        ("::1", False),
        ("fe80::1", False),
        ("fec0::1", False),
        ("fc00::1", False),
        ("fd00:ec2::254", False),
        ("ff02::1", False),
        ("2001:db8::1", False),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
        ("::ffff:169.254.169.254", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("2002:a9fe:a9fe::", False),
    ],
)
def test_is_public_address_tells_public_from_internal_addresses(address: str, public: bool) -> None:
    assert is_public_address(address) is public


# --- Schemes, URLs, limits, time ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a", "file:///etc/passwd", "gopher://x/", "data:,hello", "//x/"]
)
def test_it_refuses_schemes_other_than_http_and_https(url: str, connects: list[tuple[str, int]]) -> None:
    assert refusal(url, BASE).code == "scheme_not_allowed"
    assert connects == []


@pytest.mark.parametrize(
    "url",
    [
        "http:///path",
        "http://example.com:99999/",
        "http://1.2.3.999/",
        "http://1.2.3.4.5/",
        "http://0x1g.1/",
        "http://09.1.1.1/",
        "http://exa mple.com/",
        "http://example.com\\@127.0.0.1/",
        "http://[::zz]/",
        "http://exa%00mple.com/",
    ],
)
def test_it_refuses_malformed_urls(url: str, connects: list[tuple[str, int]]) -> None:
    assert refusal(url, BASE).code == "bad_url"
    assert connects == []


def test_a_declared_length_over_the_limit_is_refused_before_reading(serve: Callable[..., Origin]) -> None:
    origin = serve({"/big": body(b"x" * 100, length=10_000_000)})
    dest = io.BytesIO()

    refused = refusal(origin.url("/big"), replace(ALLOW_LOOPBACK, max_bytes=1000), dest)

    assert refused.code == "too_large"
    assert "10000000" in refused.message and "1000" in refused.message
    assert dest.getvalue() == b""


def test_a_body_without_length_is_cut_off_at_the_limit(serve: Callable[..., Origin]) -> None:
    origin = serve({"/stream": chunked([b"y" * 1000] * 20)})
    dest = io.BytesIO()

    refused = refusal(origin.url("/stream"), replace(ALLOW_LOOPBACK, max_bytes=4096), dest)

    assert refused.code == "too_large"
    assert len(dest.getvalue()) <= 4096


def test_a_body_of_exactly_the_limit_is_accepted(serve: Callable[..., Origin]) -> None:
    origin = serve({"/stream": chunked([b"z" * 1024] * 4)})

    result = fetch_to_file(
        origin.url("/stream"), io.BytesIO(), policy=replace(ALLOW_LOOPBACK, max_bytes=4096)
    )

    assert result.size == 4096


@pytest.mark.parametrize("route", [drip_body, drip_headers])
def test_a_slow_drip_is_cut_off_at_the_total_timeout(route: Route, serve: Callable[..., Origin]) -> None:
    origin = serve({"/slow": route})
    started = time.monotonic()

    refused = refusal(origin.url("/slow"), replace(ALLOW_LOOPBACK, total_timeout=1.0, read_timeout=5.0))

    assert refused.code == "timeout"
    assert 1.0 <= time.monotonic() - started < 2.0


def test_a_server_that_stops_sending_is_cut_off_at_the_read_timeout(serve: Callable[..., Origin]) -> None:
    origin = serve({"/stall": stall})
    started = time.monotonic()

    refused = refusal(origin.url("/stall"), replace(ALLOW_LOOPBACK, read_timeout=0.3))

    assert refused.code == "timeout"
    assert time.monotonic() - started < 1.5


def test_a_redirect_loop_ends_at_max_redirects(serve: Callable[..., Origin]) -> None:
    origin = serve({"/loop": redirect("/loop")})

    refused = refusal(origin.url("/loop"), replace(ALLOW_LOOPBACK, max_redirects=3))

    assert refused.code == "too_many_redirects"
    assert len(origin.seen) == 4


@pytest.mark.parametrize("path", ["/missing", "/error"])
def test_a_response_other_than_200_is_refused(path: str, serve: Callable[..., Origin]) -> None:
    def server_error(handler: _Handler) -> None:
        handler.send_error(500)

    origin = serve({"/error": server_error})

    refused = refusal(origin.url(path), ALLOW_LOOPBACK)

    assert refused.code == "bad_status"
    assert ("404" if path == "/missing" else "500") in refused.message


def test_a_body_shorter_than_its_length_is_refused(serve: Callable[..., Origin]) -> None:
    origin = serve({"/short": body(b"only this", length=1000)})

    assert refusal(origin.url("/short"), ALLOW_LOOPBACK).code == "connection_failed"


def test_a_closed_port_is_a_connection_failure(connects: list[tuple[str, int]]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    refused = refusal(f"http://127.0.0.1:{port}/", ALLOW_LOOPBACK)

    assert refused.code == "connection_failed"
    assert connects == [("127.0.0.1", port)]


def test_the_default_resolver_returns_an_address_as_is() -> None:
    assert resolve_host("127.0.0.1", 80) == ["127.0.0.1"]


# --- HTTPS ----------------------------------------------------------------------------------------


def _self_signed_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_https_uses_the_url_name_for_sni_host_and_certificate_while_connecting_to_the_checked_address(
    serve: Callable[..., Origin], connects: list[tuple[str, int]], tmp_path: Path
) -> None:
    cert_path, key_path = _self_signed_certificate(tmp_path, "localhost")
    server_names: list[str | None] = []
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_path, key_path)
    tls.sni_callback = lambda _socket, server_name, _context: server_names.append(server_name)
    origin = serve({"/secure": body(b"over tls")}, tls=tls)
    dns = FakeDNS({"localhost": [["127.0.0.1"]], "other.example": [["127.0.0.1"]]})
    policy = replace(
        ALLOW_LOOPBACK, resolver=dns, ssl_context=ssl.create_default_context(cafile=str(cert_path))
    )

    dest = io.BytesIO()
    result = fetch_to_file(origin.url("/secure", host="localhost", scheme="https"), dest, policy=policy)
    mismatch = refusal(origin.url("/secure", host="other.example", scheme="https"), policy)

    assert dest.getvalue() == b"over tls" and result.url.startswith("https://localhost:")
    assert server_names[0] == "localhost"
    assert origin.seen[0].headers["Host"] == f"localhost:{origin.port}"
    assert connects == [("127.0.0.1", origin.port)] * 2
    # The certificate is checked against the name in the URL, not the address connected to.
    assert mismatch.code == "connection_failed"
    assert "other.example" in mismatch.message
    assert len(origin.seen) == 1
