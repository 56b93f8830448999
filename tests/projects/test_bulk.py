"""COPY-based bulk writes: ids come back in order, JSON round-trips, updates touch only what is named."""

from __future__ import annotations

import pytest
from django.db import transaction
from django.utils import timezone

from projects.bulk import copy_insert, copy_update
from projects.models import AuditEvent

pytestmark = pytest.mark.django_db


# COPY applies no Django defaults: callers name every NOT NULL column (request_id here).
def test_copy_insert_returns_the_new_ids_in_order_and_stores_json() -> None:
    now = timezone.now()
    rows = [("tool.test", f"o{n}", str(n), {"n": n, "tags": ["a", "ü"]}, now, "") for n in range(50)]
    with transaction.atomic():
        ids = copy_insert(
            AuditEvent, ["verb", "object_type", "object_id", "changes", "at", "request_id"], rows
        )
    assert len(ids) == 50 and ids == sorted(ids)
    stored = {e.pk: e for e in AuditEvent.objects.filter(id__in=ids)}
    assert [stored[i].object_id for i in ids] == [str(n) for n in range(50)]
    assert stored[ids[7]].changes == {"n": 7, "tags": ["a", "ü"]}
    assert copy_insert(AuditEvent, ["verb"], []) == []


def test_copy_update_sets_only_the_named_columns_of_the_named_rows() -> None:
    now = timezone.now()
    with transaction.atomic():
        ids = copy_insert(
            AuditEvent, ["verb", "object_type", "object_id", "changes", "at", "request_id"],
            [("tool.test", "o", str(n), {"n": n}, now, "") for n in range(5)],
        )  # fmt: skip
        updated = copy_update(AuditEvent, ["changes"], [(ids[1], {"n": "one"}), (ids[3], [1, 2])])
    assert updated == 2
    after = {e.pk: e for e in AuditEvent.objects.filter(id__in=ids)}
    assert after[ids[1]].changes == {"n": "one"} and after[ids[3]].changes == [1, 2]
    assert after[ids[0]].changes == {"n": 0} and after[ids[1]].verb == "tool.test"
    assert copy_update(AuditEvent, ["changes"], []) == 0
