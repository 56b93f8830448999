"""Fetching a URL a user gave us, without letting the user aim the server at itself (SSRF).

A URL import runs on our workers, inside our network: a URL naming 127.0.0.1, a private address or
the cloud metadata service (169.254.169.254) would read what only the server may read. Label Studio
shipped with this guard switched off (CVE-2023-47116); CVAT fetched URLs with no timeout at all.

The rules, each enforced on every hop of a redirect chain:

- only http and https;
- the host is resolved once per connection, every address it resolves to must be public (see
  ``is_public_address``) or inside the operator's ``allowed_networks``, and the connection goes to
  that checked address, never to the name again: a DNS answer that changes between the check and
  the connect (DNS rebinding) cannot move the connection. The name is still sent as the Host
  header, and for https as SNI and checked against the certificate;
- proxies from the environment (HTTP_PROXY…) are never used: a proxy would make the connection on
  our behalf to an address we never checked. http.client, which does the HTTP here, reads no
  environment variables, unlike urllib.request and requests;
- limits on size (from Content-Length up front, then on the bytes actually received), on each
  connect and read, and a wall-clock deadline on the whole fetch that a server dripping one byte
  at a time cannot stretch;
- credentials in the URL (``https://user:pass@host/``) go only to the origin they were given for,
  and never appear in the URLs this module reports.

``request_json`` sends one request to a JSON API (an external model server) under the same rules;
such servers usually live on internal networks, which the operator allow-lists explicitly.
``request_bytes`` sends a body given as bytes (a signed webhook payload) under the same rules.

No Django here: the ingest service calls ``fetch_to_file`` outside any transaction and records the
result.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import ipaddress
import json
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, NamedTuple, cast
from urllib.parse import quote, unquote, urljoin, urlsplit

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
FetchRefusedCode = Literal[
    "scheme_not_allowed",
    "address_not_allowed",
    "too_large",
    "timeout",
    "too_many_redirects",
    "bad_status",
    "bad_url",
    "connection_failed",
    "not_json",
]

GiB = 1024**3
_CHUNK = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_SUPPORTED_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class FetchRefused(Exception):
    """The fetch was refused or failed; ``code`` is stable and machine-readable."""

    def __init__(self, code: FetchRefusedCode, message: str) -> None:
        super().__init__(message)
        self.code: FetchRefusedCode = code
        self.message = message


def resolve_host(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host``, in its order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 5 * GiB
    connect_timeout: float = 10.0
    # The longest wait for the next bytes from the server.
    read_timeout: float = 30.0
    # A hard deadline for the whole fetch, redirects and body included.
    total_timeout: float = 900.0
    max_redirects: int = 5
    allowed_schemes: tuple[str, ...] = ("http", "https")
    # Networks the operator trusts although they are not public, e.g. an internal data server.
    allowed_networks: tuple[IPNetwork, ...] = ()
    # Tests swap the resolver to exercise names that resolve to forbidden addresses without DNS.
    resolver: Callable[[str, int], list[str]] = resolve_host
    # None: the system's trusted CAs.
    ssl_context: ssl.SSLContext | None = None
    user_agent: str = "Loupe-fetch/1"

    def __post_init__(self) -> None:
        unsupported = set(self.allowed_schemes) - _SUPPORTED_SCHEMES
        if unsupported:
            raise ValueError(f"only http and https can be fetched, not {sorted(unsupported)}")
        if self.max_bytes < 0 or self.max_redirects < 0:
            raise ValueError("max_bytes and max_redirects cannot be negative")
        if min(self.connect_timeout, self.read_timeout, self.total_timeout) <= 0:
            raise ValueError("timeouts must be positive")


@dataclass(frozen=True)
class FetchResult:
    url: str  # the URL the body came from, after redirects, without credentials
    status: int
    content_type: str | None
    size: int
    sha256: str
    redirects: tuple[str, ...] = ()  # each URL redirected to, in order


# --- Which addresses may be fetched ---------------------------------------------------------------

_FORBIDDEN_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network": connecting to 0.0.0.0 reaches the local host on Linux
        "10.0.0.0/8",  # private (RFC 1918)
        "100.64.0.0/10",  # carrier-grade NAT (also Alibaba's metadata service, 100.100.100.200)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, with the cloud metadata service at 169.254.169.254
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, with the broadcast address 255.255.255.255
    )
)
# Global unicast is 2000::/3; everything outside it (loopback, unique-local fc00::/7 with AWS's
# metadata at fd00:ec2::254, link-local fe80::/10, site-local fec0::/10, multicast ff00::/8…) is
# refused by that rule. These are the ranges inside 2000::/3 that are not public either.
_FORBIDDEN_V6_GLOBAL = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "2001::/23",  # IETF protocol assignments: Teredo 2001::/32, benchmarking, ORCHID
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
    )
)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_COMPATIBLE_V6 = ipaddress.IPv6Network("::/96")  # deprecated IPv4-compatible form, with :: and ::1
_NAT64_V6 = ipaddress.IPv6Network("64:ff9b::/96")


def is_public_address(ip: str | IPAddress) -> bool:
    """Whether ``ip`` is a public unicast address that a user-given URL may make us connect to.

    IPv6 forms that carry an IPv4 address (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4
    2002::/16) are judged by that IPv4 address, because the packets end up there. Python's own
    ``is_global`` is not enough: it calls 2002:7f00:1:: and 64:ff9b::7f00:1 (loopback in
    disguise) global.
    """
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(address, ipaddress.IPv4Address):
        return not any(address in net for net in _FORBIDDEN_V4)
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return is_public_address(embedded)
    if address in _COMPATIBLE_V6:
        return False  # deprecated since 2006 (RFC 4291); no server of ours lives there
    return address in _GLOBAL_UNICAST_V6 and not any(address in net for net in _FORBIDDEN_V6_GLOBAL)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64_V6:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def endpoint_refusal(url: str, *, policy: FetchPolicy) -> str | None:
    """Why the server may not connect to ``url``'s host (None when it may): the same address rule
    as URL import, for endpoints other libraries connect to (S3 endpoints of bucket sources)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in policy.allowed_schemes or not parsed.hostname:
        return "scheme_not_allowed" if parsed.hostname else "bad_url"
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = [ipaddress.ip_address(a) for a in policy.resolver(parsed.hostname, port)]
    except (OSError, ValueError):
        return "connection_failed"
    if not addresses or not all(_address_allowed(a, policy) for a in addresses):
        return "address_not_allowed"
    return None


