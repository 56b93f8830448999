"""Input and output shapes of the webhook API. A secret is accepted on input and shown only in the
answer that set it; every other answer says `has_secret`."""

from __future__ import annotations

import json
from typing import Any

import django_filters
from rest_framework import serializers

from labeling.webhooks.models import DeliveryState, Webhook, WebhookAttempt, WebhookDelivery, WebhookEvent
from labeling.webhooks.services import EVENTS

EVENTS_HELP = f"Events to receive, among: {', '.join(EVENTS)}."
SIGNING_HELP = "Key of the HMAC-SHA256 signatures, 16 to 200 characters; generated when not given."


class WebhookCreateInput(serializers.Serializer):
    url = serializers.CharField(max_length=2000)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENTS), allow_empty=False, max_length=50, help_text=EVENTS_HELP
    )
    active = serializers.BooleanField(default=True)
    description = serializers.CharField(max_length=500, allow_blank=True, default="")
    secret = serializers.CharField(
        min_length=16, max_length=200, required=False, trim_whitespace=False, help_text=SIGNING_HELP
    )


class WebhookUpdateInput(serializers.Serializer):
    url = serializers.CharField(max_length=2000, required=False)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENTS),
        allow_empty=False,
        max_length=50,
        required=False,
        help_text=EVENTS_HELP,
    )
    active = serializers.BooleanField(required=False)
    description = serializers.CharField(max_length=500, allow_blank=True, required=False)
    secret = serializers.CharField(
        min_length=16, max_length=200, required=False, trim_whitespace=False, help_text=SIGNING_HELP
    )
    rotate_secret = serializers.BooleanField(
        required=False, default=False, help_text="Generate a new secret; the answer shows it, once."
    )


class WebhookOutput(serializers.ModelSerializer):
    has_secret = serializers.SerializerMethodField()

    class Meta:
        model = Webhook
        fields = [
            "id",
            "url",
            "events",
            "active",
            "description",
            "has_secret",
            "disabled_reason",
            "created_at",
            "updated_at",
        ]

    def get_has_secret(self, webhook: Webhook) -> bool:
        return bool(webhook.secret)


class WebhookSecretOutput(WebhookOutput):
    """The answer that created a webhook or changed its secret: the only one showing the secret."""

    secret = serializers.SerializerMethodField()

    class Meta(WebhookOutput.Meta):
        fields = [*WebhookOutput.Meta.fields, "secret"]

    def get_secret(self, _: Webhook) -> str:
        return str(self.context["secret"])


class WebhookAttemptOutput(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = ["number", "at", "status_code", "error", "duration_ms", "response_body"]


class WebhookDeliveryOutput(serializers.ModelSerializer):
    attempts = WebhookAttemptOutput(many=True, source="attempt_log")
    payload = serializers.SerializerMethodField(help_text="The JSON body every attempt sends.")

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "uuid",
            "event",
            "state",
            "payload",
            "created_at",
            "next_attempt_at",
            "finished_at",
            "attempts",
        ]

    def get_payload(self, delivery: WebhookDelivery) -> dict[str, Any]:
        payload: dict[str, Any] = json.loads(delivery.body)
        return payload


class WebhookDeliveryFilter(django_filters.FilterSet):
    state = django_filters.MultipleChoiceFilter(choices=DeliveryState.choices)
    event = django_filters.ChoiceFilter(choices=WebhookEvent.choices)

    class Meta:
        model = WebhookDelivery
        fields = ["state", "event"]
