"""Start embedded PostgreSQL / Redis for the test run when DATABASE_URL / REDIS_URL are unset.

pytest-django reads the settings while loading conftests but opens no connection until the
django_db_setup fixture, so pytest_configure is early enough.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from config.embedded import ensure_services_for_tests

_stop_key = pytest.StashKey[Callable[[], None]]()


def pytest_configure(config: pytest.Config) -> None:
    if config.option.help:
        return
    config.stash[_stop_key] = ensure_services_for_tests()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _stop_key in config.stash:
        config.stash[_stop_key]()