def _address_allowed(address: IPAddress, policy: FetchPolicy) -> bool:
    if is_public_address(address):
        return True
    # ::ffff:10.0.0.5 is 10.0.0.5 on the wire: an allowlisted 10.0.0.0/8 covers it too.
    candidates = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(
        candidate in net
        for candidate in candidates
        for net in policy.allowed_networks
        if candidate.version == net.version
    )


# --- Reading URLs ---------------------------------------------------------------------------------

_NUMERIC_LABEL = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")
_HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")


@dataclass(frozen=True)
class _Target:
    """One parsed, checked URL: where to connect and what to ask for."""

    scheme: str
    host: str  # an IDNA name or a canonical IP address, without brackets
    ip: IPAddress | None  # set when the URL names an address rather than a host name
    port: int
    path: str  # path and query, as sent in the request line
    username: str | None
    password: str | None

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def public_url(self) -> str:
        """The URL without credentials: safe to log, store and show."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == _DEFAULT_PORTS[self.scheme] else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path}"


def _parse_url(url: str, policy: FetchPolicy) -> _Target:
    # Messages never quote the whole URL: it may carry a password.
    # Whitespace, control characters and backslashes are read differently by different URL
    # parsers; one of them would be the one connecting.
    if any(ord(char) <= 0x20 or char in "\x7f\\" for char in url):
        raise FetchRefused("bad_url", "the URL contains whitespace, a control character or a backslash")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an invalid address in brackets
        raise FetchRefused("bad_url", f"the URL cannot be parsed: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in policy.allowed_schemes:
        raise FetchRefused("scheme_not_allowed", f"scheme {scheme or '(none)'!r} is not allowed")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise FetchRefused("bad_url", "the URL has an invalid port") from exc
    raw_host = parts.hostname
    if not raw_host:
        raise FetchRefused("bad_url", "the URL has no host")
    host, ip = _parse_host(raw_host)
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=~?")
    return _Target(
        scheme=scheme,
        host=host,
        ip=ip,
        port=port,
        path=path,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def _parse_host(raw_host: str) -> tuple[str, IPAddress | None]:
    """The host as sent in Host and SNI, and the address it spells if it is an IP literal."""
    if ":" in raw_host:
        try:
            ip6 = ipaddress.IPv6Address(raw_host)
        except ValueError as exc:
            raise FetchRefused("bad_url", f"{raw_host!r} is not a valid IPv6 address") from exc
        return str(ip6), ip6
    ip4 = _parse_ipv4(raw_host)
    if ip4 is not None:
        return str(ip4), ip4
    try:
        host = raw_host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise FetchRefused("bad_url", f"{raw_host!r} is not a valid host name") from exc
    if not _HOSTNAME.fullmatch(host):
        raise FetchRefused("bad_url", f"{raw_host!r} is not a valid host name")
    return host, None


def _parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address ``host`` spells in any form libc's inet_aton and browsers accept.

    2130706433, 0x7f.1, 0177.0.0.1 and 127.1 are all 127.0.0.1 to the resolver, so they are read
    as numbers here and never handed to a resolver as names. As in the WHATWG URL standard, a host
    whose last label is numeric is an address or invalid, never a name.
    """
    labels = host.removesuffix(".").split(".")
    if not _NUMERIC_LABEL.fullmatch(labels[-1]):
        return None
    if len(labels) > 4:
        raise FetchRefused("bad_url", f"{host!r} is not a valid IPv4 address")
    numbers = [_parse_ipv4_number(label, host) for label in labels]
    *leading, last = numbers
    if any(number > 0xFF for number in leading) or last >= 1 << (8 * (4 - len(leading))):
        raise FetchRefused("bad_url", f"{host!r} is an IPv4 address out of range")
    value = last
    for position, number in enumerate(leading):
        value += number << (8 * (3 - position))
    return ipaddress.IPv4Address(value)


