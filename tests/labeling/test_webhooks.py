"""Webhooks end to end: subscriptions through the API, real HTTP deliveries to a receiver on
127.0.0.1 (allowed through LOUPE_URL_FETCH_ALLOWED_NETWORKS, as an operator would), signatures
checked with labeling.webhooks.signing and with plain hmac, retries, the delivery log, the SSRF
guard, and the events the workflow emits.

Deliveries run in-process by calling the Celery task function, with the backoff set to zero: no
test waits for a real backoff.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from labeling.models import Task
from labeling.webhooks import signing
from labeling.webhooks.models import Webhook, WebhookAttempt, WebhookDelivery
from labeling.webhooks.services import deliveries_sweep, emit
from labeling.webhooks.tasks import webhook_deliver
from projects.access import PROJECT_MATRIX, ProjectAction
from projects.models import AuditEvent, Project
from tests.conftest import CALLERS, World, assert_error
from tests.labeling.conftest import API
from tests.labeling.modelserver import ModelServer, Request, Serve
from tests.labeling.test_workflow_api import Floor

SECRET = "a-receiver-secret-of-some-length"

# --- Signatures (pure) ------------------------------------------------------------------------------


def test_a_signature_verifies_with_signing_and_with_plain_hmac() -> None:
    body = b'{"id":"x","event":"ping","data":{}}'
    header = signing.signature_header(SECRET, body, timestamp=1_700_000_000)
    assert signing.verify(SECRET, body, header, now=1_700_000_010)
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert fields == {"t": "1700000000", "v1": expected}


def test_a_tampered_body_a_stale_timestamp_or_another_secret_fails_verification() -> None:
    body = b'{"event":"task.accepted","data":{"task":1}}'
    now = time.time()
    header = signing.signature_header(SECRET, body)
    assert signing.verify(SECRET, body, header, now=now)
    assert not signing.verify(SECRET, body.replace(b"1", b"2"), header, now=now)
    assert not signing.verify("another-secret-entirely", body, header, now=now)
    assert not signing.verify(SECRET, body, header, now=now + 301)  # replayed too late
    assert not signing.verify(SECRET, body, header, now=now - 301)  # from a clock far ahead
    replayed = header.replace(f"t={int(now)}", f"t={int(now) + 60}")  # a new time on an old signature
    assert not signing.verify(SECRET, body, replayed, now=now)
    for broken in ("", "v1=abc", "t=soon,v1=abc", "garbage"):
        assert not signing.verify(SECRET, body, broken, now=now)


def test_a_header_may_carry_several_signatures_while_a_secret_is_rotated() -> None:
    body = b"{}"
    old = signing.signature_header("the-old-secret-value", body, timestamp=100)
    new = signing.signature_header("the-new-secret-value", body, timestamp=100)
    both = f"{old},v1={new.split('v1=')[1]}"
    assert signing.verify("the-new-secret-value", body, both, now=100)
    assert signing.verify("the-old-secret-value", body, both, now=100)


def test_generated_secrets_are_long_and_distinct() -> None:
    secrets = {signing.generate_secret() for _ in range(50)}
    assert len(secrets) == 50
    assert all(s.startswith("whsec_") and len(s) >= 40 for s in secrets)


# --- Fixtures and helpers ------------------------------------------------------------------------------


@pytest.fixture
def loopback(settings: Any) -> None:
    """The operator allows the test receiver's network; retries come at once and stop soon."""
    settings.LOUPE_URL_FETCH_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    settings.LOUPE_WEBHOOK_BACKOFF_S = 0
    settings.LOUPE_WEBHOOK_MAX_ATTEMPTS = 4
    settings.LOUPE_WEBHOOK_TIMEOUT_S = 5


@contextmanager
def override_allowance() -> Iterator[None]:
    """The test process's own allowance, for the create check (the worker has its environment)."""
    with override_settings(LOUPE_URL_FETCH_ALLOWED_NETWORKS=["127.0.0.1/32"]):
        yield


