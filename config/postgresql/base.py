"""Django's PostgreSQL backend, with connection health checks only where they can catch something.

With persistent connections (CONN_MAX_AGE) Django's health check sends `SELECT 1` before the first
statement of every request, so a connection that died while idle (a database restart, a proxy
closing it) is replaced instead of failing the request. Under load a worker's connection answered
a statement milliseconds earlier, and the check is one more round trip on every request: about a
tenth of the database round trips of the annotation queue's `next` and `submit`. Here a connection
that answered within FRESH_S is taken as alive; one idle for longer is checked as before. A
database restart therefore costs at most the requests that reach a connection within FRESH_S of
its last answer (one per process), which are failing in flight anyway.

Prepared statements for the hot paths. Django binds parameters on the client: every statement
reaches PostgreSQL as new text to parse and plan. On the annotation queue that planning was about
half of PostgreSQL's CPU per request (a `next` or a `submit` is ten short statements, each
executed in well under a millisecond but planned in about as long). `prepared_cursor()` gives a
cursor that binds on the server, so psycopg prepares each statement once per connection and
PostgreSQL reuses the plan; projects.rows runs the hand-written hot-path statements through it.
The ORM keeps client-side binding (some of its SQL cannot be prepared), and
DATABASE_PREPARED_STATEMENTS=0 turns preparing off for a transaction-pooling proxy that cannot
keep a session's prepared statements.

Timestamps read by psycopg's compiled loader. Django loads every `timestamptz` through a Python
subclass of psycopg's pure-Python loader (to pin the timezone it hands back), so each timestamp of
every row is parsed in Python: 6.7 % of the web process's instructions for a `next` + `submit`
cycle. With USE_TZ the session's TimeZone is UTC, where the compiled loader already returns
datetimes in `datetime.timezone.utc`, the very value Django pins; the connection gets that loader
instead.

Server-side cursors (`QuerySet.iterator()`) that the garbage collector closes. A partly read
iterator kept alive by a reference cycle (an exception's traceback holding its frame, say) is
closed whenever the collector gets to it, which can be in the middle of the connection's next
statement, on the same thread, while psycopg holds the connection's lock; closing it there would
wait on that lock forever (psycopg/psycopg#1120). Such a cursor is only marked closed: PostgreSQL
drops it at the end of its transaction (or of the session, for one held across transactions).
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import psycopg
from django.db.backends.postgresql import base
from psycopg.pq import Format

FRESH_S = 1.0
PREPARE_AFTER = 2  # executions of one statement text before psycopg prepares it on a connection


_TIMESTAMPTZ_OID = psycopg.adapters.types["timestamptz"].oid
_Compiled: Any = psycopg.adapters.get_loader(_TIMESTAMPTZ_OID, Format.TEXT)  # C with psycopg[binary]


class UtcTimestampLoader(psycopg.adapt.Loader):
    """psycopg's own `timestamptz` loader (compiled with psycopg[binary], and final there, hence
    held rather than subclassed) on a UTC session. `timezone` is what Django's create_cursor
    compares with the connection's timezone to decide whether a cursor needs its own loader:
    equal, it keeps this one."""

    timezone = datetime.UTC

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        self.load = _Compiled(oid, context).load  # type: ignore[method-assign]  # called as is

    def load(self, data: Any) -> Any:  # replaced on each instance by the held loader's
        raise NotImplementedError


_ServerSideCursor: Any = base.ServerSideCursor  # type: ignore[attr-defined]  # psycopg 3 only


class _NamedCursor(_ServerSideCursor):  # type: ignore[misc]
    """Django's server-side cursor, safe to close from a finalizer that runs inside one of its own
    connection's operations (the connection is used by one thread only, so a lock held when
    it is closed is held by this very thread, below the collector)."""

    def close(self) -> None:
        lock = self._conn.lock
        if not lock.acquire(blocking=False):
            self._close()  # psycopg's bookkeeping only: no statement is sent
            return
        lock.release()
        super().close()


class DatabaseWrapper(base.DatabaseWrapper):
    answered_at = float("-inf")  # monotonic time the connection last served a request well
    health_check_done: bool  # Django's: the connection was checked (or taken as alive) this request

    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        if "prepare_threshold" not in self.settings_dict["OPTIONS"] and self.settings_dict.get(
            "PREPARED_STATEMENTS", True
        ):
            params["prepare_threshold"] = PREPARE_AFTER
        return params

    def prepared_cursor(self) -> Any:
        """A cursor binding parameters on the server, whose statements are prepared once per
        connection (or never, with preparing off: binding stays on the server, which a pooling
        proxy handles). Wrapped as Django wraps its own, so query logging, execute wrappers
        (`rows.together`) and error translation still apply."""
        self.close_if_health_check_failed()
        self.ensure_connection()
        with self.wrap_database_errors:
            raw = base.ServerBindingCursor(self.connection)  # type: ignore[call-arg]
            return self._prepare_cursor(raw)  # type: ignore[attr-defined]

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        connection = super().get_new_connection(conn_params)
        if self.timezone is datetime.UTC:  # USE_TZ: Django sets the session to UTC
            connection.adapters.register_loader(_TIMESTAMPTZ_OID, UtcTimestampLoader)
        return connection

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = super().create_cursor(name)
        if type(cursor) is _ServerSideCursor:
            cursor.__class__ = _NamedCursor  # the same cursor, with a close that cannot self-deadlock
        return cursor

    def close_if_unusable_or_obsolete(self) -> None:
        # Django calls this as each request (or Celery task) starts and ends. At the end of one
        # that used the connection without a connection error, the connection was just alive.
        if self.connection is not None and self.health_check_done and not self.errors_occurred:
            self.answered_at = time.monotonic()
        super().close_if_unusable_or_obsolete()

    def close_if_health_check_failed(self) -> None:
        if (
            self.connection is not None
            and not self.health_check_done
            and time.monotonic() - self.answered_at < FRESH_S
        ):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()
