"""Webhook subscriptions, their delivery log, redelivery and ping (docs/webhooks.md)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response

from labeling.webhooks import selectors, services
from labeling.webhooks.models import Webhook, WebhookDelivery
from labeling.webhooks.serializers import (
    WebhookCreateInput,
    WebhookDeliveryFilter,
    WebhookDeliveryOutput,
    WebhookOutput,
    WebhookSecretOutput,
    WebhookUpdateInput,
)
from projects.access import ProjectAccess, project_access
from projects.views import NO_CONTENT, ListView, caller, parse

TAGS = ["webhooks"]


def _access(request: Request, project_id: int) -> ProjectAccess:
    return project_access(user=caller(request), project_id=project_id)


class WebhookListView(ListView):
    queryset = Webhook.objects.none()  # for schema generation; requests use selectors
    output_class = WebhookOutput

    @extend_schema(responses=WebhookOutput(many=True), tags=TAGS)
    def get(self, request: Request, project_id: int) -> Response:
        return self.list_response(selectors.webhook_list(access=_access(request, project_id)))

    @extend_schema(request=WebhookCreateInput, responses={201: WebhookSecretOutput}, tags=TAGS)
    def post(self, request: Request, project_id: int) -> Response:
        access = _access(request, project_id)
        webhook, secret = services.webhook_create(
            actor=caller(request), access=access, **parse(WebhookCreateInput, request)
        )
        body = WebhookSecretOutput(webhook, context={"secret": secret}).data
        return Response(body, status=status.HTTP_201_CREATED)


class WebhookDetailView(generics.GenericAPIView):
    @extend_schema(responses=WebhookOutput, tags=TAGS)
    def get(self, request: Request, project_id: int, webhook_id: int) -> Response:
        webhook = selectors.webhook_get(access=_access(request, project_id), webhook_id=webhook_id)
        return Response(WebhookOutput(webhook).data)

    @extend_schema(
        request=WebhookUpdateInput,
        responses={200: WebhookSecretOutput},
        tags=TAGS,
        description="`secret` is in the answer only when this request set a new one.",
    )
    def patch(self, request: Request, project_id: int, webhook_id: int) -> Response:
        access = _access(request, project_id)
        webhook, secret = services.webhook_update(
            actor=caller(request), access=access, webhook_id=webhook_id, **parse(WebhookUpdateInput, request)
        )
        if secret is None:
            return Response(WebhookOutput(webhook).data)
        return Response(WebhookSecretOutput(webhook, context={"secret": secret}).data)

    @extend_schema(responses={204: NO_CONTENT}, tags=TAGS)
    def delete(self, request: Request, project_id: int, webhook_id: int) -> Response:
        access = _access(request, project_id)
        services.webhook_delete(actor=caller(request), access=access, webhook_id=webhook_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookDeliveryListView(ListView):
    queryset = WebhookDelivery.objects.none()
    output_class = WebhookDeliveryOutput
    filterset_class = WebhookDeliveryFilter

    @extend_schema(responses=WebhookDeliveryOutput(many=True), tags=TAGS)
    def get(self, request: Request, project_id: int, webhook_id: int) -> Response:
        access = _access(request, project_id)
        return self.list_response(selectors.delivery_list(access=access, webhook_id=webhook_id))


class WebhookRedeliverView(generics.GenericAPIView):
    @extend_schema(request=None, responses={202: WebhookDeliveryOutput}, tags=TAGS)
    def post(self, request: Request, project_id: int, webhook_id: int, delivery_id: int) -> Response:
        delivery = services.delivery_redeliver(
            actor=caller(request),
            access=_access(request, project_id),
            webhook_id=webhook_id,
            delivery_id=delivery_id,
        )
        return Response(WebhookDeliveryOutput(delivery).data, status=status.HTTP_202_ACCEPTED)


class WebhookPingView(generics.GenericAPIView):
    @extend_schema(request=None, responses={202: WebhookDeliveryOutput}, tags=TAGS)
    def post(self, request: Request, project_id: int, webhook_id: int) -> Response:
        access = _access(request, project_id)
        delivery = services.webhook_ping(actor=caller(request), access=access, webhook_id=webhook_id)
        return Response(WebhookDeliveryOutput(delivery).data, status=status.HTTP_202_ACCEPTED)
