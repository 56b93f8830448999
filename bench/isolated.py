"""A benchmark's own world: its own database (dropped at the end), object folder and broker
database, Django set up and migrated, and jobs that run in the benchmark's process.

The scenarios that build large worlds (quality, export, loop) run inside `run_isolated`, so none of
them touches `loupe_bench` or another bench's rows, and a worker on the same Redis never takes
their messages.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

from bench import Figure, ingest

# Set while a job is to run on a bench's own Celery worker: its message is then really sent.
TO_WORKER: list[bool] = []


@contextmanager
def no_job_messages() -> Iterator[None]:
    """Jobs run in this process (or where the bench sends them): their Celery messages would only
    wait in Redis for a worker that might belong to another database."""
    from projects.tasks import job_run

    send = job_run.apply_async

    def maybe_send(*args: Any, **kwargs: Any) -> Any:
        return send(*args, **kwargs) if TO_WORKER else None

    with mock.patch.object(job_run, "apply_async", side_effect=maybe_send):
        yield


def private_broker(url: str, db: int) -> str:
    """Redis database `db` of the same server, so no other worker on it takes the bench's messages."""
    if url.startswith("redis://"):
        return url.rsplit("/", 1)[0] + f"/{db}" if url.count("/") > 2 else url + f"/{db}"
    return url  # embedded Redis on a socket of its own


def drop_database(base: str, name: str) -> None:
    """Drop a bench database (its rows are hundreds of megabytes at full scale)."""
    import psycopg
    from django.apps import apps
    from django.db import connections

    from config.env import parse_database_url

    if apps.ready:
        connections.close_all()
    dsn = parse_database_url(base)
    with psycopg.connect(dbname="postgres", user=dsn.user, password=dsn.password, host=dsn.host,
                         port=dsn.port or None, autocommit=True) as admin:  # fmt: skip
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run_isolated(
    database: str, prefix: str, measure: Callable[[Path], list[Figure]], *, redis_db: int | None = None
) -> list[Figure]:
    """`measure(home)` in a world of its own (see the module); `redis_db` gives the bench a broker
    database of its own when it starts workers."""
    base = os.environ.get("DATABASE_URL")
    home = Path(tempfile.mkdtemp(prefix=prefix))
    with mock.patch.object(ingest, "BENCH_DB", database):  # our own database, not `loupe_bench`
        env, stop_services = ingest._database_env(home)
    try:
        env.update({
            "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only"), "LOUPE_HOME": str(home),
            "LOUPE_STORAGE": "local", "LOUPE_OBJECTS_DIR": str(home / "objects"),
            "DJANGO_SETTINGS_MODULE": "config.settings",
        })  # fmt: skip
        if redis_db is not None:
            env["REDIS_URL"] = private_broker(env["REDIS_URL"], redis_db)
        os.environ.update(env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        with no_job_messages():
            return measure(home)
    finally:
        if base:
            drop_database(base, database)
        if stop_services is not None:
            stop_services()
        shutil.rmtree(home, ignore_errors=True)