def failing(times: int, status: int = 500) -> Any:
    """A receiver's handler: fails the first `times` requests with `status`, then answers 200."""

    def handle(request: Request, n: int) -> tuple[int, Any]:
        return (status, {"error": "not now"}) if n <= times else (200, {"ok": True})

    return handle


def hooks(world: World, suffix: str = "") -> str:
    return f"{API}/projects/{world.project.id}/webhooks{suffix}"


def create(world: World, url: str, events: list[str] | None = None, **extra: Any) -> Any:
    body = {"url": url, "events": events or ["task.accepted"], **extra}
    return world.client("manager").post(hooks(world), body, format="json")


def subscribe(world: World, receiver: ModelServer, events: list[str], **extra: Any) -> dict[str, Any]:
    response = create(world, f"{receiver.url}/hook", events, **extra)
    assert response.status_code == 201, response.content
    created: dict[str, Any] = response.json()
    return created


def deliver_all(rounds: int = 20) -> None:
    """Run every due delivery as the workers would, until none is pending."""
    for _ in range(rounds):
        due = list(WebhookDelivery.objects.filter(state="pending").values_list("id", flat=True))
        if not due:
            return
        for delivery_id in due:
            webhook_deliver(delivery_id=delivery_id)
    raise AssertionError("deliveries still pending")


def verified(request: Request, secret: str) -> dict[str, Any]:
    """The request's JSON body, after checking its signature both ways."""
    header = request.headers["Loupe-Signature"]
    assert signing.verify(secret, request.raw, header)
    t = header.split(",")[0].removeprefix("t=")
    expected = hmac.new(secret.encode(), t.encode() + b"." + request.raw, hashlib.sha256).hexdigest()
    assert header == f"t={t},v1={expected}"
    assert abs(int(t) - time.time()) < 60
    body: dict[str, Any] = json.loads(request.raw)
    return body


# --- Subscriptions ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_secret_is_shown_once_and_never_listed(world: World, loopback: None, serve: Serve) -> None:
    receiver = serve(failing(0))
    created = subscribe(world, receiver, ["task.accepted", "annotation.submitted"], description="CI")
    secret = created["secret"]
    assert secret.startswith("whsec_") and created["has_secret"] is True
    assert created["events"] == ["annotation.submitted", "task.accepted"]
    client = world.client("manager")
    listed = client.get(hooks(world))
    detail = client.get(hooks(world, f"/{created['id']}"))
    patched = client.patch(hooks(world, f"/{created['id']}"), {"description": "nightly"}, format="json")
    for response in (listed, detail, patched):
        assert response.status_code == 200
        assert secret not in response.content.decode()
    for shown in (listed.json()["results"][0], detail.json(), patched.json()):
        assert "secret" not in shown and shown["has_secret"] is True
    events = AuditEvent.objects.filter(verb__startswith="webhook.")
    assert list(events.order_by("id").values_list("verb", flat=True)) == ["webhook.create", "webhook.update"]
    assert all(secret not in json.dumps(event.changes) for event in events)


