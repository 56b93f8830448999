"""Ingest: every way of bringing files in ends as IngestEntry rows processed by one job kind.

The paths differ only in where an entry's bytes come from (``IngestEntry.source``):
- ``staged``: an object Loupe's store already holds under ``staging/`` (direct upload, presigned
  browser upload, archive members);
- ``url``: fetched server-side through the SSRF-safe fetcher;
- ``bucket``: a key of a registered external bucket.

A chunk's slow part (fetch, hash, probe, thumbnail, upload) runs outside any transaction in a
small thread pool: Pillow, hashlib and socket I/O release the GIL, so one worker uses more than
one core. Its effect — blob rows, items, entry states — is one short transaction, written after
the objects exist ("object first, then row"). A file that cannot be read, probed or verified is
rejected with its reason and the rest of the batch goes on.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from projects.jobs import ChunkError, ChunkOutcome, JobKind, Plan, register
from projects.models import Job
from storage import hooks
from storage.models import Blob, BucketObject, BucketSource, EntryState, IngestEntry, Item, ItemBlob
from storage.objects import ObjectInfo, ObjectStore, iter_bucket, object_store, s3_client, sha256_file

logger = logging.getLogger(__name__)

THUMBNAIL_MAX_SIDE = 256


def blob_key(sha256: str) -> str:
    return f"blobs/{sha256[:2]}/{sha256[2:4]}/{sha256}"


class Rejected(Exception):
    """A file the ingest refuses, with a stable code; the batch goes on without it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class PreparedFile:
    """One stored file: its blob, what probing learnt, and its thumbnail blob if any."""

    sha256: str
    size: int
    media_type: str
    modality: str
    meta: dict[str, Any]
    phash: int | None = None
    thumb_sha256: str = ""
    thumb_size: int = 0
    bucket_state: tuple[int, str, str, int] | None = None  # (source id, key, etag, size)


@dataclass
class Prepared:
    """What the slow part learnt about one entry, for the transaction to record."""

    entry_id: int
    name: str
    rejected: Rejected | None = None
    primary: PreparedFile | None = None
    modality: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    # Multi-sensor frames: every part by role (the primary one included).
    parts: dict[str, PreparedFile] = field(default_factory=dict)


# --- Fetching an entry's bytes -----------------------------------------------------------------


@dataclass(frozen=True)
class BucketReader:
    """A bucket source with its client, made once per chunk and shared by the worker threads."""

    source: BucketSource
    client: Any


def _materialize(
    source: dict[str, Any], dest: Path, readers: dict[int, BucketReader]
) -> tuple[int, str, str, int] | None:
    """Write a source's bytes to ``dest``; for bucket keys return their (source, key, etag, size)."""
    kind = source.get("kind")
    if kind == "staged":
        object_store().download_to(source["key"], dest)
        return None
    if kind == "url":
        from storage.fetch import FetchRefused, fetch_to_file

        try:
            with dest.open("wb") as handle:
                fetch_to_file(source["url"], handle, policy=url_fetch_policy())
        except FetchRefused as exc:
            raise Rejected(f"url_{exc.code}", str(exc)) from None
        return None
    if kind == "bucket":
        reader = readers[source["source"]]
        # One GET gives the body with its ETag and length: what the next sync compares against.
        answer = reader.client.get_object(Bucket=reader.source.bucket, Key=source["key"])
        with dest.open("wb") as out:
            for chunk in answer["Body"].iter_chunks(1024 * 1024):
                out.write(chunk)
        etag = str(answer.get("ETag", "")).strip('"')
        return reader.source.pk, source["key"], etag, int(answer["ContentLength"])
    raise Rejected("unsupported_source", f"unknown source kind {kind!r}")


def url_fetch_policy() -> Any:
    import ipaddress

    from storage.fetch import FetchPolicy

    return FetchPolicy(
        max_bytes=settings.LOUPE_INGEST_MAX_FILE_BYTES,
        connect_timeout=5.0,
        read_timeout=30.0,
        total_timeout=float(settings.LOUPE_URL_FETCH_TIMEOUT),
        allowed_networks=tuple(ipaddress.ip_network(n) for n in settings.LOUPE_URL_FETCH_ALLOWED_NETWORKS),
    )


