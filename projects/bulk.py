"""Bulk writes through PostgreSQL COPY, for the large batches jobs and bulk endpoints write.

Django's bulk_create and bulk_update are the right tools for ordinary batches. For thousands of
rows carrying JSON documents they cost seconds: bulk_create's UNNEST strategy escapes every JSON
document inside a text array, and bulk_update builds a CASE expression per column with one branch
per row. COPY streams rows that PostgreSQL parses directly. Callers hold the transaction and name
every NOT NULL column: COPY applies database defaults only, never Django's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import connection, models


def _cell(value: Any) -> Any:
    # Lists and dicts go to json/jsonb columns; everything else COPY adapts itself.
    return json.dumps(value) if isinstance(value, list | dict) else value


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(connection.ops.quote_name(name) for name in names)


def copy_insert(
    model: type[models.Model], columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> list[int]:
    """Insert rows (values in `columns` order) and return their new ids, in order.

    Ids are taken from the table's sequence first, so they come back without a RETURNING clause
    (which COPY has not).
    """
    if not rows:
        return []
    table = model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)", [table, len(rows)]
        )
        ids = [row[0] for row in cursor.fetchall()]
        statement = f"COPY {connection.ops.quote_name(table)} ({_quoted(['id', *columns])}) FROM STDIN"
        with cursor.cursor.copy(statement) as copy:
            for new_id, row in zip(ids, rows, strict=True):
                copy.write_row((new_id, *map(_cell, row)))
    return ids


def copy_update(model: type[models.Model], columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> int:
    """Set `columns` on the rows whose id is each tuple's first value; returns the rows updated.

    The values go into a temporary table by COPY, then one UPDATE … FROM joins it by id.
    """
    if not rows:
        return 0
    table = connection.ops.quote_name(model._meta.db_table)
    scratch = connection.ops.quote_name(f"loupe_update_{uuid.uuid4().hex[:12]}")
    with connection.cursor() as cursor:
        # Identifiers only, from model metadata and code, each quoted: no value is formatted in.
        cursor.execute(
            f"CREATE TEMPORARY TABLE {scratch} ON COMMIT DROP AS SELECT {_quoted(['id', *columns])} "  # noqa: S608
            f"FROM {table} WITH NO DATA"
        )
        with cursor.cursor.copy(f"COPY {scratch} ({_quoted(['id', *columns])}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(tuple(map(_cell, row)))
        assignments = ", ".join(
            f"{connection.ops.quote_name(c)} = u.{connection.ops.quote_name(c)}" for c in columns
        )
        cursor.execute(f"UPDATE {table} AS t SET {assignments} FROM {scratch} AS u WHERE t.id = u.id")  # noqa: S608
        updated = cursor.rowcount
        cursor.execute(f"DROP TABLE {scratch}")
    return int(updated)