@pytest.mark.django_db
def test_a_given_secret_signs_and_a_rotated_one_is_shown_once(
    world: World, loopback: None, serve: Serve
) -> None:
    receiver = serve(failing(0))
    created = subscribe(world, receiver, ["task.accepted"], secret=SECRET)
    assert created["secret"] == SECRET
    url = hooks(world, f"/{created['id']}")
    rotated = world.client("manager").patch(url, {"rotate_secret": True}, format="json")
    assert rotated.status_code == 200
    new = rotated.json()["secret"]
    assert new != SECRET and new.startswith("whsec_")
    assert world.client("manager").post(f"{url}/ping").status_code == 202
    deliver_all()
    verified(receiver.requests[-1], new)
    chosen = world.client("manager").patch(url, {"secret": "my-own-secret-0123456789"}, format="json")
    assert chosen.json()["secret"] == "my-own-secret-0123456789"
    rotation = AuditEvent.objects.filter(verb="webhook.update").order_by("id")
    assert [event.changes for event in rotation] == [{"secret": "rotated"}, {"secret": "rotated"}]
    both = world.client("manager").patch(url, {"secret": "x" * 20, "rotate_secret": True}, format="json")
    assert_error(both, 400, "invalid")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "events", [[], ["task.accepted", "task.exploded"], ["ping"], "task.accepted"], ids=str
)
def test_unknown_or_no_events_are_refused(world: World, loopback: None, events: Any) -> None:
    response = world.client("manager").post(
        hooks(world), {"url": "http://127.0.0.1:9/hook", "events": events}, format="json"
    )
    error = assert_error(response, 400, "invalid")
    assert "events" in error["details"]["fields"]
    assert not Webhook.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/hook",
        "http://localhost:9/hook",
        "http://2130706433/hook",  # 127.0.0.1 as one number
        "http://0x7f.1/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://192.168.1.20/hook",
    ],
)
def test_private_destinations_are_refused_without_the_allowance(world: World, url: str) -> None:
    error = assert_error(create(world, url), 400, "webhook_url_refused")
    assert error["details"]["field"] == "url"
    assert not Webhook.objects.exists()
    assert "webhooks" not in Project.objects.get(id=world.project.id).settings


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url", ["ftp://93.184.216.34/", "http://user:pass@93.184.216.34/", "http://93.184.216.34/a b", "nohost"]
)
def test_urls_that_are_not_plain_http_are_refused(world: World, url: str) -> None:
    assert_error(create(world, url), 400, "invalid")


@pytest.mark.django_db
def test_a_url_changed_to_a_private_address_is_refused(world: World, serve: Serve, settings: Any) -> None:
    settings.LOUPE_URL_FETCH_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    created = subscribe(world, serve(failing(0)), ["task.accepted"])
    response = world.client("manager").patch(
        hooks(world, f"/{created['id']}"), {"url": "http://10.0.0.7/hook"}, format="json"
    )
    assert_error(response, 400, "webhook_url_refused")
    assert Webhook.objects.get().url == created["url"]


@pytest.mark.django_db
def test_only_managers_manage_webhooks(world: World) -> None:
    body = {"url": "http://93.184.216.34/hook", "events": ["task.accepted"]}  # public: no DNS needed
    allowed = PROJECT_MATRIX[ProjectAction.WEBHOOKS_MANAGE]
    for who, role in CALLERS.items():
        client = world.client(who)
        want_list = 404 if role is None else 200 if role in allowed else 403
        want_create = 404 if role is None else 201 if role in allowed else 403
        assert client.get(hooks(world)).status_code == want_list, who
        assert client.post(hooks(world), body, format="json").status_code == want_create, who
    assert {r for r in CALLERS.values() if r in allowed} == {"manager", "org_admin"}
    assert Webhook.objects.count() == 3  # owner, admin (org_admin) and the manager
    other = Webhook.objects.create(project=world.other_project, url="http://93.184.216.34/", secret="s" * 20)
    assert_error(world.client("manager").get(hooks(world, f"/{other.pk}")), 404, "not_found")


@pytest.mark.django_db
def test_subscriptions_keep_the_projects_other_settings(world: World, loopback: None, serve: Serve) -> None:
    manager = world.client("manager")
    workflow = manager.patch(f"{API}/projects/{world.project.id}/workflow", {"overlap": 2}, format="json")
    assert workflow.status_code == 200
    receiver = serve(failing(0))
    first = subscribe(world, receiver, ["task.accepted"])
    second = subscribe(world, receiver, ["annotation.submitted", "task.accepted"])
    stored = Project.objects.get(id=world.project.id).settings
    assert stored["webhooks"] == {"events": ["annotation.submitted", "task.accepted"]}
    assert stored["workflow"]["overlap"] == 2
    manager.patch(hooks(world, f"/{second['id']}"), {"active": False}, format="json")
    assert Project.objects.get(id=world.project.id).settings["webhooks"] == {"events": ["task.accepted"]}
    assert manager.delete(hooks(world, f"/{first['id']}")).status_code == 204
    stored = Project.objects.get(id=world.project.id).settings
    assert "webhooks" not in stored and stored["workflow"]["overlap"] == 2