def bucket_client(bucket: BucketSource) -> Any:
    return s3_client(
        endpoint_url=bucket.endpoint_url or None,
        region=bucket.region or None,
        addressing=bucket.addressing or None,
        access_key=bucket.access_key_id or None,
        secret_key=bucket.secret_access_key or None,
    )


@contextmanager
def _scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="loupe-ingest-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# Below this size, writing a content-addressed object again costs one request, the same as asking
# whether it exists; above it, ask first and skip the upload.
_CHECK_BEFORE_UPLOAD_BYTES = 1024 * 1024


def _store_once(store: ObjectStore, key: str, path: Path, size: int, media_type: str) -> None:
    if size >= _CHECK_BEFORE_UPLOAD_BYTES and store.exists(key):
        return
    store.put_file(key, path, content_type=media_type)


def _prepare_file(
    source: dict[str, Any], expect: dict[str, Any], name: str, folder: Path, readers: dict[int, BucketReader]
) -> PreparedFile:
    """Fetch, verify, probe, thumbnail and store one file. Raises Rejected / ProbeError / OSError."""
    from storage import media

    store = object_store()
    path = folder / "data"
    bucket_state = _materialize(source, path, readers)
    sha256, size = sha256_file(path)
    if expect.get("size") is not None and expect["size"] != size:
        raise Rejected("size_mismatch", f"expected {expect['size']} bytes, received {size}")
    if expect.get("sha256") and expect["sha256"].lower() != sha256:
        raise Rejected("checksum_mismatch", "the sha256 of the received bytes differs from the declared one")
    if size > settings.LOUPE_INGEST_MAX_FILE_BYTES:
        raise Rejected("too_large", f"{size} bytes exceeds the limit")
    probe = media.probe_file(path, filename=name)
    prepared = PreparedFile(
        sha256=sha256, size=size, media_type=probe.media_type, modality=probe.modality, meta=probe.meta,
        bucket_state=bucket_state,
    )  # fmt: skip
    if probe.modality == "image":
        prepared.phash = media.image_phash(path)
    _store_once(store, blob_key(sha256), path, size, probe.media_type)
    thumbnail = media.make_thumbnail(path, probe, max_side=THUMBNAIL_MAX_SIDE)
    if thumbnail is not None:
        thumb_path = folder / "thumb.webp"
        thumb_path.write_bytes(thumbnail)
        prepared.thumb_sha256, prepared.thumb_size = sha256_file(thumb_path)
        _store_once(store, blob_key(prepared.thumb_sha256), thumb_path, prepared.thumb_size, "image/webp")
    return prepared


def prepare_entry(entry: IngestEntry, readers: dict[int, BucketReader]) -> Prepared:
    """Fetch, verify, probe, thumbnail and store one entry's bytes. Never raises for a bad file.

    Runs in worker threads, so it touches no database: whether bytes are already stored is asked
    of the store itself (the truth a Blob row only records).
    """
    from storage import media

    prepared = Prepared(entry_id=entry.pk, name=entry.name)
    role = ""
    try:
        if entry.source.get("kind") == "multi":
            for role, part in entry.source["parts"].items():
                with _scratch() as folder:
                    prepared.parts[role] = _prepare_file(part, {}, f"{entry.name}/{role}", folder, readers)
            role = ""
            prepared.primary = prepared.parts[entry.source["primary"]]
            prepared.modality = "multisensor"
            prepared.meta = {
                "primary": entry.source["primary"],
                "parts": {
                    r: {"modality": f.modality, "media_type": f.media_type, "sha256": f.sha256, **f.meta}
                    for r, f in prepared.parts.items()
                },
            }
        else:
            with _scratch() as folder:
                prepared.primary = _prepare_file(entry.source, entry.expect, entry.name, folder, readers)
            prepared.modality, prepared.meta = prepared.primary.modality, prepared.primary.meta
    except Rejected as exc:
        prepared.rejected = exc
    except media.ProbeError as exc:
        prepared.rejected = Rejected(exc.code, str(exc))
    except OSError as exc:
        prepared.rejected = Rejected("unreadable", f"{type(exc).__name__}: {exc}")
    if prepared.rejected is not None and role:
        prepared.rejected.message = f"part {role!r}: {prepared.rejected.message}"
    return prepared


