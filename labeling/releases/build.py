"""The job that builds a release (`labeling.release_build`).

Chunks, in order (one runner, so each sees the ones before it committed):
- `0 … n-1` freeze the selected tasks by task id range: the labels chosen for each
  (labeling.releases.select), the item's blob and facts, and its split, copied into ReleaseItem
  rows in the chunk's transaction. A chunk applied is never applied again, so no item is frozen
  twice; a worker killed mid-chunk leaves nothing of that chunk behind.
- `n` places the items of stratified splits (which needs every item's class) and counts the
  release: items per split and source, regions per class and per split and class.
- `n + 1` writes the manifest to object storage (streamed, outside any transaction), then marks
  the release ready with the manifest's key, size and sha256.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

from django.db import connection
from django.db.models import Count
from django.utils import timezone

from labeling.models import LabelSchema, Release, ReleaseItem, ReleaseState
from labeling.releases import splits as sp
from labeling.releases.select import keep_classes, labels_chosen, regions_sha256, tasks_selected
from labeling.services import parsed_schema
from labeling.webhooks import services as webhooks
from projects.bulk import copy_insert, copy_update
from projects.jobs import ChunkOutcome, JobKind, Plan, register
from projects.models import Job
from storage.objects import object_store

CHUNK_TASKS = 2000
MANIFEST_FORMAT = 1
MANIFEST_MEDIA_TYPE = "application/x-ndjson"

_ENTRY_COLUMNS = (
    "release_id", "item_id", "task_id", "dataset_id", "name", "modality", "media_type", "sha256",
    "blob_key", "size", "meta", "source", "annotation_id", "annotation_version", "annotations",
    "schema_version", "regions", "regions_sha256", "split", "stratum",
)  # fmt: skip


def canonical_json(value: Any) -> str:
    """One way to write a value: sorted keys, no spaces, UTF-8 (manifests are byte-stable)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def manifest_key(release: Release) -> str:
    return f"releases/project-{release.project_id}/{release.version}/manifest.jsonl"


def _release(job: Job) -> Release:
    return Release.objects.select_related("project", "parent").get(id=job.params["release_id"])


