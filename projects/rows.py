"""Model instances from hand-written SQL, for the few hot paths where building the ORM query costs
more CPU than PostgreSQL spends answering it (authentication, project access, the work queue).

A `Columns` names one model's columns under a table alias for the SELECT list and turns its slice
of a result row back into an instance with the field converters applied (JSON, UUID…), as the
ORM would. `fetch_one` runs a statement and splits its row across several models; extra
columns after the models' come back as they are. `insert` and `update` write an instance the way
`save()` does, with statement text built once per model instead of compiled on every call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from django.db import connection
from django.db.models import Model

M = TypeVar("M", bound=Model)


class Columns(Generic[M]):
    def __init__(self, model: type[M], alias: str, attnames: Sequence[str] | None = None) -> None:
        fields = {f.attname: f for f in model._meta.concrete_fields}
        self.model = model
        self.attnames = list(attnames) if attnames is not None else list(fields)
        self.sql = ", ".join(f"{alias}.{fields[name].column}" for name in self.attnames)
        self.width = len(self.attnames)
        converters: list[Callable[..., Any] | None] = []
        for name in self.attnames:
            convert = getattr(fields[name], "from_db_value", None)
            converters.append(convert)
        self._converters = converters

    def build(self, values: Sequence[Any]) -> M:
        """An instance from this model's slice of a row (exactly `width` values)."""
        converted = [
            value if convert is None or value is None else convert(value, None, connection)
            for convert, value in zip(self._converters, values, strict=True)
        ]
        return self.model.from_db(connection.alias, self.attnames, converted)


def fetch_one(sql: str, params: Sequence[Any], *models: Columns[Any]) -> tuple[Any, ...] | None:
    """Run `sql`; its first row as one instance per `models` (in SELECT order) then the rest."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    out: list[Any] = []
    at = 0
    for columns in models:
        out.append(columns.build(row[at : at + columns.width]))
        at += columns.width
    out.extend(row[at:])
    return tuple(out)


@functools.cache
def _insert_sql(model: type[Model]) -> tuple[str, tuple[Any, ...]]:
    fields = tuple(f for f in model._meta.concrete_fields if not f.primary_key)
    columns = ", ".join(str(f.column) for f in fields)
    marks = ", ".join(["%s"] * len(fields))
    pk = model._meta.pk.column  # type: ignore[union-attr]
    sql = f"INSERT INTO {model._meta.db_table} ({columns}) VALUES ({marks}) RETURNING {pk}"  # noqa: S608
    return sql, fields


def insert(instance: Model) -> None:
    """Insert a new instance as `save()` would (defaults, auto_now, JSON, keys), in one statement
    whose text is built once per model; the instance gets its primary key."""
    sql, fields = _insert_sql(type(instance))
    values = [f.get_db_prep_save(f.pre_save(instance, True), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        instance.pk = cursor.fetchone()[0]
    instance._state.adding, instance._state.db = False, connection.alias


@functools.cache
def _update_sql(model: type[Model], attnames: tuple[str, ...]) -> tuple[str, tuple[Any, ...]]:
    by_attname = {f.attname: f for f in model._meta.concrete_fields}
    fields = tuple(by_attname[name] for name in attnames)
    assignments = ", ".join(f"{f.column} = %s" for f in fields)
    pk = model._meta.pk.column  # type: ignore[union-attr]
    return f"UPDATE {model._meta.db_table} SET {assignments} WHERE {pk} = %s", fields  # noqa: S608


def update(instance: Model, attnames: Sequence[str]) -> None:
    """Write these fields of an existing instance as `save(update_fields=…)` would (auto_now
    included when listed), in one statement whose text is built once per model and field list."""
    sql, fields = _update_sql(type(instance), tuple(attnames))
    values = [f.get_db_prep_save(f.pre_save(instance, False), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values, instance.pk])
