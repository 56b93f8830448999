"""Reads of the storage app, scoped to what the caller may see."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import OperationalError, connection, transaction
from django.db.models import Count, QuerySet
from psycopg.errors import QueryCanceled

from projects.exceptions import DomainError, NotFound
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
    return _near_duplicate_pairs(dataset_id, distance)


class DuplicateSearchTimeout(DomainError):
    code, status_code = "query_timeout", 503
    default_message = "The near-duplicate search took too long for this dataset; try again later."


# Each image's 64-bit hash as four 16-bit quarters; candidate pairs share at least one quarter, so
# PostgreSQL finds them with a hash join (linear in the images) instead of comparing every pair.
# By the pigeonhole principle every pair within 3 bits is found; wider pairs are found when they
# still share a quarter, which near copies of the same picture almost always do.
_NEAR_PAIRS_SQL = """
WITH quarters AS (
    SELECT i.id, i.name, i.phash, q.k, (i.phash >> (16 * q.k)) & 65535 AS quarter
    FROM storage_item i CROSS JOIN generate_series(0, 3) AS q(k)
    WHERE i.dataset_id = %s AND i.phash IS NOT NULL
)
SELECT DISTINCT a.id, a.name, b.id, b.name, bit_count((a.phash # b.phash)::bit(64)) AS d
FROM quarters a JOIN quarters b ON a.k = b.k AND a.quarter = b.quarter AND a.id < b.id
WHERE bit_count((a.phash # b.phash)::bit(64)) <= %s
ORDER BY d, a.id, b.id
LIMIT %s
"""


def _near_duplicate_pairs(dataset_id: int, distance: int) -> list[dict[str, Any]]:
    """Pairs of images whose perceptual hashes differ in at most ``distance`` bits, in SQL."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            # A dataset of thousands of identical frames still yields many pairs: bound the time.
            cursor.execute("SET LOCAL statement_timeout = %s", [settings.LOUPE_DUPLICATES_TIMEOUT_MS])
            cursor.execute(_NEAR_PAIRS_SQL, [dataset_id, distance, MAX_GROUPS])
            rows = cursor.fetchall()
    except OperationalError as exc:
        if isinstance(exc.__cause__, QueryCanceled):  # our statement_timeout, nothing else
            raise DuplicateSearchTimeout() from None
        raise
    return [
        {"distance": d, "items": [{"id": a, "name": an}, {"id": b, "name": bn}]} for a, an, b, bn, d in rows
    ]