@register
class ReleaseBuild(JobKind):
    name = "labeling.release_build"
    queue = "export"
    ordered = True  # the counts and the manifest must see every item frozen

    def plan(self, job: Job) -> Plan:
        release = _release(job)
        bounds = tasks_selected(release.project_id, release.filter).order_by().values_list("id", flat=True)
        low = bounds.order_by("id").first()
        high = bounds.order_by("-id").first()
        total = bounds.count()
        chunks = 0 if low is None or high is None else math.ceil((high - low + 1) / CHUNK_TASKS)
        job.params = {**job.params, "first_id": low or 0, "last_id": high or -1, "task_chunks": chunks}
        Job.objects.filter(id=job.pk).update(params=job.params)
        return Plan(total=total, chunks=chunks + 2)

    def prepare_chunk(self, job: Job, index: int) -> Any:
        if index == job.params["task_chunks"] + 1:
            return _write_manifest(_release(job))
        return None

    def apply_chunk(self, job: Job, index: int, prepared: Any) -> ChunkOutcome:
        release = _release(job)
        task_chunks = job.params["task_chunks"]
        if index < task_chunks:
            low = job.params["first_id"] + index * CHUNK_TASKS
            frozen, skipped = _freeze(release, low, min(low + CHUNK_TASKS - 1, job.params["last_id"]))
            return ChunkOutcome(items=frozen + sum(skipped.values()), result={"frozen": frozen, **skipped})
        if index == task_chunks:
            _place_stratified(release)
            release.counts = _counts(release, job.result)
            release.save(update_fields=["counts"])
            return ChunkOutcome(items=0)
        release.manifest_key, release.manifest_size, release.manifest_sha256 = prepared
        release.state, release.ready_at = ReleaseState.READY, timezone.now()
        release.save(update_fields=["manifest_key", "manifest_size", "manifest_sha256", "state", "ready_at"])
        webhooks.emit(
            release.project,
            "release.created",
            {
                "release": release.pk,
                "version": release.version,
                "name": release.name,
                "parent": release.parent_id,
                "counts": release.counts,
                "manifest": {"sha256": release.manifest_sha256, "size": release.manifest_size},
            },
        )
        return ChunkOutcome(items=0, result={"manifest_sha256": release.manifest_sha256})

    def merge_result(self, result: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
        merged = dict(result)
        for key, value in delta.items():
            merged[key] = merged.get(key, 0) + value if isinstance(value, int) else value
        return merged


def _ratios(release: Release) -> list[tuple[str, float]]:
    return sp.normalize_ratios(release.splits["ratios"])


def _inherited(release: Release, item_ids: list[int]) -> dict[int, str]:
    """Splits the parent release gave these items, when it split the same way."""
    parent = release.parent
    if parent is None or parent.splits != release.splits:
        return {}
    return dict(
        ReleaseItem.objects.filter(release=parent, item_id__in=item_ids).values_list("item_id", "split")
    )


def _freeze(release: Release, low: int, high: int) -> tuple[int, dict[str, int]]:
    selection = release.filter
    tasks = list(
        tasks_selected(release.project_id, selection)
        .filter(id__gte=low, id__lte=high)
        .order_by("id")
        .values_list(
            "id", "item_id", "item__dataset_id", "item__name", "item__modality", "item__media_type",
            "item__size", "item__meta", "item__primary__sha256", "item__primary__key",
        )
    )  # fmt: skip
    chosen = labels_chosen([t[0] for t in tasks])
    inherited = _inherited(release, [t[1] for t in tasks])
    class_order = _class_order(release)
    ratios, stratify, seed = _ratios(release), release.splits["stratify"], release.splits["seed"]
    rows: list[tuple[Any, ...]] = []
    skipped: Counter[str] = Counter()
    for task_id, item_id, dataset_id, name, modality, media_type, size, meta, sha256, key in tasks:
        labels = chosen.get(task_id)
        if labels is None:
            skipped["no_labels"] += 1
            continue
        regions = keep_classes(labels.regions, selection["classes"])
        if selection["only_with_classes"] and not any(
            r.get("label") in selection["classes"] for r in regions
        ):
            skipped["no_classes"] += 1
            continue
        split = inherited.get(item_id) or ("" if stratify else sp.by_hash(sp.split_key(sha256, seed), ratios))
        rows.append(
            (
                release.pk, item_id, task_id, dataset_id, name, modality, media_type, sha256, key, size, meta,
                labels.source, labels.annotation_id, labels.annotation_version, labels.annotation_ids,
                labels.schema_version, regions, regions_sha256(regions), split,
                sp.stratum_of(regions, class_order)[:200],
            )
        )  # fmt: skip
    if rows:
        copy_insert(ReleaseItem, _ENTRY_COLUMNS, rows)
    return len(rows), {"no_labels": skipped["no_labels"], "no_classes": skipped["no_classes"]}


def _class_order(release: Release) -> list[str]:
    schema = LabelSchema.objects.get(project_id=release.project_id, version=release.schema_version)
    return list(parsed_schema(schema).classes)


def _place_stratified(release: Release) -> None:
    if not release.splits["stratify"]:
        return
    entries = ReleaseItem.objects.filter(release=release)
    placed: dict[str, Counter[str]] = {}
    for stratum, split, n in (
        entries.exclude(split="").values_list("stratum", "split").annotate(n=Count("id"))
    ):
        placed.setdefault(stratum, Counter())[split] = n
    new = [
        (item_id, stratum, sp.split_key(sha256, release.splits["seed"]))
        for item_id, stratum, sha256 in entries.filter(split="").values_list("item_id", "stratum", "sha256")
    ]
    chosen = sp.stratified(new, _ratios(release), placed)
    ids = dict(entries.filter(split="").values_list("item_id", "id"))
    copy_update(ReleaseItem, ["split"], [(ids[item_id], split) for item_id, split in chosen.items()])


def _counts(release: Release, result: dict[str, Any]) -> dict[str, Any]:
    entries = ReleaseItem.objects.filter(release=release)
    by_split = dict(entries.values_list("split").annotate(n=Count("id")).order_by())
    by_source = dict(entries.values_list("source").annotate(n=Count("id")).order_by())
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT e.split, COALESCE(r->>'label', ''), count(*) FROM labeling_releaseitem e,"
            " jsonb_array_elements(e.regions) r WHERE e.release_id = %s GROUP BY 1, 2",
            [release.pk],
        )
        by_split_class: dict[str, dict[str, int]] = {}
        by_class: Counter[str] = Counter()
        for split, label, n in cursor.fetchall():
            by_split_class.setdefault(split, {})[label] = n
            by_class[label] += n
    return {
        "items": sum(by_split.values()),
        "regions": sum(by_class.values()),
        "by_split": dict(sorted(by_split.items())),
        "by_source": dict(sorted(by_source.items())),
        "by_class": dict(sorted(by_class.items())),
        "by_split_class": {s: dict(sorted(c.items())) for s, c in sorted(by_split_class.items())},
        "left_out": {"no_labels": result.get("no_labels", 0), "no_classes": result.get("no_classes", 0)},
    }


def manifest_lines(release: Release) -> Iterator[str]:
    """The manifest, line by line: a header, one line per item in item order, the counts."""
    schema = LabelSchema.objects.get(project_id=release.project_id, version=release.schema_version)
    header = {
        "loupe_release": MANIFEST_FORMAT,
        "project": release.project_id,
        "release": release.pk,
        "version": release.version,
        "name": release.name,
        "notes": release.notes,
        "parent": None
        if release.parent is None
        else {"id": release.parent.pk, "version": release.parent.version},
        "schema": {"version": schema.version, "spec": schema.spec},
        "filter": release.filter,
        "splits": release.splits,
        "created_at": release.created_at.isoformat(),
        "created_by": release.created_by_id,
    }
    yield canonical_json(header) + "\n"
    rows = (
        ReleaseItem.objects.filter(release=release)
        .order_by("item_id")
        .values_list(
            "item_id", "name", "dataset_id", "modality", "media_type", "sha256", "blob_key", "size",
            "split", "source", "annotation_id", "annotation_version", "annotations", "schema_version",
            "regions_sha256", "regions",
        )
    )  # fmt: skip
    for row in rows.iterator(chunk_size=2000):
        yield canonical_json(dict(zip(MANIFEST_FIELDS, row, strict=True))) + "\n"
    yield canonical_json({"counts": release.counts}) + "\n"


MANIFEST_FIELDS = (
    "item", "name", "dataset", "modality", "media_type", "sha256", "key", "size", "split", "source",
    "annotation", "annotation_version", "annotations", "schema_version", "regions_sha256", "regions",
)  # fmt: skip


def _write_manifest(release: Release) -> tuple[str, int, str]:
    key = manifest_key(release)
    with object_store().writer(key, content_type=MANIFEST_MEDIA_TYPE) as out:
        for line in manifest_lines(release):
            out.write(line.encode())
    return key, out.size, out.sha256
