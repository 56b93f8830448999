"""A small storage server for the client's tests: Range, cut connections, expiring links, wrong bytes.

Files are served at `/f/<name>?g=<generation>`. A link's generation expires (403, like an expired
presigned URL) once `expire_after` requests of that generation have arrived; `links()` signs a
listing with the current generation and starts a new one, as the Loupe server does each time
items.jsonl is read.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from loupe_client.download import Remote


@dataclass
class Storage:
    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    # Bytes of the body to send before dropping the connection, per name, one entry per request.
    cuts: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    ignore_range: bool = False
    expire_after: int | None = None  # requests per link generation before its links are refused
    always_refused: set[str] = field(default_factory=set)
    delay_s: float = 0.0
    generation: int = 0
    served: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)  # name, Range, status
    listings: list[set[str] | None] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, data: bytes) -> Remote:
        self.files[name] = data
        return Remote(name=name, url=self.link(name), sha256=sha(data), size=len(data))

    def link(self, name: str, generation: int | None = None) -> str:
        generation = self.generation if generation is None else generation
        return f"{self.url}/f/{quote(name)}?g={generation}"

    def links(self, names: set[str] | None = None) -> Iterator[Remote]:
        """A listing of every file with fresh links (what re-reading items.jsonl gives)."""
        with self.lock:
            self.listings.append(None if names is None else set(names))
            self.generation += 1
            generation = self.generation
        for name, data in self.files.items():
            yield Remote(name=name, url=self.link(name, generation), sha256=sha(data), size=len(data))

    def names_requested(self, status: int | None = None) -> list[str]:
        return [name for name, _, code in self.requests if status is None or code == status]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    storage: Storage

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes, headers: dict[str, str], name: str, cut: int | None) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        if cut is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()
        if cut is not None:
            self.close_connection = True

    def do_GET(self) -> None:
        storage = self.storage
        parts = urlsplit(self.path)
        name = unquote(parts.path.removeprefix("/f/"))
        generation = int(parse_qs(parts.query).get("g", ["0"])[0])
        asked = self.headers.get("Range")
        with storage.lock:
            storage.served[generation] += 1
            expired = name in storage.always_refused or (
                storage.expire_after is not None and storage.served[generation] > storage.expire_after
            )
            storage.active += 1
            storage.max_active = max(storage.max_active, storage.active)
            cut = storage.cuts[name].pop(0) if storage.cuts.get(name) else None
        try:
            time.sleep(storage.delay_s)
            body = storage.files.get(name)
            status, headers, payload = self._plan(body, asked, expired)
            with storage.lock:
                storage.requests.append((name, asked, status))
            self._answer(status, payload, headers, name, cut if status in (200, 206) else None)
        finally:
            with storage.lock:
                storage.active -= 1

    def _plan(
        self, body: bytes | None, asked: str | None, expired: bool
    ) -> tuple[int, dict[str, str], bytes]:
        if expired:
            return 403, {"Content-Type": "application/xml"}, b"<Error><Code>AccessDenied</Code></Error>"
        if body is None:
            return 404, {}, b"missing"
        match = re.fullmatch(r"bytes=(\d+)-", asked or "")
        if match is None or self.storage.ignore_range:
            return 200, {"Accept-Ranges": "bytes"}, body
        start = int(match.group(1))
        if start >= len(body):
            return 416, {"Content-Range": f"bytes */{len(body)}"}, b""
        return 206, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}, body[start:]


@contextmanager
def storage_server() -> Iterator[Storage]:
    storage = Storage()
    handler = type("Handler", (_Handler,), {"storage": storage})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    storage.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield storage
    finally:
        server.shutdown()
        server.server_close()
