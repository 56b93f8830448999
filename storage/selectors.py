"""Reads of the storage app, scoped to what the caller may see."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Count, QuerySet

from projects.exceptions import NotFound
from storage.access import dataset_access, dataset_list_for_user
from storage.models import Item

MAX_GROUPS = 500


def item_list_for_user(*, user: User, dataset_id: int) -> QuerySet[Item]:
    dataset_access(user=user, dataset_id=dataset_id)
    return (
        Item.objects.filter(dataset_id=dataset_id)
        .select_related("primary", "thumbnail")
        .prefetch_related("parts__blob")
    )


def item_get_for_user(*, user: User, item_id: int) -> Item:
    item = (
        Item.objects.filter(id=item_id, dataset__in=dataset_list_for_user(user=user))
        .select_related("primary", "thumbnail")
        .prefetch_related("parts__blob")
        .first()
    )
    if item is None:
        raise NotFound("Item not found.", item_id=item_id)
    return item


def duplicate_groups_for_user(
    *, user: User, dataset_id: int, kind: str, distance: int
) -> list[dict[str, Any]]:
    """Groups of items with the same bytes (exact) or perceptually alike images (near)."""
    dataset_access(user=user, dataset_id=dataset_id)
    if kind == "exact":
        shas = (
            Item.objects.filter(dataset_id=dataset_id)
            .values("primary__sha256")
            .annotate(n=Count("id"))
            .filter(n__gt=1)
            .values_list("primary__sha256", flat=True)[:MAX_GROUPS]
        )
        groups: dict[str, list[dict[str, Any]]] = {}
        for item_id, name, sha in Item.objects.filter(
            dataset_id=dataset_id, primary__sha256__in=list(shas)
        ).values_list("id", "name", "primary__sha256"):
            groups.setdefault(sha, []).append({"id": item_id, "name": name})
        return [{"sha256": sha, "items": items} for sha, items in groups.items()]
    # Near duplicates: pairs of images whose 64-bit perceptual hashes differ in at most `distance`
    # bits, computed in PostgreSQL (bit_count of the XOR) so no hash leaves the database.
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT a.id, a.name, b.id, b.name, bit_count((a.phash # b.phash)::bit(64)) AS d
            FROM storage_item a JOIN storage_item b
              ON a.dataset_id = b.dataset_id AND a.id < b.id
            WHERE a.dataset_id = %s AND a.phash IS NOT NULL AND b.phash IS NOT NULL
              AND bit_count((a.phash # b.phash)::bit(64)) <= %s
            ORDER BY d, a.id, b.id
            LIMIT %s
            """,
            [dataset_id, distance, MAX_GROUPS],
        )
        return [
            {"distance": d, "items": [{"id": a, "name": an}, {"id": b, "name": bn}]}
            for a, an, b, bn, d in cursor.fetchall()
        ]
