"""Webhooks: managers' subscriptions, `emit` for the services whose changes webhooks report, and
delivery (run by the Celery tasks of labeling.webhooks.tasks).

Locks. The subscription services lock the project row (as `workflow_update` and
`quality_settings_update` do) while they change a project's webhooks, and rewrite
`Project.settings["webhooks"]` = `{"events": [...]}`, the events some active webhook of the project
listens to. `emit` reads that set from the project its caller already holds, so an event nobody
listens to costs no query: the submit path calls `emit` on every submit. Lock order: project row,
then webhook, then delivery rows.

Delivery. A worker claims a due delivery with a conditional UPDATE (pending → sending, with a
lease), so two workers never make the same attempt; it sends with no transaction open, then
records the attempt in a short transaction that only applies while it still holds the claim. A
beat sweep takes back attempts whose worker died (the lease ran out) and re-enqueues deliveries
whose message was lost, so every delivery ends delivered or failed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import User
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from labeling.webhooks.models import DeliveryState, Webhook, WebhookAttempt, WebhookDelivery, WebhookEvent
from labeling.webhooks.signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    generate_secret,
    signature_header,
)
from projects.access import ProjectAccess, ProjectAction
from projects.audit import audit_record, diff_fields
from projects.exceptions import Conflict, InvalidInput, NotFound
from projects.models import Project
from storage.fetch import FetchPolicy, FetchRefused, endpoint_refusal, request_bytes

logger = logging.getLogger(__name__)

SETTINGS_KEY = "webhooks"  # Project.settings[SETTINGS_KEY] = {"events": [...]}
# What a webhook may subscribe to; "ping" is only ever sent on request.
EVENTS: tuple[str, ...] = tuple(e.value for e in WebhookEvent if e != WebhookEvent.PING)
MAX_WEBHOOKS_PER_PROJECT = 20
RESPONSE_KEEP_BYTES = 2048  # of each answer, kept in the delivery log
USER_AGENT = "Loupe-Webhooks/1"
# A claim outlives the longest possible attempt by this much before the sweep takes it back.
_LEASE_MARGIN_S = 30
# A message may run a little before its countdown is over on a worker whose clock is ahead.
_EARLY = timedelta(seconds=2)
# A pending delivery this far past its time has lost its message: the sweep enqueues it again
# (and at most once per this long, since it moves next_attempt_at to now).
_OVERDUE = timedelta(minutes=2)
# Refusals that another attempt cannot change: the address, not the receiver's mood.
_PERMANENT = frozenset({"address_not_allowed", "scheme_not_allowed", "bad_url"})


class WebhookLimit(Conflict):
    code = "webhook_limit"
    default_message = f"A project has at most {MAX_WEBHOOKS_PER_PROJECT} webhooks."


class WebhookInactive(Conflict):
    code = "webhook_inactive"
    default_message = "The webhook is turned off; turn it on (PATCH active: true) first."


class DeliveryInProgress(Conflict):
    code = "delivery_in_progress"
    default_message = "This delivery is still being attempted; redeliver it once it has finished."


# --- Where webhooks may point ---------------------------------------------------------------------


def webhook_policy() -> FetchPolicy:
    """URL import's SSRF guard (storage/fetch.py): public addresses, plus the networks the
    operator allowed (LOUPE_URL_FETCH_ALLOWED_NETWORKS), read at each call."""
    timeout = float(settings.LOUPE_WEBHOOK_TIMEOUT_S)
    return FetchPolicy(
        connect_timeout=timeout,
        read_timeout=timeout,
        total_timeout=timeout,
        max_redirects=0,
        allowed_networks=tuple(ipaddress.ip_network(n) for n in settings.LOUPE_URL_FETCH_ALLOWED_NETWORKS),
        user_agent=USER_AGENT,
    )


def _check_url(url: str) -> None:
    """Refuse a URL Loupe may not POST to. Resolves the host (network I/O): call it outside any
    transaction. Every delivery checks the address again, since DNS answers change."""
    if any(ord(char) <= 0x20 or char in "\x7f\\" for char in url):
        raise InvalidInput("The URL contains whitespace or a backslash.", field="url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        raise InvalidInput("The URL cannot be parsed.", field="url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("Give an http:// or https:// URL with a host.", field="url")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(
            "The URL may not carry credentials: receivers check the signature instead.", field="url"
        )
    refusal = endpoint_refusal(url, policy=webhook_policy())
    if refusal is not None:
        raise InvalidInput(
            "Loupe may not send to this URL: its host must resolve to public addresses only "
            "(an operator can allow networks with LOUPE_URL_FETCH_ALLOWED_NETWORKS).",
            code="webhook_url_refused",
            field="url",
            reason=refusal,
        )


def _checked_events(events: Iterable[str]) -> list[str]:
    chosen = sorted(set(events))
    unknown = [event for event in chosen if event not in EVENTS]
    if unknown or not chosen:
        raise InvalidInput("Subscribe to one or more known events.", field="events", known=list(EVENTS))
    return chosen


# --- The project's subscribed events --------------------------------------------------------------


def subscribed_events(project: Project) -> list[str]:
    """The events some active webhook of the project listens to, as its settings record them."""
    stored = project.settings.get(SETTINGS_KEY) if isinstance(project.settings, dict) else None
    events = stored.get("events") if isinstance(stored, dict) else None
    return [event for event in events if isinstance(event, str)] if isinstance(events, list) else []


def _sync_subscriptions(project: Project) -> None:
    """Rewrite the project's subscribed events from its webhooks. The caller holds the project row
    lock (`project` was read with it) and keeps every other settings key as it is."""
    rows = Webhook.objects.filter(project_id=project.pk, active=True).values_list("events", flat=True)
    events = sorted({event for subscribed in rows for event in subscribed})
    current = dict(project.settings or {})
    if subscribed_events(project) == events and (bool(events) == (SETTINGS_KEY in current)):
        return
    if events:
        current[SETTINGS_KEY] = {"events": events}
    else:
        current.pop(SETTINGS_KEY, None)
    project.settings = current
    project.save(update_fields=["settings", "updated_at"])


def _locked_project(access: ProjectAccess) -> Project:
    return Project.objects.select_for_update().get(id=access.project.pk)


# --- Subscriptions --------------------------------------------------------------------------------

_AUDITED = ("url", "events", "active", "description")


def _audited(webhook: Webhook) -> dict[str, Any]:
    """What the audit log keeps of a webhook: never its secret."""
    return {name: getattr(webhook, name) for name in _AUDITED}


def webhook_create(
    *,
    actor: User,
    access: ProjectAccess,
    url: str,
    events: list[str],
    description: str = "",
    active: bool = True,
    secret: str | None = None,
) -> tuple[Webhook, str]:
    """Subscribe `url` to `events` of the project; returns the webhook and its secret in clear
    (generated unless given), which no later answer shows again."""
    access.require(ProjectAction.WEBHOOKS_MANAGE)
    chosen = _checked_events(events)
    _check_url(url)  # DNS: before the transaction
    clear = secret or generate_secret()
    with transaction.atomic():
        project = _locked_project(access)
        if Webhook.objects.filter(project_id=project.pk).count() >= MAX_WEBHOOKS_PER_PROJECT:
            raise WebhookLimit(limit=MAX_WEBHOOKS_PER_PROJECT)
        webhook = Webhook.objects.create(
            project=project,
            url=url,
            events=chosen,
            description=description,
            active=active,
            secret=clear,
            created_by=actor,
        )
        _sync_subscriptions(project)
        audit_record(
            actor=actor, verb="webhook.create", obj=webhook, project=access.project, changes=_audited(webhook)
        )
    return webhook, clear


def webhook_update(
    *,
    actor: User,
    access: ProjectAccess,
    webhook_id: int,
    secret: str | None = None,
    rotate_secret: bool = False,
    **changes: Any,
) -> tuple[Webhook, str | None]:
    """Change a webhook; `changes` among url, events, active, description. A new secret (given, or
    generated with `rotate_secret`) is returned in clear, once; otherwise None."""
    access.require(ProjectAction.WEBHOOKS_MANAGE)
    if secret and rotate_secret:
        raise InvalidInput("Give a secret or ask for a new one, not both.", field="secret")
    if "events" in changes:
        changes["events"] = _checked_events(changes["events"])
    if "url" in changes:
        _check_url(changes["url"])  # DNS: before the transaction
    with transaction.atomic():
        project = _locked_project(access)
        webhook = Webhook.objects.select_for_update().filter(id=webhook_id, project_id=project.pk).first()
        if webhook is None:
            raise NotFound("Webhook not found.", webhook_id=webhook_id)
        before = _audited(webhook)
        for name, value in changes.items():
            setattr(webhook, name, value)
        if changes.get("active"):
            webhook.disabled_reason = ""
        diff: dict[str, Any] = diff_fields(before, _audited(webhook))
        clear = secret or (generate_secret() if rotate_secret else None)
        if clear is not None:
            webhook.secret = clear
            diff["secret"] = "rotated"  # noqa: S105  (that it changed, never the value)
        if not diff:
            return webhook, None
        webhook.save()
        _sync_subscriptions(project)
        audit_record(actor=actor, verb="webhook.update", obj=webhook, project=access.project, changes=diff)
    return webhook, clear


def webhook_delete(*, actor: User, access: ProjectAccess, webhook_id: int) -> None:
    """Delete a webhook with its delivery log; deliveries not yet sent are never sent."""
    access.require(ProjectAction.WEBHOOKS_MANAGE)
    with transaction.atomic():
        project = _locked_project(access)
        webhook = Webhook.objects.select_for_update().filter(id=webhook_id, project_id=project.pk).first()
        if webhook is None:
            raise NotFound("Webhook not found.", webhook_id=webhook_id)
        audit_record(
            actor=actor, verb="webhook.delete", obj=webhook, project=access.project, changes=_audited(webhook)
        )
        webhook.delete()
        _sync_subscriptions(project)


def webhook_ping(*, actor: User, access: ProjectAccess, webhook_id: int) -> WebhookDelivery:
    """Send a `ping` event to one webhook, to test it; the delivery shows in its log."""
    access.require(ProjectAction.WEBHOOKS_MANAGE)
    with transaction.atomic():
        webhook = Webhook.objects.filter(id=webhook_id, project_id=access.project.pk).first()
        if webhook is None:
            raise NotFound("Webhook not found.", webhook_id=webhook_id)
        if not webhook.active:
            raise WebhookInactive(webhook_id=webhook_id)
        data = {"webhook": webhook.pk, "events": webhook.events}
        (delivery,) = _deliveries_create([webhook.pk], access.project.pk, WebhookEvent.PING, data)
        audit_record(
            actor=actor,
            verb="webhook.ping",
            obj=webhook,
            project=access.project,
            changes={"delivery": str(delivery.uuid)},
        )
    return delivery


def delivery_redeliver(
    *, actor: User, access: ProjectAccess, webhook_id: int, delivery_id: int
) -> WebhookDelivery:
    """Send a finished delivery again: same id and body, a new signature, a fresh set of attempts."""
    access.require(ProjectAction.WEBHOOKS_MANAGE)
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(of=("self",))
            .select_related("webhook")
            .filter(id=delivery_id, webhook_id=webhook_id, webhook__project_id=access.project.pk)
            .first()
        )
        if delivery is None:
            raise NotFound("Delivery not found.", webhook_id=webhook_id, delivery_id=delivery_id)
        if not delivery.webhook.active:
            raise WebhookInactive(webhook_id=webhook_id)
        if delivery.state in (DeliveryState.PENDING, DeliveryState.SENDING):
            raise DeliveryInProgress(delivery_id=delivery_id, state=delivery.state)
        delivery.state = DeliveryState.PENDING
        delivery.attempt_limit = delivery.attempts + settings.LOUPE_WEBHOOK_MAX_ATTEMPTS
        delivery.next_attempt_at, delivery.finished_at, delivery.lease_until = timezone.now(), None, None
        delivery.save(
            update_fields=["state", "attempt_limit", "next_attempt_at", "finished_at", "lease_until"]
        )
        _enqueue_on_commit([delivery.pk])
        audit_record(
            actor=actor,
            verb="webhook.redeliver",
            obj=delivery.webhook,
            project=access.project,
            changes={"delivery": str(delivery.uuid)},
        )
    return delivery


# --- Events ---------------------------------------------------------------------------------------


def emit(project: Project, event: str, data: dict[str, Any]) -> None:
    """Report `event` (with its `data`) to every active webhook of `project` subscribed to it.

    Runs inside the transaction of the change it reports: the deliveries are written in it and sent
    once it commits, so a rolled-back change reports nothing. Costs no query when the project's
    settings say no webhook listens to `event` (`project` as the caller loaded it).
    """
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}; known: {', '.join(EVENTS)}")
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("emit must run inside the transaction of the change it reports")
    if event not in subscribed_events(project):
        return
    webhook_ids = list(
        Webhook.objects.filter(project_id=project.pk, active=True, events__contains=[event]).values_list(
            "id", flat=True
        )
    )
    if webhook_ids:
        _deliveries_create(webhook_ids, project.pk, event, data)


def _deliveries_create(
    webhook_ids: list[int], project_id: int, event: str, data: dict[str, Any]
) -> list[WebhookDelivery]:
    """One delivery per webhook, due now and enqueued when the caller's transaction commits."""
    now = timezone.now()
    deliveries = []
    for webhook_id in webhook_ids:
        key = uuid.uuid4()
        document = {"id": str(key), "event": event, "created_at": now, "project": project_id, "data": data}
        deliveries.append(
            WebhookDelivery(
                webhook_id=webhook_id,
                uuid=key,
                event=event,
                body=json.dumps(document, cls=DjangoJSONEncoder, separators=(",", ":")),
                attempt_limit=settings.LOUPE_WEBHOOK_MAX_ATTEMPTS,
                next_attempt_at=now,
            )
        )
    WebhookDelivery.objects.bulk_create(deliveries)
    _enqueue_on_commit([delivery.pk for delivery in deliveries])
    return deliveries


