"""Model instances from hand-written SQL, for the few hot paths where building the ORM query costs
more CPU than PostgreSQL spends answering it (authentication, project access, the work queue).

A `Columns` names one model's columns under a table alias for the SELECT list and turns its slice
of a result row back into an instance with the field converters applied (JSON, UUID…), as the
ORM would. `fetch_one` runs a statement and splits its row across several models; extra
columns after the models' come back as they are. `insert` and `update` write an instance the way
`save()` does, with statement text built once per model instead of compiled on every call;
`write` runs a hand-written write (a bulk upsert) whose result nobody reads. All of them run
through `prepared_cursor()`, whose statements PostgreSQL plans once per connection.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.db import connection
from django.db.models import Model

M = TypeVar("M", bound=Model)


def prepared_cursor() -> Any:
    """A cursor for hand-written hot-path SQL: parameters bound on the server and the statement
    prepared once per connection (config/postgresql), so PostgreSQL skips parsing and planning
    on every later call. The SQL must be preparable: one statement, placeholders only where a
    value goes, and no tuple parameters (`= ANY(%s)` with a list instead of `IN %s`)."""
    return connection.prepared_cursor()  # type: ignore[attr-defined]  # config.postgresql adds it


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
    with prepared_cursor() as db:
        db.execute(sql, params)
        row = db.fetchone()
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
    whose text is built once per model; the instance gets its primary key. Inside `together()`
    the insert waits for the others and the primary key comes when they are sent."""
    sql, fields = _insert_sql(type(instance))
    batch = _batch.get()
    if batch is not None:
        batch.add(instance, sql, fields, insert=True)
        return
    values = [f.get_db_prep_save(f.pre_save(instance, True), connection) for f in fields]
    with prepared_cursor() as db:
        db.execute(sql, values)
        instance.pk = db.fetchone()[0]
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
    included when listed), in one statement whose text is built once per model and field list.
    Inside `together()` the update waits for the others."""
    sql, fields = _update_sql(type(instance), tuple(attnames))
    batch = _batch.get()
    if batch is not None:
        batch.add(instance, sql, fields, insert=False)
        return
    values = [f.get_db_prep_save(f.pre_save(instance, False), connection) for f in fields]
    with prepared_cursor() as db:
        db.execute(sql, [*values, instance.pk])


# --- Writes sent together ----------------------------------------------------------------------


@dataclass
class _Write:
    instance: Model | None  # None for a statement written by hand (`write`)
    sql: str  # the statement with its values' placeholders replaced
    params: list[Any]
    insert: bool
    refers: list[tuple[Any, int]]  # (foreign key, the earlier insert of this batch it points to)


class _Batch:
    """The inserts and updates of one `together()` block not sent yet."""

    def __init__(self) -> None:
        self.writes: list[_Write] = []
        self.flushing = False

    def add(self, instance: Model, sql: str, fields: tuple[Any, ...], *, insert: bool) -> None:
        """Queue a write with its values as they are now (a later change to the instance is not
        written, as it would not have been had the statement been sent at once)."""
        if not insert and instance.pk is None:
            raise ValueError(f"cannot update an unsaved {type(instance).__name__}")
        if not insert and any(
            not w.insert
            and w.instance is not None
            and type(w.instance) is type(instance)
            and w.instance.pk == instance.pk
            for w in self.writes
        ):
            # One statement may not change a row twice (PostgreSQL would keep either change).
            self.flush()
        marks: list[str] = []
        params: list[Any] = []
        refers: list[tuple[Any, int]] = []
        for f in fields:
            target = self._pending(instance, f)
            if target is None:
                marks.append("%s")
                params.append(f.get_db_prep_save(f.pre_save(instance, insert), connection))
            else:
                pk = type(self.writes[target].instance)._meta.pk.column  # type: ignore[union-attr]
                marks.append(f"(SELECT {pk} FROM w{target})")  # noqa: S608  (model metadata)
                refers.append((f, target))
        if not insert:
            params.append(instance.pk)
        self.writes.append(_Write(instance, _with_marks(sql, marks), params, insert, refers))

    def _pending(self, instance: Model, f: Any) -> int | None:
        """The queued insert this foreign key of `instance` points to, if it points to one."""
        if not f.many_to_one or not f.is_cached(instance):
            return None
        related = f.get_cached_value(instance)
        if related is None or related.pk is not None:
            return None
        for n, queued in enumerate(self.writes):
            if queued.insert and queued.instance is related:
                return n
        raise ValueError(f"{f.name} points to an unsaved {type(related).__name__} not inserted here")

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        """Django's execute wrapper: whatever else runs on the connection (a read, a savepoint)
        first sends the writes waiting, so it sees them as if each had been sent at once."""
        if not self.flushing:
            self.flush()
        return execute(sql, params, many, context)

    def flush(self) -> None:
        if not self.writes:
            return
        writes, self.writes = self.writes, []
        inserts = [n for n, w in enumerate(writes) if w.insert]
        if len(writes) == 1:
            sql = writes[0].sql
        else:
            ctes = ", ".join(f"w{n} AS ({w.sql})" for n, w in enumerate(writes))
            returned = ", ".join(f"(SELECT * FROM w{n})" for n in inserts) or "1"  # noqa: S608
            sql = f"WITH {ctes} SELECT {returned}"  # statements built from model metadata
        params = [value for write in writes for value in write.params]
        self.flushing = True
        try:
            with prepared_cursor() as db:
                db.execute(sql, params)
                row = db.fetchone() if inserts else None
        finally:
            self.flushing = False
        for n, pk in zip(inserts, row or (), strict=True):
            instance = writes[n].instance
            assert instance is not None  # only model inserts return a key
            instance.pk = pk
            instance._state.adding, instance._state.db = False, connection.alias
        for sent in writes:
            for f, target in sent.refers:
                setattr(sent.instance, f.attname, writes[target].instance.pk)  # type: ignore[union-attr]


def write(sql: str, params: Sequence[Any]) -> None:
    """Run a hand-written write whose result nobody reads (a bulk upsert, say). Inside
    `together()` it waits and goes with the block's other writes, so it must not change a row
    that another write of the block changes; outside it runs at once."""
    batch = _batch.get()
    if batch is not None:
        batch.writes.append(_Write(None, sql, list(params), insert=False, refers=[]))
        return
    with prepared_cursor() as db:
        db.execute(sql, params)


def _with_marks(sql: str, marks: list[str]) -> str:
    """The statement with its value placeholders, in order, replaced by `marks` (the WHERE key's
    placeholder of an update stays)."""
    pieces = sql.split("%s")
    out = [pieces[0]]
    for n, piece in enumerate(pieces[1:]):
        out.append(marks[n] if n < len(marks) else "%s")
        out.append(piece)
    return "".join(out)


_batch: ContextVar[_Batch | None] = ContextVar("rows_batch", default=None)


@contextmanager
def together() -> Iterator[None]:
    """Send the inserts, updates and `write`s of this block as one statement (data-modifying WITH
    clauses), sparing a round trip per write on the hot paths (the queue's `next` and `submit`
    write three to five rows each).

    Writes wait until the block ends or until anything else runs on the connection, which sends
    them first: a read in the block sees every write before it, as if each had been sent alone.
    An insert's primary key is set when it is sent; a foreign key to a row inserted in the same
    block is filled in by PostgreSQL. The block must run inside a transaction and must not catch
    its own database errors: a failed write fails the statement it was sent in, not its own
    `insert`/`update` call. A second update of a row sends the writes before it first: one
    statement changes a row once.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("together() must run inside a transaction")
    if _batch.get() is not None:  # already inside a block: the outer one sends everything
        yield
        return
    batch = _Batch()
    token = _batch.set(batch)
    try:
        with connection.execute_wrapper(batch):
            yield
            batch.flush()
    finally:
        _batch.reset(token)
