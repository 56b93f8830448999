"""Keeping the object store and the database in agreement.

Writes go object first, then row, so a crash between the two leaves an object no row references,
never a row without its object. The sweep removes such orphans once they are older than a grace
period (an ingest may be between its two steps right now), removes abandoned staging objects and
what writers killed mid-way left (unfinished multipart uploads, partial local files), and
flags — never deletes — rows whose object has disappeared, so operators and the API can see them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from storage.models import Blob
from storage.objects import ObjectInfo, object_store

logger = logging.getLogger(__name__)

PAGE = 1000


@dataclass
class SweepReport:
    orphans_deleted: int = 0
    staging_deleted: int = 0
    missing_flagged: int = 0
    missing_cleared: int = 0
    abandoned_writes_removed: int = 0  # unfinished multipart uploads, partial local files


def store_sweep(*, grace_s: int | None = None) -> SweepReport:
    """One pass over the store, a page of keys at a time (memory stays flat at any size)."""
    grace = settings.LOUPE_SWEEP_GRACE_S if grace_s is None else grace_s
    cutoff = time.time() - grace
    store = object_store()
    report = SweepReport()
    seen: set[str] = set()
    page: list[ObjectInfo] = []

    def flush() -> None:
        known = set(Blob.objects.filter(key__in=[o.key for o in page]).values_list("key", flat=True))
        for info in page:
            if info.key in known:
                seen.add(info.key)
            elif info.modified < cutoff:
                store.delete(info.key)
                report.orphans_deleted += 1
        page.clear()

    for info in store.iter_objects("blobs/"):
        page.append(info)
        if len(page) == PAGE:
            flush()
    flush()
    report.abandoned_writes_removed = store.abandoned_writes_remove(older_than=cutoff)
    for info in store.iter_objects("staging/"):
        # Staged uploads live until their ingest job has copied them into blobs.
        if info.modified < cutoff:
            store.delete(info.key)
            report.staging_deleted += 1
    # Rows whose object is gone: flagged with when it was first noticed; cleared if it came back.
    for blob in (
        Blob.objects.filter(created_at__lt=timezone.now() - timedelta(seconds=grace))
        .only("id", "key", "missing_since")
        .iterator(chunk_size=PAGE)
    ):
        present = blob.key in seen
        if not present and blob.missing_since is None:
            Blob.objects.filter(id=blob.pk).update(missing_since=timezone.now())
            report.missing_flagged += 1
        elif present and blob.missing_since is not None:
            Blob.objects.filter(id=blob.pk).update(missing_since=None)
            report.missing_cleared += 1
    logger.info("store sweep: %s", report)
    return report