# --- Delivery --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_ping_reaches_the_receiver_signed(world: World, loopback: None, serve: Serve) -> None:
    receiver = serve(failing(0))
    created = subscribe(world, receiver, ["task.accepted"])
    answer = world.client("manager").post(hooks(world, f"/{created['id']}/ping"))
    assert answer.status_code == 202 and answer.json()["state"] == "pending"
    deliver_all()
    (request,) = receiver.requests
    body = verified(request, created["secret"])
    delivery = WebhookDelivery.objects.get()
    assert request.method == "POST" and request.path == "/hook"
    assert request.headers["Loupe-Event"] == "ping"
    assert request.headers["Loupe-Delivery"] == str(delivery.uuid) == body["id"]
    assert request.headers["Content-Type"] == "application/json"
    assert body["event"] == "ping" and body["project"] == world.project.id
    assert body["data"] == {"webhook": created["id"], "events": ["task.accepted"]}
    assert body["created_at"].endswith("Z")
    assert delivery.state == "delivered"
    assert list(delivery.attempt_log.values_list("status_code", flat=True)) == [200]


@pytest.mark.django_db
def test_a_receiver_failing_twice_gets_three_attempts_shown_in_the_log(
    world: World, loopback: None, serve: Serve
) -> None:
    receiver = serve(failing(2))
    created = subscribe(world, receiver, ["task.accepted"])
    assert world.client("manager").post(hooks(world, f"/{created['id']}/ping")).status_code == 202
    deliver_all()
    assert len(receiver.requests) == 3
    ids = {request.headers["Loupe-Delivery"] for request in receiver.requests}
    bodies = {request.raw for request in receiver.requests}
    assert len(ids) == 1 and len(bodies) == 1  # the same delivery, byte for byte, on every retry
    for request in receiver.requests:
        verified(request, created["secret"])
    log = world.client("manager").get(hooks(world, f"/{created['id']}/deliveries"))
    assert log.status_code == 200
    (delivery,) = log.json()["results"]
    assert delivery["state"] == "delivered" and delivery["uuid"] in ids
    attempts = delivery["attempts"]
    assert [a["number"] for a in attempts] == [1, 2, 3]
    assert [a["status_code"] for a in attempts] == [500, 500, 200]
    assert [a["error"] for a in attempts] == ["HTTP 500", "HTTP 500", ""]
    assert all(a["at"] and isinstance(a["duration_ms"], int) for a in attempts)
    assert json.loads(attempts[0]["response_body"]) == {"error": "not now"}
    assert delivery["payload"]["event"] == "ping" and delivery["finished_at"]


@pytest.mark.django_db
def test_a_receiver_that_always_fails_ends_failed_and_can_be_redelivered(
    world: World, loopback: None, serve: Serve
) -> None:
    receiver = serve(failing(4, status=503))
    created = subscribe(world, receiver, ["task.accepted"])
    url = hooks(world, f"/{created['id']}")
    world.client("manager").post(f"{url}/ping")
    deliver_all()
    delivery = WebhookDelivery.objects.get()
    assert delivery.state == "failed" and delivery.attempts == 4  # LOUPE_WEBHOOK_MAX_ATTEMPTS
    webhook_deliver(delivery_id=delivery.pk)  # a stray message changes nothing
    assert len(receiver.requests) == 4
    again = world.client("manager").post(f"{url}/deliveries/{delivery.pk}/redeliver")
    assert again.status_code == 202 and again.json()["state"] == "pending"
    assert_error(world.client("manager").post(f"{url}/deliveries/{delivery.pk}/redeliver"), 409)
    deliver_all()
    delivery.refresh_from_db()
    assert delivery.state == "delivered" and delivery.attempts == 5
    assert receiver.requests[-1].headers["Loupe-Delivery"] == str(delivery.uuid)
    assert AuditEvent.objects.filter(verb="webhook.redeliver").count() == 1


