"""DRF building blocks named in settings (parser, pagination).

Kept apart from config.api on purpose: DRF resolves these classes while ``rest_framework.views``
is still being imported, so this module must not import DRF's views (config.api does).
"""

from __future__ import annotations

import io
from typing import Any

from rest_framework import exceptions, pagination, parsers


def _has_nul(document: Any) -> bool:
    """Whether any string (key or value) holds U+0000, iteratively: bodies can be deep."""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


class JSONParser(parsers.JSONParser):
    """DRF's parser, refusing what PostgreSQL could never store or Python cannot parse safely.

    - nesting deep enough to exhaust the parser's recursion (``[[[[…``) is a 400, not a crash;
    - U+0000 anywhere: PostgreSQL text and jsonb cannot hold it, so it would fail at write time.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        raw = stream.read() if stream is not None else b""
        try:
            document = super().parse(io.BytesIO(raw), media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None
        # JSON strings cannot hold a raw NUL, only the escape: without it in the body (a fast byte
        # search) there is nothing to look for, and large bulk bodies skip the walk.
        if b"\\u0000" in raw and _has_nul(document):
            # Well-formed JSON, but content no field may hold.
            raise exceptions.ValidationError({"non_field_errors": ["Strings may not contain U+0000."]})
        return document


class CursorPagination(pagination.CursorPagination):
    """Cursor pagination on every list: stable under inserts and O(page) at any depth."""

    ordering = "-id"
    page_size_query_param = "page_size"
    max_page_size = 500
