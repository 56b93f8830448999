"""Per-request context that services read without threading it through every signature."""

from __future__ import annotations

from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("loupe_request_id", default="")
