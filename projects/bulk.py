"""Bulk writes for the batches jobs and bulk endpoints write: PostgreSQL COPY for thousands of
rows, one statement over binary arrays for the batches of a job's chunk.

Django's bulk_create and bulk_update are the right tools for ordinary batches. For rows carrying
JSON documents they are slow: Django binds parameters client-side, so every document is escaped
into the statement's text (inside an array literal for bulk_create's UNNEST strategy, ~30 ms for
64 spaCy predictions), and bulk_update builds a CASE expression per column with one branch per
row. COPY streams rows that PostgreSQL parses directly; the array statements send each column as
one binary array parameter, bound server-side, JSON as text that PostgreSQL casts. Callers hold
the transaction and name every NOT NULL column: these apply database defaults only, never Django's.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import connection, models

from projects.rows import prepared_cursor, write


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


# Up to this many rows an update is one statement over arrays; above, the values go by COPY.
ARRAY_ROWS = 5_000


def copy_update(
    model: type[models.Model],
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    *,
    array_rows: int = ARRAY_ROWS,
) -> int:
    """Set `columns` on the rows whose id is each tuple's first value; returns the rows updated.

    Up to `array_rows` rows: one UPDATE … FROM unnest(arrays), one round trip. More: the values
    go into a temporary table by COPY, then one UPDATE … FROM joins it by id (four round trips
    and a temporary table, which only pay off for many thousands of rows).
    """
    if not rows:
        return 0
    table = connection.ops.quote_name(model._meta.db_table)
    if len(rows) <= array_rows:
        source, values, params = _unnest(model, ["id", *columns], rows)
        assignments = ", ".join(
            f"{connection.ops.quote_name(c)} = {v}" for c, v in zip(columns, values[1:], strict=True)
        )
        # Identifiers and types only, from model metadata, quoted: every value is a parameter.
        with prepared_cursor() as cursor:
            cursor.execute(f"UPDATE {table} AS t SET {assignments} FROM {source} WHERE t.id = u.id", params)  # noqa: S608
            return int(cursor.rowcount)
    assignments = ", ".join(
        f"{connection.ops.quote_name(c)} = u.{connection.ops.quote_name(c)}" for c in columns
    )
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
        cursor.execute(f"UPDATE {table} AS t SET {assignments} FROM {scratch} AS u WHERE t.id = u.id")  # noqa: S608
        updated = cursor.rowcount
        cursor.execute(f"DROP TABLE {scratch}")
    return int(updated)


def insert_on_conflict(
    model: type[models.Model],
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    *,
    conflict: Sequence[str],
    update: Sequence[str] = (),
    update_sql: Sequence[str] = (),
    counted: bool = True,
) -> int:
    """Insert rows (values in `columns` order) in one statement; a row that would break the
    unique `conflict` columns is skipped, or, with `update`, sets those columns of the row it
    meets. `update_sql` adds assignments written in SQL by the caller (constant text, reading
    the row met by its table name and the new one as EXCLUDED). Returns how many rows were
    inserted or updated. For batches up to a few thousand.

    Not `counted`, the statement is a `rows.write`: inside `rows.together()` it waits and goes
    with the block's other writes (a submit's quality records ride along with it), and 0 is
    returned, as nobody reads the count."""
    if not rows:
        return 0
    table = connection.ops.quote_name(model._meta.db_table)
    source, values, params = _unnest(model, columns, rows)
    if update or update_sql:
        action = "UPDATE SET " + ", ".join(
            [f"{connection.ops.quote_name(c)} = EXCLUDED.{connection.ops.quote_name(c)}" for c in update]
            + list(update_sql)
        )
    else:
        action = "NOTHING"
    # Identifiers and types only, from model metadata and code: every value is a parameter.
    sql = (
        f"INSERT INTO {table} ({_quoted(columns)}) SELECT {', '.join(values)} FROM {source} "  # noqa: S608
        f"ON CONFLICT ({_quoted(conflict)}) DO {action}"
    )
    if not counted:
        write(sql, params)
        return 0
    with prepared_cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


@functools.lru_cache(maxsize=128)
def _column_types(model: type[models.Model], columns: tuple[str, ...]) -> list[str]:
    """The database types of a model's columns (fixed for the life of the process)."""
    by_column = {field.column: field for field in model._meta.concrete_fields}
    return [str(by_column[column].db_type(connection)) for column in columns]


def _unnest(
    model: type[models.Model], columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> tuple[str, list[str], list[list[Any]]]:
    """`unnest(%b::type[], …) AS u(columns)`, the expression reading each column from it, and
    the arrays (one per column). JSON goes as text, cast by PostgreSQL: a binary text array
    needs no escaping, and psycopg would serialise it just the same."""
    kinds = _column_types(model, tuple(columns))
    arrays = ", ".join(f"%b::{'text' if kind in _JSON else kind}[]" for kind in kinds)
    source = f"unnest({arrays}) AS u({_quoted(columns)})"
    values = [
        f"u.{connection.ops.quote_name(c)}" + (f"::{kind}" if kind in _JSON else "")
        for c, kind in zip(columns, kinds, strict=True)
    ]
    params = [[_cell(row[i]) for row in rows] for i in range(len(columns))]
    return source, values, params


_JSON = {"json", "jsonb"}
