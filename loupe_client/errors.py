"""What can go wrong in a pull, as exceptions with one-line messages (the CLI prints `str(error)`)."""

from __future__ import annotations

from typing import Any


class LoupeError(Exception):
    """Base of every error the client raises on purpose."""


class ApiError(LoupeError):
    """The Loupe server answered with an error: `{"error": {"code", "message", "details"}}`."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


class DownloadError(LoupeError):
    """A file could not be downloaded (after the retries and link refreshes it was entitled to)."""


class LinkExpired(DownloadError):
    """The storage URL was refused (403/400): short-lived links expire; ask the server for a new one."""


class ChecksumMismatch(DownloadError):
    """The bytes received do not have the sha256 the server announced; nothing is left under `path`."""

    def __init__(self, path: str, expected: str, actual: str) -> None:
        super().__init__(f"{path}: sha256 mismatch (expected {expected}, got {actual})")
        self.path = path
        self.expected = expected
        self.actual = actual


class UnsafePath(LoupeError):
    """A name from the server or an archive would land outside the output folder."""


class ArchiveRefused(LoupeError):
    """An archive would expand beyond reason: a member packed tighter than any export is (a zip
    bomb), or more bytes than the disk has free. Nothing of it is written."""