# --- The job kind ------------------------------------------------------------------------------


def _blobs_by_sha(rows: list[tuple[str, int, str]]) -> dict[str, Blob]:
    """Blob rows for (sha256, size, media type), creating the missing ones (concurrency-safe)."""
    wanted = {sha: (size, media_type) for sha, size, media_type in rows}
    Blob.objects.bulk_create(
        [Blob(sha256=sha, size=size, media_type=mt, key=blob_key(sha)) for sha, (size, mt) in wanted.items()],
        ignore_conflicts=True,
    )
    return {blob.sha256: blob for blob in Blob.objects.filter(sha256__in=wanted)}


@register
class Ingest(JobKind):
    """Bring a batch of files into a dataset (``params``: dataset, and how entries were made)."""

    name = "storage.ingest"
    queue = "ingest"

    def runners(self, job: Job) -> int:
        return int(settings.LOUPE_INGEST_RUNNERS)

    def plan(self, job: Job) -> Plan:
        discover = job.params.get("discover")
        if discover == "bucket":
            bucket_discover(job)
        elif discover == "archive":
            archive_discover(job)
        total = IngestEntry.objects.filter(job=job).count()
        return Plan(total=total, chunks=math.ceil(total / self.chunk_size(job)))

    @staticmethod
    def chunk_size(job: Job) -> int:
        return int(job.params.get("chunk_size", settings.LOUPE_INGEST_CHUNK))

    def _entries(self, job: Job, index: int) -> list[IngestEntry]:
        size = self.chunk_size(job)
        return list(
            IngestEntry.objects.filter(
                job=job, seq__gte=index * size, seq__lt=(index + 1) * size, state=EntryState.PENDING
            ).order_by("seq")
        )

    def prepare_chunk(self, job: Job, index: int) -> list[Prepared]:
        entries = self._entries(job, index)
        source_ids = {e.source["source"] for e in entries if e.source.get("kind") == "bucket"}
        readers = {
            source.pk: BucketReader(source=source, client=bucket_client(source))
            for source in BucketSource.objects.filter(id__in=source_ids)
        }
        with ThreadPoolExecutor(max_workers=settings.LOUPE_INGEST_THREADS) as pool:
            return list(pool.map(lambda entry: prepare_entry(entry, readers), entries))

    def apply_chunk(self, job: Job, index: int, prepared: list[Prepared]) -> ChunkOutcome:
        dataset_id = job.params["dataset_id"]
        good = [p for p in prepared if p.rejected is None and p.primary is not None]
        files = [f for p in good for f in (p.parts.values() if p.parts else [p.primary]) if f is not None]
        blobs = _blobs_by_sha(
            [(f.sha256, f.size, f.media_type) for f in files]
            + [(f.thumb_sha256, f.thumb_size, "image/webp") for f in files if f.thumb_sha256]
        )
        existing = {
            item.name: item
            for item in Item.objects.filter(dataset_id=dataset_id, name__in=[p.name for p in good])
        }
        entries = {e.pk: e for e in IngestEntry.objects.filter(id__in=[p.entry_id for p in prepared])}
        to_create: list[Item] = []
        to_update: list[Item] = []
        errors: list[ChunkError] = []
        counts = {"created": 0, "updated": 0, "unchanged": 0, "rejected": 0}
        for p in prepared:
            entry = entries[p.entry_id]
            if p.rejected is not None or p.primary is None:
                rejected = p.rejected or Rejected("unreadable", "nothing was read")
                entry.state, entry.error_code, entry.error_message = (
                    EntryState.REJECTED, rejected.code, rejected.message,
                )  # fmt: skip
                errors.append(ChunkError(item=p.name, code=rejected.code, message=rejected.message))
                counts["rejected"] += 1
                continue
            fields = _item_fields(p, p.primary, blobs, entry, job)
            item = existing.get(p.name)
            if item is None:
                item = Item(dataset_id=dataset_id, name=p.name, **fields)
                to_create.append(item)
                entry.state = EntryState.CREATED
            elif item.primary_id == fields["primary"].pk and item.meta == fields["meta"]:
                entry.state, entry.item = EntryState.UNCHANGED, item
            else:
                for name, value in fields.items():
                    setattr(item, name, value)
                to_update.append(item)
                entry.state, entry.item = EntryState.UPDATED, item
            counts[str(entry.state)] += 1
        created = Item.objects.bulk_create(to_create)
        hooks.items_added(dataset_id, [item.pk for item in created])
        by_name = {item.name: item for item in created}
        for p in good:
            entry = entries[p.entry_id]
            if entry.state == EntryState.CREATED:
                entry.item = by_name[p.name]
        if to_update:
            Item.objects.bulk_update(
                to_update,
                ["modality", "media_type", "size", "meta", "primary", "thumbnail", "phash", "ingest_job"],
            )
        _record_parts(
            [
                (entries[p.entry_id].item, p)
                for p in good
                if p.parts and entries[p.entry_id].state != EntryState.UNCHANGED
            ],
            blobs,
        )
        IngestEntry.objects.bulk_update(entries.values(), ["state", "item", "error_code", "error_message"])
        _record_bucket_state([f.bucket_state for f in files if f.bucket_state is not None])
        duplicates = _exact_duplicates(dataset_id, [(p.name, p.primary.sha256) for p in good if p.primary])
        return ChunkOutcome(
            items=len(prepared), errors=errors, result={**counts, "exact_duplicates": duplicates}
        )

    def after_chunk(self, job: Job, index: int, prepared: list[Prepared]) -> None:
        # Staged uploads have served their purpose once their entries are recorded; the sweep
        # removes any this misses (a worker dying right here).
        store = object_store()
        for entry in IngestEntry.objects.filter(id__in=[p.entry_id for p in prepared]).only("source"):
            if entry.source.get("kind") == "staged":
                store.delete(entry.source["key"])

    def after_finish(self, job: Job) -> None:
        if job.params.get("archive_key"):
            object_store().delete(job.params["archive_key"])

    def merge_result(self, result: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
        merged = dict(result)
        for key in ("created", "updated", "unchanged", "rejected"):
            merged[key] = result.get(key, 0) + delta.get(key, 0)
        # Listed up to a cap; the duplicates endpoint lists them all.
        merged["exact_duplicates"] = (result.get("exact_duplicates", []) + delta.get("exact_duplicates", []))[
            :1000
        ]
        return merged

    def finish(self, job: Job) -> dict[str, Any]:
        if job.params.get("discover") == "bucket":
            BucketSource.objects.filter(id=job.params["bucket_source_id"]).update(
                last_synced_at=job.heartbeat_at
            )
        return {
            "created": 0,
            "updated": 0,
            "unchanged": 0,
            "rejected": 0,
            "exact_duplicates": [],
            **job.result,
        }


def _item_fields(
    p: Prepared, primary: PreparedFile, blobs: dict[str, Blob], entry: IngestEntry, job: Job
) -> dict[str, Any]:
    # A frame's thumbnail is its primary part's, else the first part that has one.
    visual = (
        primary if primary.thumb_sha256 else next((f for f in p.parts.values() if f.thumb_sha256), primary)
    )
    return {
        "modality": p.modality,
        "media_type": primary.media_type,
        "size": sum(f.size for f in p.parts.values()) if p.parts else primary.size,
        "meta": {**p.meta, **({"user": entry.user_meta} if entry.user_meta else {})},
        "primary": blobs[primary.sha256],
        "thumbnail": blobs.get(visual.thumb_sha256) if visual.thumb_sha256 else None,
        "phash": primary.phash,
        "ingest_job": job,
    }


def _record_parts(items: list[tuple[Item | None, Prepared]], blobs: dict[str, Blob]) -> None:
    """The parts of multi-sensor frames, replacing what an earlier import recorded."""
    present: list[tuple[Item, Prepared]] = [(item, p) for item, p in items if item is not None]
    if not present:
        return
    ItemBlob.objects.filter(item__in=[item for item, _ in present]).delete()
    ItemBlob.objects.bulk_create(
        ItemBlob(item=item, blob=blobs[part.sha256], role=role, name=f"{item.name}/{role}",
                 meta={"modality": part.modality, "media_type": part.media_type, **part.meta})
        for item, p in present
        for role, part in p.parts.items()
    )  # fmt: skip


def _exact_duplicates(dataset_id: int, named: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Items of this chunk whose bytes another item of the dataset already holds."""
    if not named:
        return []
    by_sha: dict[str, list[str]] = {}
    for name, sha in named:
        by_sha.setdefault(sha, []).append(name)
    others = Item.objects.filter(dataset_id=dataset_id, primary__sha256__in=by_sha).values_list(
        "name", "primary__sha256"
    )
    found: list[dict[str, Any]] = []
    holders: dict[str, list[str]] = {}
    for name, sha in others:
        holders.setdefault(sha, []).append(name)
    for sha, names in by_sha.items():
        for name in names:
            same = sorted(n for n in holders.get(sha, []) if n != name)
            if same:
                found.append({"name": name, "same_as": same[:10], "sha256": sha})
    return found


def _record_bucket_state(states: list[tuple[int, str, str, int]]) -> None:
    if not states:
        return
    BucketObject.objects.bulk_create(
        [BucketObject(source_id=s, key=k, etag=e, size=n) for s, k, e, n in states],
        update_conflicts=True,
        unique_fields=["source", "key"],
        update_fields=["etag", "size"],
    )


# --- Bucket sync: discover new or changed keys -------------------------------------------------


def archive_discover(job: Job) -> None:
    """Stage every member of the job's archive as an object of its own, with an entry each.

    Runs once per planning; a worker taking over re-stages members (same keys, same bytes) and
    inserts no entry twice (deterministic sequence numbers, ignore_conflicts). A member whose data
    breaks a limit while streaming (sizes can lie) fails the whole job with the reason.
    """
    from storage.archives import ArchiveRefused, iter_archive
    from storage.services import archive_limits

    store = object_store()
    with _scratch() as folder:
        archive = folder / "archive"
        store.download_to(job.params["archive_key"], archive)
        entries: list[IngestEntry] = []
        try:
            for seq, member in enumerate(iter_archive(archive, limits=archive_limits())):
                part = folder / "member"
                with member.open() as stream, part.open("wb") as out:
                    shutil.copyfileobj(stream, out, 1024 * 1024)
                key = f"staging/job-{job.pk}/{seq}"
                store.put_file(key, part, content_type="application/octet-stream")
                entries.append(
                    IngestEntry(job=job, seq=seq, name=member.name, source={"kind": "staged", "key": key})
                )
                if len(entries) == 1000:
                    IngestEntry.objects.bulk_create(entries, ignore_conflicts=True)
                    entries = []
        except ArchiveRefused as exc:
            raise ArchiveRefusedError(f"archive_{exc.code}: {exc.message}") from None
        IngestEntry.objects.bulk_create(entries, ignore_conflicts=True)


class ArchiveRefusedError(RuntimeError):
    """An archive's data broke a limit its headers did not show; the job fails with the reason."""


def bucket_discover(job: Job) -> None:
    """List the bucket a page at a time and add an entry for every key that is new or changed.

    Idempotent under takeover: entries get deterministic sequence numbers (listing order) and are
    inserted with ignore_conflicts, so a worker that re-runs this after a crash adds nothing twice.
    An unchanged key (same ETag and size as the last sync recorded) costs one listing row and one
    indexed lookup, no download. Nothing is ever deleted.
    """
    source = BucketSource.objects.get(id=job.params["bucket_source_id"])
    client = bucket_client(source)
    seq = 0
    page: list[ObjectInfo] = []
    for info in iter_bucket(client, source.bucket, source.prefix):
        if not info.key.endswith("/"):  # folder markers are not files
            page.append(info)
        if len(page) == 1000:
            seq = _add_changed(job, source, page, seq)
            page = []
    _add_changed(job, source, page, seq)


def _add_changed(job: Job, source: BucketSource, page: list[ObjectInfo], seq: int) -> int:
    known = {
        key: (etag, size)
        for key, etag, size in BucketObject.objects.filter(
            source=source, key__in=[info.key for info in page]
        ).values_list("key", "etag", "size")
    }
    entries = []
    for info in page:
        if known.get(info.key) == (info.etag, info.size):
            continue
        source_ref = {"kind": "bucket", "source": source.pk, "key": info.key, "etag": info.etag}
        entries.append(IngestEntry(job=job, seq=seq, name=info.key, source=source_ref))
        seq += 1
    IngestEntry.objects.bulk_create(entries, ignore_conflicts=True)
    return seq
