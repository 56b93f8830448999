"""The job that writes a release in one format (`labeling.release_export`).

The release's frozen items are read in item order with a server-side cursor, a few thousand rows
at a time, turned into `ExportItem`s and handed to the format's converter, which writes straight
into an object-store writer (a multipart upload on S3): nothing holds the whole release, so the
peak memory of an export does not grow with the release's size. Formats that must write in two
passes (COCO's images before its annotations) spool to a temporary file, never to memory.

With `include_media` the result is a zip archive holding the format's files (a zip format's
members are copied in, not nested) and every item's media under `media/` (`images/` for YOLO,
beside its `labels/`), streamed from object storage one file at a time.

The export is one chunk: a worker killed while writing leaves an unfinished multipart upload or
a partial local file (both removed by the store sweep's `abandoned_writes_remove`), and the next
worker writes the file again from the start.
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from typing import IO, Any

from django.utils import timezone

from labeling import regions as rg
from labeling.formats import get_format
from labeling.formats.base import ExportItem, ItemInfo
from labeling.jobs import label_classes, read_text
from labeling.models import LabelSchema, Release, ReleaseExport, ReleaseItem
from labeling.services import parsed_schema
from labeling.webhooks import services as webhooks
from projects.jobs import ChunkOutcome, JobKind, Plan, register
from projects.models import Job
from storage.objects import COPY_CHUNK, object_store

ROWS_PER_FETCH = 2000
_TEXT_FORMATS = ("conll", "labelstudio")


def release_export_items(
    release_id: int, *, with_text: bool = False, split: str | None = None
) -> Iterator[tuple[ExportItem, str]]:
    """The release's items as converters read them, in item order, with each item's blob key."""
    store = object_store() if with_text else None
    rows = ReleaseItem.objects.filter(release_id=release_id)
    if split:
        rows = rows.filter(split=split)
    for item_id, name, modality, meta, key, regions, annotation_id in (
        rows.order_by("item_id")
        .values_list("item_id", "name", "modality", "meta", "blob_key", "regions", "annotation_id")
        .iterator(chunk_size=ROWS_PER_FETCH)
    ):
        facts = rg.ItemFacts.from_item(modality, meta)
        text = read_text(store, key, meta) if store is not None and modality == "text" else None
        info = ItemInfo(
            id=item_id, name=name, modality=modality, width=facts.width, height=facts.height,
            length=facts.length, duration=facts.duration, frames=facts.frames, text=text,
        )  # fmt: skip
        yield ExportItem(item=info, regions=regions, annotation_id=annotation_id), key


def _export(job: Job) -> ReleaseExport:
    return ReleaseExport.objects.select_related("release").get(id=job.params["export_id"])


@register
class ReleaseExportJob(JobKind):
    name = "labeling.release_export"
    queue = "export"

    def plan(self, job: Job) -> Plan:
        export = _export(job)
        return Plan(total=ReleaseItem.objects.filter(release_id=export.release_id).count(), chunks=1)

    def prepare_chunk(self, job: Job, index: int) -> dict[str, Any]:
        export = _export(job)
        return write_export(export.release, export.format, include_media=export.include_media, job_id=job.pk)

    def apply_chunk(self, job: Job, index: int, prepared: dict[str, Any]) -> ChunkOutcome:
        export = (
            ReleaseExport.objects.select_for_update()
            .select_related("release__project")
            .get(id=job.params["export_id"])
        )
        export.key, export.filename, export.media_type = (
            prepared["key"],
            prepared["filename"],
            prepared["media_type"],
        )
        export.size, export.sha256, export.ready_at = prepared["size"], prepared["sha256"], timezone.now()
        export.save(update_fields=["key", "filename", "media_type", "size", "sha256", "ready_at"])
        release = export.release
        webhooks.emit(
            release.project,
            "export.ready",
            {
                "export": export.pk, "release": release.pk, "version": release.version,
                "format": export.format, "include_media": export.include_media, "filename": export.filename,
                "size": export.size, "sha256": export.sha256,
            },
        )  # fmt: skip
        return ChunkOutcome(items=prepared["items"], result=prepared)


def write_export(release: Release, format: str, *, include_media: bool, job_id: int) -> dict[str, Any]:
    """Write the release in `format` to object storage; its key, name, size, sha256 and counts."""
    module = get_format(format)
    schema = LabelSchema.objects.get(project_id=release.project_id, version=release.schema_version)
    classes = label_classes(parsed_schema(schema))
    stem = f"project-{release.project_id}-release-{release.version}-{format}"
    if include_media:
        filename, media_type = f"{stem}-media.zip", "application/zip"
    else:
        filename, media_type = f"{stem}{module.extension}", module.media_type
    key = f"exports/project-{release.project_id}/release-{release.version}/{job_id}/{filename}"
    counted = {"items": 0, "regions": 0}

    def items() -> Iterator[ExportItem]:
        for export_item, _ in release_export_items(release.pk, with_text=format in _TEXT_FORMATS):
            counted["items"] += 1
            counted["regions"] += len(export_item.regions)
            yield export_item

    store = object_store()
    with store.writer(key, content_type=media_type) as out:
        if not include_media:
            module.export(items(), classes, out)
        else:
            _write_with_media(module, items(), classes, out, format, release.pk)
    return {
        "key": key, "filename": filename, "media_type": media_type, "size": out.size, "sha256": out.sha256,
        "items": counted["items"], "regions": counted["regions"], "format": format,
    }  # fmt: skip


def _write_with_media(
    module: Any, items: Iterator[ExportItem], classes: Any, out: IO[bytes], format: str, release_id: int
) -> None:
    store = object_store()
    media_dir = "images" if format == "yolo" else "media"
    with (
        zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive,
        tempfile.TemporaryFile() as spool,
    ):
        module.export(items, classes, spool)
        spool.seek(0)
        if module.extension == ".zip":
            with zipfile.ZipFile(spool) as inner:
                for member in inner.infolist():
                    with (
                        inner.open(member) as source,
                        archive.open(member.filename, "w", force_zip64=True) as target,
                    ):
                        shutil.copyfileobj(source, target, COPY_CHUNK)
        else:
            with archive.open(f"{module.name}{module.extension}", "w", force_zip64=True) as target:
                shutil.copyfileobj(spool, target, COPY_CHUNK)
        media = (
            ReleaseItem.objects.filter(release_id=release_id)
            .order_by("item_id")
            .values_list("name", "blob_key")
        )
        for name, blob_key in media.iterator(chunk_size=ROWS_PER_FETCH):
            path = posixpath.join(media_dir, media_path(name))
            with store.open(blob_key) as source, archive.open(path, "w", force_zip64=True) as target:
                shutil.copyfileobj(source, target, COPY_CHUNK)


def media_path(name: str) -> str:
    """An item's name as a relative path inside an archive (never above it)."""
    parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    return "/".join(parts) or "item"
