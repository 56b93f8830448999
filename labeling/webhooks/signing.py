"""Webhook signatures: ``Loupe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>``.

The signed message is ``"<t>." + raw body``, keyed with the webhook's secret (the scheme Stripe
uses). Signing the timestamp with the body lets a receiver refuse a captured request replayed
later: ``verify`` accepts a signature only within ``tolerance_s`` of its own clock. Pure functions,
no Django: receivers written in Python can copy this file.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

SIGNATURE_HEADER = "Loupe-Signature"
EVENT_HEADER = "Loupe-Event"
DELIVERY_HEADER = "Loupe-Delivery"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300
SECRET_PREFIX = "whsec_"  # noqa: S105  (a label, not a secret)


def generate_secret() -> str:
    """A new secret: 256 random bits, URL-safe, recognisable by its prefix."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>." + body`` keyed with ``secret``."""
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    """The value of the ``Loupe-Signature`` header for ``body`` sent now (or at ``timestamp``)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},{SCHEME}={signature(secret, t, body)}"


def parse_header(header: str) -> tuple[int, list[str]]:
    """The timestamp and every ``v1`` signature of a header; ValueError when it has no timestamp.

    Several ``v1`` values are allowed (a sender may sign with an old and a new secret while they
    are rotated); unknown schemes are ignored, so a later ``v2`` does not break old receivers.
    """
    timestamp: int | None = None
    found: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if not value.isdigit():
                raise ValueError("the signature's timestamp is not a number")
            timestamp = int(value)
        elif key == SCHEME:
            found.append(value)
    if timestamp is None:
        raise ValueError("the signature header has no timestamp")
    return timestamp, found


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether ``header`` signs exactly ``body`` with ``secret``, made within ``tolerance_s``
    seconds of ``now`` (either side, for clocks that differ a little). Compares in constant time."""
    try:
        timestamp, candidates = parse_header(header)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)