@pytest.mark.django_db
def test_the_log_is_newest_first_and_filters_by_state(
    world: World, loopback: None, serve: Serve, settings: Any
) -> None:
    settings.LOUPE_WEBHOOK_MAX_ATTEMPTS = 1
    receiver = serve(lambda request, n: (500, {}) if n == 2 else (200, {}))
    created = subscribe(world, receiver, ["task.accepted"])
    url = hooks(world, f"/{created['id']}")
    for _ in range(3):
        world.client("manager").post(f"{url}/ping")
    ids = list(WebhookDelivery.objects.order_by("id").values_list("id", flat=True))
    log = world.client("manager").get(f"{url}/deliveries", {"page_size": 2})
    assert [d["id"] for d in log.json()["results"]] == ids[::-1][:2]
    assert log.json()["next"]
    assert [d["id"] for d in world.client("manager").get(log.json()["next"]).json()["results"]] == ids[:1]
    deliver_all()
    failed = world.client("manager").get(f"{url}/deliveries", {"state": "failed"}).json()["results"]
    assert [d["id"] for d in failed] == [ids[1]]  # the second request was answered 500


@pytest.mark.django_db
def test_410_gone_turns_the_webhook_off(world: World, loopback: None, serve: Serve) -> None:
    receiver = serve(lambda request, n: (410, {"gone": True}))
    created = subscribe(world, receiver, ["task.accepted"])
    world.client("manager").post(hooks(world, f"/{created['id']}/ping"))
    deliver_all()
    assert len(receiver.requests) == 1  # no retry
    webhook = world.client("manager").get(hooks(world, f"/{created['id']}")).json()
    assert webhook["active"] is False and webhook["disabled_reason"] == "gone"
    assert "webhooks" not in Project.objects.get(id=world.project.id).settings
    assert WebhookDelivery.objects.get().state == "failed"
    assert_error(
        world.client("manager").post(hooks(world, f"/{created['id']}/ping")), 409, "webhook_inactive"
    )
    back = world.client("manager").patch(hooks(world, f"/{created['id']}"), {"active": True}, format="json")
    assert back.json()["active"] is True and back.json()["disabled_reason"] == ""


@pytest.mark.django_db
def test_a_destination_no_longer_allowed_is_refused_at_delivery(
    world: World, loopback: None, serve: Serve, settings: Any
) -> None:
    receiver = serve(failing(0))
    created = subscribe(world, receiver, ["task.accepted"])
    world.client("manager").post(hooks(world, f"/{created['id']}/ping"))
    settings.LOUPE_URL_FETCH_ALLOWED_NETWORKS = []  # the operator withdrew the allowance
    deliver_all()
    assert receiver.requests == []
    delivery = WebhookDelivery.objects.get()
    assert delivery.state == "failed" and delivery.attempts == 1  # refused: never retried
    assert delivery.attempt_log.get().error.startswith("address_not_allowed")


@pytest.mark.django_db
def test_an_unreachable_receiver_is_retried_then_failed(world: World, loopback: None, serve: Serve) -> None:
    receiver = serve(failing(0))
    created = subscribe(world, receiver, ["task.accepted"])
    Webhook.objects.filter(id=created["id"]).update(url="http://127.0.0.1:9/hook")  # nothing listens
    world.client("manager").post(hooks(world, f"/{created['id']}/ping"))
    deliver_all()
    delivery = WebhookDelivery.objects.get()
    assert delivery.state == "failed" and delivery.attempts == 4
    errors = list(delivery.attempt_log.values_list("error", flat=True))
    assert all(error.startswith("connection_failed") for error in errors)


