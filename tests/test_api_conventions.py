"""Conventions every endpoint shares: OpenAPI, offline docs, probes, pagination, throttling."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.cache import cache
from openapi_spec_validator import validate
from rest_framework.test import APIClient

from config.throttling import UserRateThrottle
from tests.conftest import World, assert_error
from tests.factories import MembershipFactory, OrganizationFactory

pytestmark = pytest.mark.django_db


def test_the_openapi_schema_validates_and_lists_every_endpoint(world: World) -> None:
    response = APIClient().get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    validate(schema)
    paths = set(schema["paths"])
    for expected in (
        "/api/v1/me",
        "/api/v1/projects/{project_id}",
        "/api/v1/jobs/{job_id}/cancel",
        "/api/v1/projects/{project_id}/audit-events",
    ):
        assert expected in paths
    assert schema["components"]["securitySchemes"]["TokenAuth"]["type"] == "apiKey"


def test_the_docs_page_renders_from_local_assets_only(world: World) -> None:
    client = APIClient()
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html
    assert not [url for url in assets if url.startswith(("http://", "https://", "//"))], assets
    for url in (u for u in assets if u.startswith("/static/")):
        asset = client.get(url)
        assert asset.status_code == 200, url
        b"".join(asset.streaming_content) if asset.streaming else asset.content


def test_healthz_answers_without_authentication() -> None:
    response = APIClient().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_checks_the_database_the_broker_and_the_object_store(tmp_path: Path, settings: Any) -> None:
    settings.LOUPE_OBJECTS_DIR = tmp_path / "objects"
    response = APIClient().get("/readyz")
    assert response.status_code == 200, response.json()
    checks = response.json()["checks"]
    assert set(checks) == {"database", "broker", "object_store"}
    assert all(check["ok"] for check in checks.values())


def test_readyz_says_which_dependency_is_down(tmp_path: Path, settings: Any) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the objects folder should be")
    settings.LOUPE_OBJECTS_DIR = blocker / "objects"
    response = APIClient().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["object_store"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True


def test_lists_are_cursor_paginated(world: World) -> None:
    owner = world.users["owner"]
    for i in range(5):
        MembershipFactory(organization=OrganizationFactory(slug=f"extra-{i}"), user=owner, role="member")
    client = world.client("owner")
    seen: list[int] = []
    url: str | None = "/api/v1/organizations?page_size=2"
    while url:
        page = client.get(url).json()
        assert len(page["results"]) <= 2
        seen += [org["id"] for org in page["results"]]
        url = page["next"]
        assert "page=" not in (url or "")  # cursors, not page numbers
    assert len(seen) == len(set(seen)) == 6
    assert seen == sorted(seen, reverse=True)


def test_a_bad_cursor_is_a_404_in_the_error_shape(world: World) -> None:
    assert_error(world.client("owner").get("/api/v1/organizations?cursor=garbage"), 404)


def test_callers_over_their_rate_get_429_in_the_error_shape(world: World, monkeypatch: Any) -> None:
    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "3/min", "anon": "3/min"})
    cache.clear()
    client = world.client("annotator")
    statuses = [client.get("/api/v1/me").status_code for _ in range(4)]
    assert statuses[:3] == [200, 200, 200]
    error = assert_error(client.get("/api/v1/me"), 429, "throttled")
    assert error["details"]["retry_after_s"] > 0
    cache.clear()


def test_every_response_carries_a_request_id(world: World) -> None:
    client = world.client("annotator")
    generated = client.get("/api/v1/me")
    assert re.fullmatch(r"[0-9a-f]{32}", generated["X-Request-ID"])
    supplied = client.get("/api/v1/me", HTTP_X_REQUEST_ID="trace-42")
    assert supplied["X-Request-ID"] == "trace-42"
    hostile = client.get("/api/v1/me", HTTP_X_REQUEST_ID="<script>" * 20)
    assert hostile["X-Request-ID"] != "<script>" * 20
