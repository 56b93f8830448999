"""Retried writes with an Idempotency-Key do their work once."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from projects.models import IdempotencyRecord, Job
from tests.conftest import World, assert_error

pytestmark = pytest.mark.django_db


def recount(world: World, who: str = "manager", key: str | None = "retry-1", **body: Any) -> Any:
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return world.client(who).post(
        f"/api/v1/projects/{world.project.id}/stats/recount",
        body or {"chunk_size": 100},
        format="json",
        **headers,
    )


def test_a_retry_with_the_same_key_gets_the_first_answer_and_starts_nothing(world: World) -> None:
    first = recount(world)
    assert first.status_code == 202 and "Idempotent-Replayed" not in first
    again = recount(world)
    assert again.status_code == 202 and again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert Job.objects.count() == 1


def test_without_a_key_every_request_counts(world: World) -> None:
    assert recount(world, key=None).status_code == 202
    assert_error(recount(world, key=None), 409, "job_already_running")  # the rule, not a replay


def test_keys_belong_to_their_user(world: World) -> None:
    recount(world, who="manager", key="shared")
    other = recount(world, who="owner", key="shared")
    assert "Idempotent-Replayed" not in other  # a different caller's key is its own
    assert_error(other, 409, "job_already_running")


def test_a_key_reused_for_another_endpoint_is_refused(world: World) -> None:
    recount(world, key="k1")
    other = world.client("manager").post(
        f"/api/v1/projects/{world.other_project.id}/stats/recount",
        {},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    assert_error(other, 422, "idempotency_key_reused")


def test_a_failed_request_releases_its_key_for_a_real_retry(world: World) -> None:
    assert_error(recount(world, key="k2", chunk_size=0), 400)
    assert not IdempotencyRecord.objects.filter(key="k2").exists()
    assert recount(world, key="k2").status_code == 202


def test_a_concurrent_duplicate_waits_for_the_first(world: World) -> None:
    user = world.users["manager"]
    path = f"/api/v1/projects/{world.project.id}/stats/recount"

    IdempotencyRecord.objects.create(
        user=user, key="k3", fingerprint=hashlib.sha256(f"POST {path}".encode()).hexdigest(), status=0
    )
    assert_error(recount(world, key="k3"), 409, "request_in_progress")
    assert not Job.objects.exists()
    # A claim whose request died long ago is taken over.
    IdempotencyRecord.objects.filter(key="k3").update(created_at=timezone.now() - timedelta(hours=1))
    assert recount(world, key="k3").status_code == 202


@pytest.mark.parametrize("key", ["", "x" * 256, "with space", "naïve"])
def test_malformed_keys_are_refused(world: World, key: str) -> None:
    assert_error(recount(world, key=key), 400)
    assert not Job.objects.exists()