def _enqueue_on_commit(delivery_ids: list[int], countdown: float = 0) -> None:
    """Hand the deliveries to the workers after commit. With the broker down the failure is logged
    (robust) rather than failing a change that is already committed: the deliveries are in the
    database, and the sweep enqueues what is overdue."""

    def enqueue() -> None:
        from labeling.webhooks.tasks import webhook_deliver

        for delivery_id in delivery_ids:
            webhook_deliver.apply_async(kwargs={"delivery_id": delivery_id}, countdown=countdown)

    transaction.on_commit(enqueue, robust=True)


# --- Delivery -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to."""

    status_code: int | None = None
    error: str = ""
    duration_ms: int = 0
    response_body: str = ""
    delivered: bool = False
    permanent: bool = False  # another attempt cannot succeed
    gone: bool = False  # the receiver answered 410: turn the webhook off


def backoff(attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: the base, doubling, capped."""
    base, cap = settings.LOUPE_WEBHOOK_BACKOFF_S, settings.LOUPE_WEBHOOK_BACKOFF_MAX_S
    return float(min(cap, base * 2 ** min(attempts - 1, 30)))


def _text(value: str, limit: int) -> str:
    return value.replace("\x00", "\ufffd")[:limit]  # PostgreSQL text cannot hold NUL


def delivery_attempt(*, delivery_id: int) -> str:
    """Make the next attempt of a delivery if it is due (a worker's job): claim, send, record.

    Returns the delivery's state after the attempt, or "" when there was nothing to do (not due,
    finished, gone, or claimed by another worker).
    """
    delivery = _claim(delivery_id)
    if delivery is None:
        return ""
    at = timezone.now()
    webhook = delivery.webhook
    if webhook.active:
        outcome = _send(webhook, delivery)
    else:
        outcome = Outcome(error="webhook_inactive: the webhook was turned off", permanent=True)
    return _record(delivery, at, outcome)


def _claim(delivery_id: int) -> WebhookDelivery | None:
    now = timezone.now()
    lease = timedelta(seconds=settings.LOUPE_WEBHOOK_TIMEOUT_S + _LEASE_MARGIN_S)
    claimed = WebhookDelivery.objects.filter(
        id=delivery_id, state=DeliveryState.PENDING, next_attempt_at__lte=now + _EARLY
    ).update(state=DeliveryState.SENDING, attempts=F("attempts") + 1, lease_until=now + lease)
    if not claimed:
        return None
    return WebhookDelivery.objects.select_related("webhook").filter(id=delivery_id).first()


def _send(webhook: Webhook, delivery: WebhookDelivery) -> Outcome:
    """POST the delivery's body, signed now. No transaction is open: this waits on the network."""
    body = delivery.body.encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        EVENT_HEADER: delivery.event,
        DELIVERY_HEADER: str(delivery.uuid),
        SIGNATURE_HEADER: signature_header(webhook.secret, body),
    }
    started = time.monotonic()
    try:
        answer = request_bytes(
            "POST", webhook.url, body, policy=webhook_policy(), headers=headers, keep=RESPONSE_KEEP_BYTES
        )
    except FetchRefused as exc:
        return Outcome(
            error=_text(f"{exc.code}: {exc.message}", 500),
            duration_ms=round((time.monotonic() - started) * 1000),
            permanent=exc.code in _PERMANENT,
        )
    status = answer.status
    text = _text(answer.body.decode("utf-8", errors="replace"), RESPONSE_KEEP_BYTES)
    duration_ms = round((time.monotonic() - started) * 1000)
    if 200 <= status < 300:
        return Outcome(status, "", duration_ms, text, delivered=True)
    if status == 410:
        error = "gone: the receiver answered 410 Gone, so the webhook was turned off"
        return Outcome(status, error, duration_ms, text, permanent=True, gone=True)
    return Outcome(status, f"HTTP {status}", duration_ms, text)


