"""The project's PostgreSQL backend (config/postgresql).

Health checks: a connection idle past FRESH_S is checked and replaced when it died; one that
answered a request just before is used without the extra round trip. A real PostgreSQL backend is
terminated to kill a connection. Server-side cursors: one closed by the garbage collector while
its connection is busy never waits on the connection's own lock. Timestamps: read by psycopg's
own (compiled) loader, as the same aware UTC datetimes Django's loader gives."""

from __future__ import annotations

import datetime
import gc
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import OperationalError, connection, connections
from django.db.backends.postgresql.psycopg_any import BaseTzLoader
from psycopg.pq import Format

from config.postgresql.base import FRESH_S
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def worker_connection() -> Iterator[Any]:
    """A connection as a gunicorn worker holds it: persistent, health checks on."""
    wrapper = connections.create_connection("default")
    wrapper.settings_dict.update(CONN_MAX_AGE=600, CONN_HEALTH_CHECKS=True)
    yield wrapper
    wrapper.close()


def request(wrapper: Any) -> int:
    """One request's life as Django drives it: close_old_connections at the start and the end,
    a statement in between. Returns the backend's pid."""
    wrapper.close_if_unusable_or_obsolete()
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = int(cursor.fetchone()[0])
    wrapper.close_if_unusable_or_obsolete()
    return pid


def kill(pid: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
        assert cursor.fetchone()[0] is True


def test_a_connection_that_died_while_idle_is_replaced_without_failing_the_request(
    worker_connection: Any,
) -> None:
    first = request(worker_connection)
    kill(first)
    worker_connection.answered_at -= FRESH_S + 1  # idle for longer than FRESH_S

    second = request(worker_connection)

    assert second != first  # checked, found dead, reconnected: the request saw nothing


def test_a_connection_that_just_answered_is_used_without_a_check(worker_connection: Any) -> None:
    first = request(worker_connection)
    assert request(worker_connection) == first
    kill(first)

    # No SELECT 1 before the statement: the request meets the dead connection (the price of the
    # saved round trip, paid only within FRESH_S of a good answer), and the next one recovers.
    with pytest.raises(OperationalError):
        request(worker_connection)
    worker_connection.close_if_unusable_or_obsolete()  # Django's request_finished, after the error
    assert request(worker_connection) != first


def test_the_project_database_uses_this_backend() -> None:
    assert connection.settings_dict["ENGINE"] == "config.postgresql"
    assert connection.settings_dict["CONN_HEALTH_CHECKS"] is True


def _open_cursors() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_cursors WHERE name LIKE '_django_curs_%%'")
        return int(cursor.fetchone()[0])


def test_an_iterator_the_collector_closes_mid_statement_does_not_wait_on_its_own_connection() -> None:
    UserFactory.create_batch(3)
    rows = User.objects.values_list("id", flat=True).iterator(chunk_size=1)
    assert next(rows)  # the server-side cursor is open, its generator suspended
    cycle: dict[str, Any] = {"rows": rows}
    cycle["cycle"] = cycle  # as an exception's traceback would hold it: only the collector frees it
    del rows, cycle
    assert _open_cursors() == 1

    # The collector runs while the connection is in the middle of a statement (psycopg holds its
    # lock); closing the cursor there must not wait for that lock.
    collector = threading.Thread(target=gc.collect)
    with connection.connection.lock:
        collector.start()
        collector.join(timeout=10)
        finished = not collector.is_alive()
    collector.join()
    assert finished, "closing the cursor waited on the lock its own connection held"
    assert _open_cursors() == 1  # left to PostgreSQL, which drops it with the transaction
    assert User.objects.count() == 3  # and the connection goes on


def test_an_iterator_closed_as_usual_closes_its_cursor_on_the_server() -> None:
    UserFactory.create_batch(3)
    rows = User.objects.values_list("id", flat=True).iterator(chunk_size=1)
    assert next(rows)
    assert _open_cursors() == 1
    rows.close()  # type: ignore[attr-defined]
    assert _open_cursors() == 0


def test_timestamps_are_read_by_psycopgs_own_loader_as_utc_datetimes() -> None:
    import psycopg

    oid = psycopg.adapters.types["timestamptz"].oid
    connection.ensure_connection()
    loader = connection.connection.adapters.get_loader(oid, Format.TEXT)
    assert not issubclass(loader, BaseTzLoader)  # Django's, a subclass of psycopg's Python loader
    compiled = psycopg.adapters.get_loader(oid, Format.TEXT)  # compiled with psycopg[binary]
    assert loader(oid, connection.connection).load.__self__.__class__ is compiled

    user = UserFactory()
    with connection.cursor() as cursor:  # Django's client-side binding cursor
        cursor.execute(
            "SELECT date_joined, '2024-02-29 23:59:59.999999+05:30'::timestamptz"
            " FROM auth_user WHERE id = %s",
            [user.pk],
        )
        joined, offset = cursor.fetchone()
    with connection.prepared_cursor() as cursor:  # hot-path statements, bound on the server
        cursor.execute("SELECT date_joined FROM auth_user WHERE id = %s", [user.pk])
        (prepared,) = cursor.fetchone()
    read = User.objects.get(pk=user.pk).date_joined
    for value in (joined, prepared, read):
        assert value.tzinfo is datetime.UTC
        assert value == user.date_joined
    assert offset == datetime.datetime(2024, 2, 29, 18, 29, 59, 999999, tzinfo=datetime.UTC)
    assert offset.tzinfo is datetime.UTC
