"""Webhooks: per-project subscriptions to Loupe's events, signed deliveries with retries."""