@pytest.mark.django_db
def test_the_sweep_takes_back_lost_attempts_and_lost_messages(
    world: World, loopback: None, serve: Serve, django_capture_on_commit_callbacks: Any
) -> None:
    receiver = serve(failing(0))
    created = subscribe(world, receiver, ["task.accepted"])
    for _ in range(3):
        world.client("manager").post(hooks(world, f"/{created['id']}/ping"))
    stalled, lost, _due_now = WebhookDelivery.objects.order_by("id")
    past = timezone.now() - timedelta(minutes=10)
    # A worker claimed the first and died; the second's message never reached a worker.
    WebhookDelivery.objects.filter(id=stalled.pk).update(state="sending", attempts=1, lease_until=past)
    WebhookDelivery.objects.filter(id=lost.pk).update(next_attempt_at=past)
    webhook_deliver(delivery_id=stalled.pk)  # its own message, redelivered: the claim is held
    assert receiver.requests == []
    with django_capture_on_commit_callbacks() as callbacks:
        outcome = deliveries_sweep()
    # The third is due now, its message presumably on its way: the sweep leaves it alone.
    assert outcome["recovered"] == 1 and outcome["requeued"] == 1 and len(callbacks) == 1
    stalled.refresh_from_db()
    assert stalled.state == "pending"
    assert WebhookAttempt.objects.get(delivery=stalled).error.startswith("worker_lost")
    deliver_all()
    assert len(receiver.requests) == 3
    assert set(WebhookDelivery.objects.values_list("state", flat=True)) == {"delivered"}


@pytest.mark.django_db
def test_a_settings_edit_keeps_the_subscriptions_and_the_sweep_repairs_a_lost_index(
    world: World, loopback: None, serve: Serve
) -> None:
    subscribe(world, serve(failing(0)), ["task.accepted"])
    url = f"{API}/projects/{world.project.id}"
    assert world.client("manager").patch(url, {"settings": {}}, format="json").status_code == 200
    assert Project.objects.get(id=world.project.id).settings == {"webhooks": {"events": ["task.accepted"]}}
    # Lost outside the API (a restore of the projects table, an edit by hand): the sweep rebuilds it.
    Project.objects.filter(id=world.project.id).update(settings={})
    assert deliveries_sweep()["repaired"] == 1
    assert Project.objects.get(id=world.project.id).settings == {"webhooks": {"events": ["task.accepted"]}}
    assert deliveries_sweep()["repaired"] == 0


@pytest.mark.django_db
def test_old_finished_deliveries_are_pruned(
    world: World, loopback: None, serve: Serve, settings: Any
) -> None:
    created = subscribe(world, serve(failing(0)), ["task.accepted"])
    for _ in range(2):
        world.client("manager").post(hooks(world, f"/{created['id']}/ping"))
    deliver_all()
    old, recent = WebhookDelivery.objects.order_by("id")
    WebhookDelivery.objects.filter(id=old.pk).update(finished_at=timezone.now() - timedelta(days=31))
    assert deliveries_sweep()["pruned"] == 1
    assert list(WebhookDelivery.objects.values_list("id", flat=True)) == [recent.pk]
    assert WebhookAttempt.objects.filter(delivery_id=old.pk).count() == 0


@pytest.mark.django_db
def test_emit_refuses_an_unknown_event(world: World) -> None:
    with pytest.raises(ValueError, match="unknown webhook event"):
        emit(world.project, "task.exploded", {})


# --- Events of the workflow ------------------------------------------------------------------------


@pytest.fixture
def floor(world: World, objects_dir: Any) -> Floor:
    return Floor(world, tasks=4)