def _parse_ipv4_number(label: str, host: str) -> int:
    try:
        if label[:2].lower() == "0x":
            return int(label[2:] or "0", 16)
        if len(label) > 1 and label.startswith("0"):
            return int(label, 8)
        return int(label, 10)
    except ValueError as exc:
        raise FetchRefused("bad_url", f"{host!r} is not a valid IPv4 address") from exc


# --- Connecting -----------------------------------------------------------------------------------


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def budget(self, cap: float) -> float:
        """How long the next blocking step may take: ``cap``, or less if the deadline is nearer."""
        remaining = self._end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"total_timeout of {self.seconds}s reached")
        return min(cap, remaining)


class _DeadlineReader(io.RawIOBase):
    """The socket as http.client reads it: each receive gets what is left of the deadline."""

    def __init__(self, sock: socket.socket, deadline: _Deadline, read_timeout: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._read_timeout = read_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        self._sock.settimeout(self._deadline.budget(self._read_timeout))
        return self._sock.recv_into(buffer)


class _DeadlineSocket:
    """Stands in for the socket inside http.client, which only sends, reads and closes it.

    Reading through ``_DeadlineReader`` is what makes the deadline hard: status line, headers and
    body alike are read one receive at a time, each bounded by the time left.
    """

    def __init__(self, sock: socket.socket, deadline: _Deadline, read_timeout: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._read_timeout = read_timeout

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._deadline.budget(self._read_timeout))
        self._sock.sendall(data)

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline, self._read_timeout))

    def close(self) -> None:
        # http.client closes the connection as soon as the headers are in when the server will
        # close (we always ask it to), while the body is still to be read: the fetch closes the
        # real socket itself when it is done.
        pass


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP or HTTPS connection to an address checked beforehand.

    ``host`` (the name from the URL) is used for the Host header, SNI and the certificate check;
    the TCP connection goes to ``ip`` and nowhere else, so the name is never resolved again.
    """

    def __init__(self, target: _Target, ip: IPAddress, deadline: _Deadline, policy: FetchPolicy) -> None:
        super().__init__(target.host, target.port)
        self.default_port = _DEFAULT_PORTS[target.scheme]  # Host carries the port only when not default
        self._target = target
        self._ip = ip
        self._deadline = deadline
        self._policy = policy
        self._raw_sock: socket.socket | None = None

    def connect(self) -> None:
        timeout = self._deadline.budget(self._policy.connect_timeout)
        sock = socket.create_connection((str(self._ip), self._target.port), timeout=timeout)
        self._raw_sock = sock
        if self._target.scheme == "https":
            context = self._policy.ssl_context or ssl.create_default_context()
            sock.settimeout(self._deadline.budget(self._policy.connect_timeout))
            # wrap_socket takes over the socket; close the TLS one from now on.
            self._raw_sock = sock = context.wrap_socket(sock, server_hostname=self._target.host)
        self.sock = cast(socket.socket, _DeadlineSocket(sock, self._deadline, self._policy.read_timeout))

    def close_socket(self) -> None:
        if self._raw_sock is not None:
            self._raw_sock.close()
            self._raw_sock = None


def _checked_addresses(target: _Target, policy: FetchPolicy) -> list[IPAddress]:
    """The addresses to connect to, resolved once; refused if any of them is not allowed.

    Every address is checked, not only the first: a name answering with one public and one
    private address must not get a second chance at the private one on a retry.
    """
    if target.ip is not None:
        answers: list[str] = [str(target.ip)]
    else:
        try:
            answers = policy.resolver(target.host, target.port)
        except OSError as exc:
            raise FetchRefused("connection_failed", f"cannot resolve {target.host!r}: {exc}") from exc
        if not answers:
            raise FetchRefused("connection_failed", f"{target.host!r} resolves to no address")
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            address = ipaddress.ip_address(answer)
        except ValueError as exc:
            raise FetchRefused(
                "address_not_allowed", f"{target.host!r} resolved to {answer!r}, which is not an address"
            ) from exc
        if not _address_allowed(address, policy):
            raise FetchRefused(
                "address_not_allowed",
                f"{target.host!r} resolves to {address}, which is not a public address",
            )
        addresses.append(address)
    return addresses


def _open(
    target: _Target,
    auth: str | None,
    deadline: _Deadline,
    policy: FetchPolicy,
    *,
    method: str = "GET",
    body: bytes | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> tuple[_PinnedConnection, http.client.HTTPResponse]:
    """Connect to the first checked address that accepts, send the request, read the headers.

    ``extra_headers`` are added to (and may replace) the defaults; an ``Authorization`` among them
    wins over credentials from the URL.
    """
    failures: list[str] = []
    for ip in _checked_addresses(target, policy):
        connection = _PinnedConnection(target, ip, deadline, policy)
        try:
            connection.connect()
        except TimeoutError:
            connection.close_socket()
            raise
        except ssl.SSLError as exc:
            connection.close_socket()
            raise FetchRefused("connection_failed", f"TLS with {target.host} ({ip}) failed: {exc}") from exc
        except OSError as exc:
            connection.close_socket()
            failures.append(f"{ip}: {exc}")
            continue
        headers = {"User-Agent": policy.user_agent, "Connection": "close", "Accept": "*/*"}
        if auth is not None:
            headers["Authorization"] = auth
        headers.update(extra_headers or {})
        try:
            # http.client adds "Accept-Encoding: identity": the body is stored as sent, so a
            # compressed response cannot expand past max_bytes behind our back.
            connection.request(method, target.path, body=body, headers=headers)
            return connection, connection.getresponse()
        except BaseException:
            connection.close_socket()
            raise
    raise FetchRefused(
        "connection_failed", f"cannot connect to {target.host} port {target.port}: {'; '.join(failures)}"
    )


def _basic_auth(target: _Target) -> str | None:
    if target.username is None:
        return None
    token = f"{target.username}:{target.password or ''}".encode()
    return "Basic " + base64.b64encode(token).decode("ascii")


# --- Fetching -------------------------------------------------------------------------------------


def fetch_to_file(url: str, dest: BinaryIO, *, policy: FetchPolicy) -> FetchResult:
    """Stream the body at ``url`` into ``dest`` and describe what was written.

    Follows up to ``policy.max_redirects`` redirects, each one checked like the first URL. Raises
    FetchRefused; ``dest`` may then hold part of a body (the limits stop a download midway), so
    the caller discards it. Only a 200 response is a success.
    """
    deadline = _Deadline(policy.total_timeout)
    target = _parse_url(url, policy)
    start, first_origin = target.public_url, target.origin
    # Credentials are only for the origin they were given with; a redirect elsewhere drops them,
    # and credentials written into a redirect's Location are never used.
    auth = _basic_auth(target)
    redirects: list[str] = []
    try:
        while True:
            connection, response = _open(
                target, auth if target.origin == first_origin else None, deadline, policy
            )
            try:
                if response.status not in _REDIRECT_STATUSES:
                    return _receive(response, target, dest, redirects, policy)
                location = response.getheader("Location")
                if not location:
                    raise FetchRefused(
                        "bad_status", f"{target.public_url} answered {response.status} with no Location"
                    )
            finally:
                connection.close_socket()
            if len(redirects) >= policy.max_redirects:
                raise FetchRefused(
                    "too_many_redirects", f"more than {policy.max_redirects} redirects from {start}"
                )
            next_target = _parse_url(urljoin(target.public_url, location), policy)
            target = replace(next_target, username=None, password=None)
            redirects.append(target.public_url)
    except (TimeoutError, http.client.HTTPException, OSError) as exc:
        raise _refusal(exc, target, policy) from exc


def _refusal(
    exc: TimeoutError | http.client.HTTPException | OSError, target: _Target, policy: FetchPolicy
) -> FetchRefused:
    """The refusal reported for a timeout, a broken response or a network error."""
    if isinstance(exc, TimeoutError):
        return FetchRefused(
            "timeout",
            f"{target.public_url} took too long ({exc}): read_timeout is {policy.read_timeout}s, "
            f"total_timeout {policy.total_timeout}s",
        )
    if isinstance(exc, http.client.HTTPException):
        return FetchRefused("connection_failed", f"{target.public_url} sent a broken response: {exc!r}")
    return FetchRefused("connection_failed", f"connection to {target.public_url} failed: {exc}")


def _read_body(
    response: http.client.HTTPResponse,
    target: _Target,
    policy: FetchPolicy,
    write: Callable[[bytes], object],
) -> int:
    """Hand the body to ``write`` chunk by chunk, never more than ``policy.max_bytes``; its size."""
    if response.length is not None and response.length > policy.max_bytes:
        raise FetchRefused(
            "too_large",
            f"{target.public_url} declares {response.length} bytes; the limit is {policy.max_bytes}",
        )
    declared = response.length
    size = 0
    while True:
        # Never ask for more than one byte past the limit: that byte is the proof it is exceeded.
        chunk = response.read(min(_CHUNK, policy.max_bytes + 1 - size))
        if not chunk:
            break
        size += len(chunk)
        if size > policy.max_bytes:
            raise FetchRefused(
                "too_large", f"{target.public_url} sent more than the limit of {policy.max_bytes} bytes"
            )
        write(chunk)
    if declared is not None and size != declared:
        # http.client reports a body cut short as a normal end when reading in chunks.
        raise FetchRefused("connection_failed", f"{target.public_url} ended after {size} of {declared} bytes")
    return size


def _receive(
    response: http.client.HTTPResponse,
    target: _Target,
    dest: BinaryIO,
    redirects: list[str],
    policy: FetchPolicy,
) -> FetchResult:
    if response.status != 200:
        raise FetchRefused("bad_status", f"{target.public_url} answered {response.status} {response.reason}")
    digest = hashlib.sha256()

    def write(chunk: bytes) -> None:
        digest.update(chunk)
        dest.write(chunk)

    size = _read_body(response, target, policy, write)
    return FetchResult(
        url=target.public_url,
        status=response.status,
        content_type=response.getheader("Content-Type"),
        size=size,
        sha256=digest.hexdigest(),
        redirects=tuple(redirects),
    )


# --- JSON APIs ------------------------------------------------------------------------------------

_JSON_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_ERROR_TEXT_CHARS = 2000


class JsonResponse(NamedTuple):
    """What a JSON API answered."""

    status: int
    data: Any  # the parsed body; None when the body is empty, or when a non-2xx answer is not JSON
    headers: Mapping[str, str]  # the response headers, names in lower case
    text: str = ""  # the start of the body of a non-2xx answer that is not JSON, for messages


def request_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    policy: FetchPolicy,
    headers: Mapping[str, str] | None = None,
) -> JsonResponse:
    """Send one request to a JSON API under the same rules as ``fetch_to_file``; its answer.

    ``body``, unless None, is sent as UTF-8 JSON (NaN and infinities are refused with ValueError:
    they are not JSON). ``headers`` are added to the request; an ``Authorization`` among them wins
    over credentials written in the URL. Redirects are never followed: a 3xx comes back as it is,
    since a POST must not be replayed at another address, and an API that moved is a setting to fix.

    A 2xx answer must be JSON (an empty body gives ``data`` None), else FetchRefused ``not_json``.
    Any other status comes back with its body parsed when it is JSON, else with the start of its
    text: the caller decides what a 404 or a 503 means. The address checks, the size limit
    (``policy.max_bytes``, of the response), the timeouts and network failures raise FetchRefused
    with the codes of ``fetch_to_file``. One connection per request, closed when the body is in.
    """
    method = method.upper()
    if method not in _JSON_METHODS:
        raise ValueError(f"method {method!r} is not one of {sorted(_JSON_METHODS)}")
    deadline = _Deadline(policy.total_timeout)
    target = _parse_url(url, policy)
    payload = None if body is None else json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
    sent = {"Accept": "application/json"}
    if payload is not None:
        sent["Content-Type"] = "application/json; charset=utf-8"
    sent.update(headers or {})
    chunks: list[bytes] = []
    try:
        connection, response = _open(
            target, _basic_auth(target), deadline, policy, method=method, body=payload, extra_headers=sent
        )
        try:
            _read_body(response, target, policy, chunks.append)
        finally:
            connection.close_socket()
    except (TimeoutError, http.client.HTTPException, OSError) as exc:
        raise _refusal(exc, target, policy) from exc
    status = response.status
    received = {name.lower(): value for name, value in response.getheaders()}
    raw = b"".join(chunks)
    if not raw.strip():
        return JsonResponse(status, None, received)
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        if 200 <= status < 300:
            raise FetchRefused(
                "not_json", f"{target.public_url} answered {status} with a body that is not JSON: {exc}"
            ) from exc
        text = raw[:_ERROR_TEXT_CHARS].decode("utf-8", errors="replace")
        return JsonResponse(status, None, received, text)
    return JsonResponse(status, data, received)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class RawResponse(NamedTuple):
    """What a server answered to ``request_bytes``."""

    status: int
    headers: Mapping[str, str]  # the response headers, names in lower case
    body: bytes  # the start of the body: at most the ``keep`` bytes asked for


def request_bytes(
    method: str,
    url: str,
    body: bytes | None,
    *,
    policy: FetchPolicy,
    headers: Mapping[str, str] | None = None,
    keep: int = _ERROR_TEXT_CHARS,
) -> RawResponse:
    """Send one request whose body goes out exactly as given (a signed payload must reach the
    receiver byte for byte) under the rules of ``request_json``: addresses checked and pinned, no
    proxies, redirects never followed, the policy's timeouts.

    Any status comes back as it is. Only the first ``keep`` bytes of the answer are read, then the
    connection is closed, so a large answer costs nothing (``policy.max_bytes`` plays no part).
    The address checks, timeouts and network failures raise FetchRefused.
    """
    method = method.upper()
    if method not in _JSON_METHODS:
        raise ValueError(f"method {method!r} is not one of {sorted(_JSON_METHODS)}")
    deadline = _Deadline(policy.total_timeout)
    target = _parse_url(url, policy)
    try:
        connection, response = _open(
            target, _basic_auth(target), deadline, policy, method=method, body=body, extra_headers=headers
        )
        try:
            kept = response.read(keep) if keep > 0 else b""
        finally:
            connection.close_socket()
    except (TimeoutError, http.client.HTTPException, OSError) as exc:
        raise _refusal(exc, target, policy) from exc
    received = {name.lower(): value for name, value in response.getheaders()}
    return RawResponse(response.status, received, kept)
