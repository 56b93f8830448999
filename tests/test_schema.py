"""The database schema Loupe's migrations build.

Every index is written on every insert (and on every update that is not HOT): an index whose
columns lead another index on the same table answers no query the longer one cannot, and only
costs writes, WAL and cache. Django gives each foreign key an index of its own, which is such a
duplicate wherever a composite index or a unique constraint starts with that column."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.db import connection

pytestmark = pytest.mark.django_db

OUR_APPS = ("projects", "storage", "labeling", "quality")


def redundant_indexes() -> list[str]:
    """'table: index (columns) leads other (columns)' for each plain btree index (not unique,
    not partial, no expressions) whose key columns, with their operator classes, are a leading
    part of another btree index's on the same table (that one not partial either)."""
    tables = {model._meta.db_table for label in OUR_APPS for model in apps.get_app_config(label).get_models()}
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, i.relname,
                   ARRAY(SELECT a.attname FROM unnest(ix.indkey) WITH ORDINALITY k(attnum, n)
                         JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.attnum
                         WHERE k.n <= ix.indnkeyatts ORDER BY k.n),
                   ix.indclass::text,
                   ix.indisunique, ix.indpred IS NULL AND ix.indexprs IS NULL, am.amname
            FROM pg_index ix
            JOIN pg_class i ON i.oid = ix.indexrelid
            JOIN pg_class c ON c.oid = ix.indrelid
            JOIN pg_am am ON am.oid = i.relam
            WHERE c.relname = ANY(%s) AND c.relnamespace = current_schema()::regnamespace
            """,
            [sorted(tables)],
        )
        rows = cursor.fetchall()
    found = []
    for table, index, mine, classes, unique, plain, method in rows:
        if unique or not plain or method != "btree":
            continue
        for other_table, other, theirs, other_classes, other_unique, other_plain, other_method in rows:
            if (
                other_table == table and other != index and other_plain and other_method == "btree"
                and theirs[: len(mine)] == mine
                # the same operator classes (Django's `_like` indexes serve LIKE 'prefix%' only)
                and other_classes.split()[: len(mine)] == classes.split()
                # longer, or the same columns: a unique one wins, of two plain ones report one
                and (len(theirs) > len(mine) or other_unique or index > other)
            ):  # fmt: skip
                found.append(f"{table}: {index} ({', '.join(mine)}) leads {other} ({', '.join(theirs)})")
                break
    return sorted(found)


def test_no_index_leads_another_on_its_table() -> None:
    assert redundant_indexes() == []
