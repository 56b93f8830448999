"""Webhook routes, appended to labeling.urls (plain patterns, so URL listings see every route)."""

from django.urls import path

from labeling.webhooks import views

P = "projects/<int:project_id>/webhooks"

urlpatterns = [
    path(P, views.WebhookListView.as_view(), name="webhook-list"),
    path(f"{P}/<int:webhook_id>", views.WebhookDetailView.as_view(), name="webhook-detail"),
    path(
        f"{P}/<int:webhook_id>/deliveries", views.WebhookDeliveryListView.as_view(), name="webhook-deliveries"
    ),
    path(
        f"{P}/<int:webhook_id>/deliveries/<int:delivery_id>/redeliver",
        views.WebhookRedeliverView.as_view(),
        name="webhook-redeliver",
    ),
    path(f"{P}/<int:webhook_id>/ping", views.WebhookPingView.as_view(), name="webhook-ping"),
]