def _record(delivery: WebhookDelivery, at: Any, outcome: Outcome) -> str:
    """Record the attempt the caller claimed, and what comes next: done, failed, or a retry."""
    number = delivery.attempts  # the claim counted this attempt
    now = timezone.now()
    delay = 0.0
    if outcome.delivered:
        state = DeliveryState.DELIVERED
    elif outcome.permanent or number >= delivery.attempt_limit:
        state = DeliveryState.FAILED
    else:
        state, delay = DeliveryState.PENDING, backoff(number)
    final = state != DeliveryState.PENDING
    with transaction.atomic():
        if outcome.gone:
            _turn_off(delivery.webhook, reason="gone")  # locks the project row first
        updated = WebhookDelivery.objects.filter(
            id=delivery.pk, state=DeliveryState.SENDING, attempts=number
        ).update(
            state=state,
            next_attempt_at=None if final else now + timedelta(seconds=delay),
            lease_until=None,
            finished_at=now if final else None,
        )
        if not updated:
            # Deleted with its webhook meanwhile, or taken back by the sweep after a stall.
            logger.info("webhook delivery %s changed during attempt %s; outcome dropped", delivery.pk, number)
            return ""
        WebhookAttempt.objects.create(
            delivery_id=delivery.pk,
            number=number,
            at=at,
            status_code=outcome.status_code,
            error=outcome.error,
            duration_ms=outcome.duration_ms,
            response_body=outcome.response_body,
        )
        if not final:
            _enqueue_on_commit([delivery.pk], countdown=delay)
    if not outcome.delivered:
        logger.info(
            "webhook delivery %s attempt %s failed (%s): %s",
            delivery.uuid,
            number,
            outcome.status_code,
            outcome.error,
        )
    return state


