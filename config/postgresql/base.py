"""Django's PostgreSQL backend, with connection health checks only where they can catch something.

With persistent connections (CONN_MAX_AGE) Django's health check sends `SELECT 1` before the first
statement of every request, so a connection that died while idle (a database restart, a proxy
closing it) is replaced instead of failing the request. Under load a worker's connection answered
a statement milliseconds earlier, and the check is one more round trip on every request: about a
tenth of the database round trips of the annotation queue's `next` and `submit`. Here a connection
that answered within FRESH_S is taken as alive; one idle for longer is checked as before. A
database restart therefore costs at most the requests that reach a connection within FRESH_S of
its last answer (one per process), which are failing in flight anyway.
"""

from __future__ import annotations

import time

from django.db.backends.postgresql import base

FRESH_S = 1.0


class DatabaseWrapper(base.DatabaseWrapper):
    answered_at = float("-inf")  # monotonic time the connection last served a request well
    health_check_done: bool  # Django's: the connection was checked (or taken as alive) this request

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
