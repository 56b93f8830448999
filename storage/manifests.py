"""Reading manifests: JSON lines or CSV, streamed, with the line of every problem."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import IO, Any

from projects.exceptions import InvalidInput


def manifest_parse(stream: IO[bytes], *, name: str, max_rows: int) -> Iterator[dict[str, Any]]:
    """Rows of a manifest as dicts. CSV when the name ends in .csv, JSON lines otherwise.

    CSV columns: key or url, name, and optionally meta (a JSON object). Raises InvalidInput naming
    the line of the first row that cannot be read at all; field-level problems are the caller's.
    """
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")
    try:
        if name.lower().endswith(".csv"):
            yield from _csv_rows(text, max_rows)
        else:
            yield from _jsonl_rows(text, max_rows)
    except UnicodeDecodeError:
        raise InvalidInput("The manifest is not UTF-8 text.", field="manifest") from None
    finally:
        text.detach()


def _jsonl_rows(text: IO[str], max_rows: int) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(text, start=1):
        if not line.strip():
            continue
        if number > max_rows:
            raise InvalidInput(f"At most {max_rows} rows per manifest.", field="manifest")
        try:
            row = json.loads(line)
        except ValueError:
            raise InvalidInput("A line is not valid JSON.", line=number) from None
        if not isinstance(row, dict):
            raise InvalidInput("Each line must be a JSON object.", line=number)
        yield row


def _csv_rows(text: IO[str], max_rows: int) -> Iterator[dict[str, Any]]:
    reader = csv.DictReader(text)
    for number, row in enumerate(reader, start=2):
        if number > max_rows + 1:
            raise InvalidInput(f"At most {max_rows} rows per manifest.", field="manifest")
        clean: dict[str, Any] = {k.strip(): v for k, v in row.items() if k and v not in (None, "")}
        if "meta" in clean:
            try:
                clean["meta"] = json.loads(clean["meta"])
            except ValueError:
                raise InvalidInput("The meta column must hold a JSON object.", line=number) from None
        yield clean
