"""The sliding-window rate limit against the real Redis: what passes, what waits, and for how long."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.cache import cache
from rest_framework.test import APIRequestFactory

from config import throttling
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def allowed(throttle_class: type, request: Any) -> tuple[bool, float | None]:
    throttle = throttle_class()
    ok = throttle.allow_request(request, None)
    return ok, None if ok else throttle.wait()


@pytest.fixture
def clock(monkeypatch: Any) -> Clock:
    cache.clear()
    monkeypatch.setattr(throttling.UserRateThrottle, "THROTTLE_RATES", {"user": "10/min", "anon": "4/min"})
    monkeypatch.setattr(throttling.AnonRateThrottle, "THROTTLE_RATES", {"user": "10/min", "anon": "4/min"})
    fake = Clock(6_000_000.0)  # the start of a minute window
    monkeypatch.setattr(throttling.time, "time", fake)
    yield fake
    cache.clear()


def user_request(user: Any) -> Any:
    request = APIRequestFactory().get("/api/v1/me")
    request.user = user
    return request


def test_a_user_gets_the_rate_then_waits_and_others_are_not_affected(clock: Clock) -> None:
    first, second = UserFactory(), UserFactory()
    results = [allowed(throttling.UserRateThrottle, user_request(first))[0] for _ in range(11)]
    assert results == [True] * 10 + [False]
    assert allowed(throttling.UserRateThrottle, user_request(second)) == (True, None)


def test_the_previous_window_counts_in_proportion_to_its_overlap(clock: Clock) -> None:
    user = UserFactory()
    for _ in range(10):
        assert allowed(throttling.UserRateThrottle, user_request(user))[0]
    # 15 s into the next window, 75 % of the previous window's 10 requests still count: 7.5.
    clock.now += 75
    results = [allowed(throttling.UserRateThrottle, user_request(user)) for _ in range(3)]
    assert [ok for ok, _ in results] == [True, True, False]
    # The estimate (7.5 + 2 = 9.5) drops below 10 after (9.5 - 10 + 1) * 60 / 10 = 3 s.
    assert results[2][1] == 3
    clock.now += 3
    assert allowed(throttling.UserRateThrottle, user_request(user))[0]
    # A whole window later the old requests no longer count at all.
    clock.now += 120
    assert [allowed(throttling.UserRateThrottle, user_request(user))[0] for _ in range(10)] == [True] * 10


def test_anonymous_callers_are_limited_per_address(clock: Clock) -> None:
    def anonymous(address: str) -> Any:
        request = APIRequestFactory().get("/api/v1/health", REMOTE_ADDR=address)
        request.user = AnonymousUser()
        return request

    results = [allowed(throttling.AnonRateThrottle, anonymous("10.0.0.1")) for _ in range(5)]
    assert [ok for ok, _ in results] == [True] * 4 + [False]
    assert results[-1][1] == 60  # nothing in the previous window: wait for this one to end
    assert allowed(throttling.AnonRateThrottle, anonymous("10.0.0.2")) == (True, None)
