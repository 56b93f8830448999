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
from storage.models import Blob, BucketObject, BucketSource, EntryState, IngestEntry, Item
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
class Prepared:
    """What the slow part learnt about one entry, for the transaction to record."""

    entry_id: int
    name: str
    rejected: Rejected | None = None
    sha256: str = ""
    size: int = 0
    media_type: str = ""
    modality: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    phash: int | None = None
    thumb_sha256: str = ""
    thumb_size: int = 0
    bucket_state: tuple[int, str, str, int] | None = None  # (source id, key, etag, size)


# --- Fetching an entry's bytes -----------------------------------------------------------------


@dataclass(frozen=True)
class BucketReader:
    """A bucket source with its client, made once per chunk and shared by the worker threads."""

    source: BucketSource
    client: Any


def _materialize(
    entry: IngestEntry, dest: Path, readers: dict[int, BucketReader]
) -> tuple[int, str, str, int] | None:
    """Write the entry's bytes to ``dest``; for bucket entries return their (source, key, etag, size)."""
    source = entry.source
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


def prepare_entry(entry: IngestEntry, readers: dict[int, BucketReader]) -> Prepared:
    """Fetch, verify, probe, thumbnail and store one entry's bytes. Never raises for a bad file.

    Runs in worker threads, so it touches no database: whether bytes are already stored is asked
    of the store itself (the truth a Blob row only records).
    """
    from storage import media

    prepared = Prepared(entry_id=entry.pk, name=entry.name)
    store = object_store()
    with _scratch() as folder:
        path = folder / "data"
        try:
            prepared.bucket_state = _materialize(entry, path, readers)
            prepared.sha256, prepared.size = sha256_file(path)
            expected_size = entry.expect.get("size")
            if expected_size is not None and expected_size != prepared.size:
                raise Rejected("size_mismatch", f"expected {expected_size} bytes, received {prepared.size}")
            expected_sha = entry.expect.get("sha256")
            if expected_sha and expected_sha.lower() != prepared.sha256:
                raise Rejected(
                    "checksum_mismatch", "the sha256 of the received bytes differs from the declared one"
                )
            if prepared.size > settings.LOUPE_INGEST_MAX_FILE_BYTES:
                raise Rejected("too_large", f"{prepared.size} bytes exceeds the limit")
            probe = media.probe_file(path, filename=entry.name)
            prepared.modality, prepared.media_type, prepared.meta = (
                probe.modality,
                probe.media_type,
                probe.meta,
            )
            if probe.modality == "image":
                prepared.phash = media.image_phash(path)
            _store_once(store, blob_key(prepared.sha256), path, prepared.size, prepared.media_type)
            thumbnail = media.make_thumbnail(path, probe, max_side=THUMBNAIL_MAX_SIDE)
            if thumbnail is not None:
                thumb_path = folder / "thumb.webp"
                thumb_path.write_bytes(thumbnail)
                prepared.thumb_sha256, prepared.thumb_size = sha256_file(thumb_path)
                _store_once(
                    store, blob_key(prepared.thumb_sha256), thumb_path, prepared.thumb_size, "image/webp"
                )
        except Rejected as exc:
            prepared.rejected = exc
        except media.ProbeError as exc:
            prepared.rejected = Rejected(exc.code, str(exc))
        except OSError as exc:
            prepared.rejected = Rejected("unreadable", f"{type(exc).__name__}: {exc}")
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
        good = [p for p in prepared if p.rejected is None]
        blobs = _blobs_by_sha(
            [(p.sha256, p.size, p.media_type) for p in good]
            + [(p.thumb_sha256, p.thumb_size, "image/webp") for p in good if p.thumb_sha256]
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
            if p.rejected is not None:
                entry.state, entry.error_code, entry.error_message = (
                    EntryState.REJECTED,
                    p.rejected.code,
                    p.rejected.message,
                )
                errors.append(ChunkError(item=p.name, code=p.rejected.code, message=p.rejected.message))
                counts["rejected"] += 1
                continue
            fields = {
                "modality": p.modality, "media_type": p.media_type, "size": p.size,
                "meta": {**p.meta, **({"user": entry.user_meta} if entry.user_meta else {})},
                "primary": blobs[p.sha256],
                "thumbnail": blobs.get(p.thumb_sha256) if p.thumb_sha256 else None,
                "phash": p.phash, "ingest_job": job,
            }  # fmt: skip
            item = existing.get(p.name)
            if item is None:
                item = Item(dataset_id=dataset_id, name=p.name, **fields)
                to_create.append(item)
                entry.state = EntryState.CREATED
            elif item.primary_id == blobs[p.sha256].pk and item.meta == fields["meta"]:
                entry.state, entry.item = EntryState.UNCHANGED, item
            else:
                for name, value in fields.items():
                    setattr(item, name, value)
                to_update.append(item)
                entry.state, entry.item = EntryState.UPDATED, item
            counts[str(entry.state)] += 1
        created = Item.objects.bulk_create(to_create)
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
        IngestEntry.objects.bulk_update(entries.values(), ["state", "item", "error_code", "error_message"])
        _record_bucket_state([p.bucket_state for p in good if p.bucket_state is not None])
        duplicates = _exact_duplicates(dataset_id, [(p.name, p.sha256) for p in good])
        return ChunkOutcome(
            items=len(prepared), errors=errors, result={**counts, "exact_duplicates": duplicates}
        )

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