def _turn_off(webhook: Webhook, *, reason: str) -> None:
    project = Project.objects.select_for_update().filter(id=webhook.project_id).first()
    if project is None:
        return
    Webhook.objects.filter(id=webhook.pk).update(
        active=False, disabled_reason=reason, updated_at=timezone.now()
    )
    _sync_subscriptions(project)
    audit_record(
        actor=None,
        verb="webhook.update",
        obj=webhook,
        project=project,
        organization=project.organization,
        changes={"active": [True, False], "disabled_reason": reason},
    )


# --- The sweep ------------------------------------------------------------------------------------


def deliveries_sweep(*, batch: int = 500) -> dict[str, int]:
    """What the beat runs every minute: recover attempts whose worker died and deliveries whose
    message was lost, delete deliveries past their retention, and repair subscribed-event sets a
    direct edit of a project's settings may have clobbered. Safe to run twice at once."""
    now = timezone.now()
    requeue: list[int] = []
    with transaction.atomic():
        lost = list(
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .filter(state=DeliveryState.SENDING, lease_until__lt=now)
            .order_by("id")[:batch]
        )
        for delivery in lost:
            final = delivery.attempts >= delivery.attempt_limit
            WebhookAttempt.objects.create(
                delivery=delivery,
                number=delivery.attempts,
                at=delivery.lease_until or now,
                error="worker_lost: the attempt's worker stopped before recording an outcome",
            )
            delivery.state = DeliveryState.FAILED if final else DeliveryState.PENDING
            delivery.next_attempt_at = None if final else now
            delivery.finished_at = now if final else None
            delivery.lease_until = None
            delivery.save(update_fields=["state", "next_attempt_at", "finished_at", "lease_until"])
            if not final:
                requeue.append(delivery.pk)
    overdue = list(
        WebhookDelivery.objects.filter(state=DeliveryState.PENDING, next_attempt_at__lt=now - _OVERDUE)
        .order_by("next_attempt_at")
        .values_list("id", flat=True)[:batch]
    )
    WebhookDelivery.objects.filter(id__in=overdue, state=DeliveryState.PENDING).update(next_attempt_at=now)
    _enqueue_on_commit([*requeue, *overdue])  # at once when, as in beat, no transaction is open
    return {
        "recovered": len(lost),
        "requeued": len(overdue),
        "pruned": deliveries_prune(now=now),
        "repaired": subscriptions_repair(),
    }


def deliveries_prune(*, now: Any = None, batch: int = 5000) -> int:
    """Delete one batch of deliveries (with their attempts) finished before the retention."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.LOUPE_WEBHOOK_RETENTION_DAYS)
    old = list(WebhookDelivery.objects.filter(finished_at__lt=cutoff).values_list("id", flat=True)[:batch])
    if not old:
        return 0
    WebhookDelivery.objects.filter(id__in=old).delete()
    return len(old)


def subscriptions_repair() -> int:
    """Rewrite the subscribed events of every project whose settings disagree with its webhooks
    (a manager's PATCH of the whole settings object can drop them); how many were repaired."""
    expected: dict[int, set[str]] = {}
    for project_id, events in Webhook.objects.filter(active=True).values_list("project_id", "events"):
        expected.setdefault(project_id, set()).update(events)
    stored = Project.objects.filter(Q(id__in=list(expected)) | Q(settings__has_key=SETTINGS_KEY))
    repaired = 0
    for project in stored.only("id", "settings"):
        if subscribed_events(project) != sorted(expected.get(project.pk, ())):
            with transaction.atomic():
                _sync_subscriptions(Project.objects.select_for_update().get(id=project.pk))
            repaired += 1
    return repaired
