"""Connection health checks (config/postgresql): a connection idle past FRESH_S is checked and
replaced when it died; one that answered a request just before is used without the extra round
trip. A real PostgreSQL backend is terminated to kill a connection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import OperationalError, connection, connections

from config.postgresql.base import FRESH_S

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
