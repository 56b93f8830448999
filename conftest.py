"""Services for the test run.

With DATABASE_URL / REDIS_URL unset, the embedded PostgreSQL / Redis are started for the run and
stopped after it. Then every configured service is probed once: if one cannot be reached, the tests
that need it are skipped with the reason — or, with LOUPE_TEST_REQUIRE_SERVICES=1 (CI), the run
fails at once, so a missing service can never pass as a green run with skipped tests.

pytest-django reads the settings while loading conftests but opens no connection until the
django_db_setup fixture, so pytest_configure is early enough.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from config.embedded import ensure_services_for_tests

_stop_key = pytest.StashKey[Callable[[], None]]()
_down_key = pytest.StashKey[dict[str, str]]()


def _probe_services() -> dict[str, str]:
    """Each unreachable service with the reason."""
    import psycopg
    import redis
    from django.conf import settings

    down: dict[str, str] = {}
    db = {key: str(value or "") for key, value in settings.DATABASES["default"].items() if key.isupper()}
    try:
        psycopg.connect(
            dbname="postgres", user=db["USER"], password=db["PASSWORD"], host=db["HOST"],
            port=db["PORT"] or None, connect_timeout=5,
        ).close()  # fmt: skip
    except psycopg.Error as exc:
        down["PostgreSQL"] = str(exc).strip()
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        down["Redis"] = str(exc).strip()
    return down


def pytest_configure(config: pytest.Config) -> None:
    if config.option.help:
        return
    config.stash[_stop_key] = ensure_services_for_tests()
    down = _probe_services()
    if down and os.environ.get("LOUPE_TEST_REQUIRE_SERVICES", "") in {"1", "true", "yes", "on"}:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in down.items())
        pytest.exit(
            f"LOUPE_TEST_REQUIRE_SERVICES is set and a service is unreachable: {reasons}", returncode=3
        )
    config.stash[_down_key] = down


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    down = config.stash.get(_down_key, {})
    if not down:
        return
    skip = pytest.mark.skip(reason="unreachable: " + ", ".join(down))
    for item in items:
        # Every test on the database needs PostgreSQL; workers and the cache need Redis too.
        if item.get_closest_marker("django_db") or "db" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _stop_key in config.stash:
        config.stash[_stop_key]()