@pytest.mark.django_db
def test_a_submit_and_an_accepting_review_reach_the_receiver(
    floor: Floor, loopback: None, serve: Serve
) -> None:
    world = floor.world
    receiver = serve(failing(0))
    created = subscribe(world, receiver, ["annotation.submitted", "task.accepted"])
    assert floor.workflow(review="all", overlap=1).status_code == 200
    annotator = world.client("annotator")
    handed = floor.next(annotator).json()
    submitted = floor.submit(annotator, handed)
    assert submitted.status_code == 201
    annotation = submitted.json()
    deliver_all()
    (request,) = receiver.requests
    body = verified(request, created["secret"])
    task = Task.objects.get(id=handed["task"]["id"])
    assert body["event"] == "annotation.submitted" and request.headers["Loupe-Event"] == body["event"]
    assert body["data"] == {
        "task": task.pk,
        "item": task.item_id,
        "annotation": annotation["id"],
        "version": annotation["version"],
        "author": world.users["annotator"].pk,
        "submitted_at": body["data"]["submitted_at"],
    }
    assert body["data"]["submitted_at"].startswith(str(timezone.now().year))
    review = world.client("reviewer").post(
        floor.url(f"/annotations/{annotation['id']}/review"),
        {"verdict": "accept"},
        format="json",
        HTTP_IF_MATCH=f'"{annotation["version"]}"',
    )
    assert review.status_code == 200, review.content
    deliver_all()
    accepted = verified(receiver.requests[-1], created["secret"])
    assert accepted["event"] == "task.accepted"
    assert accepted["data"] == {"task": task.pk, "item": task.item_id, "annotations": [annotation["id"]]}
    assert WebhookDelivery.objects.filter(state="delivered").count() == 2


@pytest.mark.django_db
def test_a_rolled_back_submit_reports_nothing(floor: Floor, loopback: None, serve: Serve) -> None:
    world = floor.world
    subscribe(world, serve(failing(0)), ["annotation.submitted"])
    annotator = world.client("annotator")
    handed = floor.next(annotator).json()
    bad_lease = {**handed, "assignment": {**handed["assignment"], "lease_id": "0" * 32}}
    assert floor.submit(annotator, bad_lease).status_code >= 400
    assert not WebhookDelivery.objects.exists()


def _submit_queries(floor: Floor, client: Any) -> int:
    handed = floor.next(client).json()
    with CaptureQueriesContext(connection) as queries:
        assert floor.submit(client, handed).status_code == 201
    return len(queries)


@pytest.mark.django_db
def test_a_submit_costs_no_query_when_no_webhook_listens(floor: Floor, loopback: None, serve: Serve) -> None:
    world = floor.world
    annotator = world.client("annotator")
    _submit_queries(floor, annotator)  # the first request of a client also warms caches up
    plain = _submit_queries(floor, annotator)
    assert not WebhookDelivery.objects.exists()
    # A webhook for another event: the project's settings say nobody listens to submits.
    subscribe(world, serve(failing(0)), ["release.created"])
    assert _submit_queries(floor, annotator) == plain
    assert not WebhookDelivery.objects.exists()
    subscribe(world, serve(failing(0)), ["annotation.submitted"])
    assert _submit_queries(floor, annotator) == plain + 2  # find the webhooks, write the deliveries
    assert WebhookDelivery.objects.filter(event="annotation.submitted").count() == 1


# --- On a real worker ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_sends_after_commit_and_retries_with_a_countdown(world: World, serve: Serve) -> None:
    """The web process only writes the delivery and enqueues it on commit; a real worker (which finds
    the task through labeling.tasks) sends it, and the failed first attempt comes back by itself."""
    from tests.workers import celery_worker, purge_queues

    purge_queues()
    receiver = serve(failing(1))
    env = {"LOUPE_URL_FETCH_ALLOWED_NETWORKS": "127.0.0.1/32", "LOUPE_WEBHOOK_BACKOFF_S": "1"}
    with celery_worker(env=env) as worker, override_allowance():
        created = subscribe(world, receiver, ["task.accepted"])
        assert world.client("manager").post(hooks(world, f"/{created['id']}/ping")).status_code == 202
        deadline = time.monotonic() + 30
        while WebhookDelivery.objects.get().state != "delivered":
            assert time.monotonic() < deadline, "".join(worker.log[-40:])
            time.sleep(0.05)
    attempts = list(WebhookAttempt.objects.order_by("number").values_list("status_code", "at"))
    assert [status for status, _ in attempts] == [500, 200]
    assert (attempts[1][1] - attempts[0][1]).total_seconds() >= 1  # LOUPE_WEBHOOK_BACKOFF_S
    assert len(receiver.requests) == 2
    verified(receiver.requests[1], created["secret"])
