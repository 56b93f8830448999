"""Writes of the storage app: datasets, bucket sources, and starting ingest jobs.

Every ingest path validates its whole request first, does its slow part (staging uploaded bytes
in the object store) before any transaction, then creates the job and its entries in one
transaction with the audit event. A failed request leaves no rows behind; staged objects of a
request that failed are removed by the staging sweeper.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core import signing
from django.db import IntegrityError, transaction

from projects.access import OrgAction, org_access
from projects.audit import audit_record, diff_fields, snapshot
from projects.exceptions import InvalidInput, NameTaken, NotFound, PermissionDenied
from projects.jobs import job_start
from projects.models import Job, Membership, OrgRole, Project, ProjectMember, ProjectRole
from storage import hooks
from storage.access import DatasetAccess
from storage.models import BucketSource, Dataset, IngestEntry
from storage.objects import S3ObjectStore, UploadTarget, object_store, safe_key

UPLOAD_SALT = "loupe.upload"
_DATASET_FIELDS = ("name", "description")


def _linkable_projects(
    actor: User, organization_id: int, project_ids: list[int], *, org_admin: bool
) -> list[Project]:
    projects = list(Project.objects.filter(organization_id=organization_id, id__in=project_ids))
    if len(projects) != len(set(project_ids)):
        raise NotFound("Project not found.", project_ids=sorted(set(project_ids) - {p.pk for p in projects}))
    if not org_admin:
        managed = set(
            ProjectMember.objects.filter(
                user=actor, role=ProjectRole.MANAGER, project__in=projects
            ).values_list("project_id", flat=True)
        )
        if managed != {p.pk for p in projects}:
            raise PermissionDenied("You may link a dataset only to projects you manage.")
    return projects


@transaction.atomic
def dataset_create(
    *, actor: User, organization_id: int, name: str, description: str = "", projects: list[int] | None = None
) -> Dataset:
    """Org owners/admins create datasets; a project manager creates one linked to its project."""
    access = org_access(user=actor, organization_id=organization_id)
    org_admin = access.can(OrgAction.PROJECT_CREATE)
    if not org_admin and not projects:
        raise PermissionDenied("Link the dataset to a project you manage, or ask an organization admin.")
    linked = _linkable_projects(actor, organization_id, projects or [], org_admin=org_admin)
    try:
        with transaction.atomic():
            dataset = Dataset.objects.create(
                organization=access.organization, name=name, description=description, created_by=actor
            )
    except IntegrityError:
        raise NameTaken("A dataset with this name exists in the organization.", field="name") from None
    dataset.projects.set(linked)
    hooks.items_added(dataset.pk)
    audit_record(
        actor=actor, verb="dataset.create", obj=dataset, organization=access.organization,
        changes={**snapshot(dataset, _DATASET_FIELDS), "projects": sorted(p.pk for p in linked)},
    )  # fmt: skip
    return dataset


@transaction.atomic
def dataset_update(*, actor: User, access: DatasetAccess, **fields: Any) -> Dataset:
    access.require_manage()
    dataset = Dataset.objects.select_for_update().get(id=access.dataset.pk)
    changes: dict[str, Any] = {}
    project_ids = fields.pop("projects", None)
    if project_ids is not None:
        org_admin = Membership.objects.filter(
            organization_id=dataset.organization_id, user=actor, role__in=(OrgRole.OWNER, OrgRole.ADMIN)
        ).exists()
        before = set(dataset.projects.values_list("id", flat=True))
        changed = before.symmetric_difference(project_ids)
        _linkable_projects(actor, dataset.organization_id, list(changed), org_admin=org_admin)
        if changed:
            dataset.projects.set(project_ids)
            changes["projects"] = [sorted(before), sorted(project_ids)]
            if set(project_ids) - before:
                hooks.items_added(dataset.pk)
    before_fields = snapshot(dataset, _DATASET_FIELDS)
    for name, value in fields.items():
        setattr(dataset, name, value)
    changes.update(diff_fields(before_fields, snapshot(dataset, _DATASET_FIELDS)))
    if not changes:
        return dataset
    try:
        with transaction.atomic():
            dataset.save()
    except IntegrityError:
        raise NameTaken("A dataset with this name exists in the organization.", field="name") from None
    audit_record(
        actor=actor, verb="dataset.update", obj=dataset, organization=dataset.organization, changes=changes
    )
    return dataset


# --- Ingest ------------------------------------------------------------------------------------


def _start_ingest(
    *,
    actor: User,
    access: DatasetAccess,
    how: str,
    entries: list[IngestEntry],
    params: dict[str, Any] | None = None,
) -> Job:
    """Create the job and its entries together; the job is enqueued when this commits."""
    dataset = access.dataset
    with transaction.atomic():
        job = job_start(
            kind="storage.ingest", actor=actor, organization=dataset.organization, project=None,
            params={"dataset_id": dataset.pk, "how": how, **(params or {})},
        )  # fmt: skip
        for seq, entry in enumerate(entries):
            entry.job, entry.seq = job, seq
        IngestEntry.objects.bulk_create(entries, batch_size=2000)
        audit_record(
            actor=actor, verb=f"dataset.ingest.{how}", obj=dataset, organization=dataset.organization,
            changes={"job": job.pk, "files": len(entries)},
        )  # fmt: skip
    return job


def _clean_name(name: str) -> str:
    """An item name from a client: a relative POSIX path with no tricks."""
    cleaned = name.replace("\\", "/").strip().lstrip("/")
    parts = [part for part in cleaned.split("/") if part not in ("", ".")]
    if not parts or ".." in parts or "\x00" in cleaned or len(cleaned) > 1024:
        raise InvalidInput("Invalid file name.", name=name[:200])
    return "/".join(parts)


def _staging_key(name: str) -> str:
    return safe_key(f"staging/{uuid.uuid4().hex}/{Path(name).name or 'file'}")


@dataclass(frozen=True)
class StagedFile:
    name: str
    path: Path
    content_type: str
    meta: dict[str, Any]


def ingest_upload(*, actor: User, access: DatasetAccess, files: list[StagedFile]) -> Job:
    """Direct multipart upload: the files were streamed to temporary files by Django; stage them."""
    access.require_manage()
    if not files:
        raise InvalidInput("Send at least one file.", field="files")
    names = [_clean_name(f.name) for f in files]
    store = object_store()
    entries = []
    for upload, name in zip(files, names, strict=True):
        key = _staging_key(name)
        store.put_file(key, upload.path, content_type=upload.content_type or "application/octet-stream")
        entries.append(IngestEntry(name=name, source={"kind": "staged", "key": key}, user_meta=upload.meta))
    return _start_ingest(actor=actor, access=access, how="upload", entries=entries)


def upload_targets_issue(
    *, actor: User, access: DatasetAccess, files: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Presigned browser uploads: one target per file, limited to its declared size and type."""
    access.require_manage()
    issued = []
    store = object_store()
    for spec in files:
        name = _clean_name(spec["name"])
        if spec["size"] > settings.LOUPE_INGEST_MAX_FILE_BYTES:
            raise InvalidInput("File too large.", name=name, max_bytes=settings.LOUPE_INGEST_MAX_FILE_BYTES)
        key = _staging_key(name)
        ticket: dict[str, Any] = {"k": key, "d": access.dataset.pk, "n": name, "s": spec["size"]}
        if isinstance(store, S3ObjectStore) and spec["size"] > settings.LOUPE_MULTIPART_UPLOAD_BYTES:
            # Large files go in parts: each part a presigned PUT; the client sends back the ETags.
            part_size = settings.LOUPE_MULTIPART_PART_BYTES
            s3_upload, urls = store.multipart_start(
                key, size=spec["size"], part_size=part_size, content_type=spec["content_type"],
                expires_s=settings.LOUPE_URL_EXPIRES_S,
            )  # fmt: skip
            ticket["mp"] = s3_upload
            issued.append({
                "name": name, "upload_id": signing.dumps(ticket, salt=UPLOAD_SALT, compress=True),
                "method": "MULTIPART", "url": "", "fields": {}, "part_size": part_size,
                "part_urls": urls, "expires_at": time.time() + settings.LOUPE_URL_EXPIRES_S,
            })  # fmt: skip
            continue
        target: UploadTarget = store.upload_target(
            key,
            max_bytes=spec["size"],
            content_type=spec["content_type"],
            expires_s=settings.LOUPE_URL_EXPIRES_S,
        )
        upload_id = signing.dumps(ticket, salt=UPLOAD_SALT, compress=True)
        issued.append({"name": name, "upload_id": upload_id, "method": target.method, "url": target.url,
                       "fields": target.fields, "expires_at": target.expires_at})  # fmt: skip
    return issued


def ingest_uploaded(*, actor: User, access: DatasetAccess, uploads: list[dict[str, Any]]) -> Job:
    """Completion of presigned uploads: each file is verified (size, sha256) by the ingest job.

    Multipart uploads are joined here first (network I/O, before any transaction); a part list
    S3 refuses is a 400 and nothing is recorded.
    """
    access.require_manage()
    entries = []
    tickets = []
    for upload in uploads:
        try:
            ticket = signing.loads(upload["upload_id"], salt=UPLOAD_SALT, max_age=7 * 24 * 3600)
        except signing.BadSignature:
            raise InvalidInput("Unknown or expired upload_id.", field="upload_id") from None
        if ticket["d"] != access.dataset.pk:
            raise InvalidInput("This upload belongs to another dataset.", field="upload_id")
        if ticket.get("mp") and not upload.get("parts"):
            raise InvalidInput("A multipart upload needs its parts (number, etag).", field="parts")
        tickets.append(ticket)
    store = object_store()
    for upload, ticket in zip(uploads, tickets, strict=True):
        if ticket.get("mp") and isinstance(store, S3ObjectStore):
            from botocore.exceptions import ClientError

            try:
                store.multipart_complete(ticket["k"], upload_id=ticket["mp"], parts=upload["parts"])
            except ClientError as exc:
                raise InvalidInput(
                    "The store refused the parts of this upload.", field="parts", name=ticket["n"],
                    reason=exc.response.get("Error", {}).get("Code", ""),
                ) from None  # fmt: skip
    for upload, ticket in zip(uploads, tickets, strict=True):
        entries.append(
            IngestEntry(
                name=ticket["n"],
                source={"kind": "staged", "key": ticket["k"]},
                expect={"size": ticket["s"], "sha256": upload["sha256"].lower()},
                user_meta=upload.get("meta") or {},
            )
        )  # fmt: skip
    return _start_ingest(actor=actor, access=access, how="presigned", entries=entries)


def ingest_manifest(
    *, actor: User, access: DatasetAccess, records: list[dict[str, Any]], bucket_source_id: int | None
) -> Job:
    """Manifest rows name a key of a registered bucket or a URL, with optional name and metadata.

    Re-submitting the same manifest is harmless: names already in the dataset with the same bytes
    end as ``unchanged``.
    """
    access.require_manage()
    source = None
    if bucket_source_id is not None:
        source = BucketSource.objects.filter(id=bucket_source_id, dataset=access.dataset).first()
        if source is None:
            raise NotFound("Bucket source not found.", bucket_source=bucket_source_id)
    entries = []
    for row in records:
        if "parts" in row:
            parts = {}
            for role, part in row["parts"].items():
                if "key" in part and source is None:
                    raise InvalidInput("Parts with a key need bucket_source.", field="bucket_source")
                parts[role] = (
                    {"kind": "bucket", "source": source.pk, "key": part["key"]}
                    if "key" in part and source is not None
                    else {"kind": "url", "url": part["url"]}
                )
            ref: dict[str, Any] = {"kind": "multi", "parts": parts, "primary": row["primary"]}
            entries.append(
                IngestEntry(name=_clean_name(row["name"]), source=ref, user_meta=row.get("meta") or {})
            )
            continue
        if "key" in row:
            if source is None:
                raise InvalidInput("Rows with a key need bucket_source.", field="bucket_source")
            ref = {"kind": "bucket", "source": source.pk, "key": row["key"]}
            default_name = row["key"]
        else:
            ref = {"kind": "url", "url": row["url"]}
            default_name = row["url"].split("://", 1)[-1].split("?", 1)[0]
        name = _clean_name(row.get("name") or default_name)
        entries.append(IngestEntry(name=name, source=ref, user_meta=row.get("meta") or {}))
    return _start_ingest(actor=actor, access=access, how="manifest", entries=entries)


def archive_check(path: Path) -> None:
    """Refuse a hostile archive before anything is written: its headers are all read up front."""
    from storage.archives import ArchiveRefused, iter_archive

    try:
        next(iter_archive(path, limits=archive_limits()), None)
    except ArchiveRefused as exc:
        raise InvalidInput(exc.message, code=f"archive_{exc.code}") from None


def archive_limits() -> Any:
    from storage.archives import ArchiveLimits

    return ArchiveLimits(
        max_entries=settings.LOUPE_ARCHIVE_MAX_ENTRIES,
        max_total_bytes=settings.LOUPE_ARCHIVE_MAX_BYTES,
        max_member_bytes=settings.LOUPE_INGEST_MAX_FILE_BYTES,
    )


def ingest_archive(*, actor: User, access: DatasetAccess, path: Path, filename: str) -> Job:
    """A zip or tar archive: checked now, its members staged and ingested by the job."""
    access.require_manage()
    archive_check(path)
    key = _staging_key(filename or "archive")
    object_store().put_file(key, path, content_type="application/octet-stream")
    return _start_ingest(
        actor=actor,
        access=access,
        how="archive",
        entries=[],
        params={"discover": "archive", "archive_key": key},
    )


def bucket_endpoint_check(endpoint_url: str) -> None:
    """An S3 endpoint a user names is a URL the workers will connect to: public addresses only,
    unless the operator allowed the network (LOUPE_URL_FETCH_ALLOWED_NETWORKS). Checked when the
    source is registered and again when each sync starts."""
    if not endpoint_url:
        return  # AWS itself, through boto3's own endpoint resolution
    from storage.fetch import endpoint_refusal
    from storage.ingest import url_fetch_policy

    refusal = endpoint_refusal(endpoint_url, policy=url_fetch_policy())
    if refusal is not None:
        raise InvalidInput(
            "The endpoint's address is not allowed.", code=f"endpoint_{refusal}", field="endpoint_url"
        )


def bucket_source_create(*, actor: User, access: DatasetAccess, **fields: Any) -> BucketSource:
    access.require_manage()
    bucket_endpoint_check(fields.get("endpoint_url", ""))  # network I/O (DNS): before the transaction
    with transaction.atomic():
        return _bucket_source_record(actor=actor, access=access, fields=fields)


def _bucket_source_record(*, actor: User, access: DatasetAccess, fields: dict[str, Any]) -> BucketSource:
    source = BucketSource.objects.create(dataset=access.dataset, **fields)
    audit_record(
        actor=actor, verb="bucket_source.create", obj=source, organization=access.dataset.organization,
        changes={"bucket": source.bucket, "prefix": source.prefix, "endpoint_url": source.endpoint_url},
    )  # fmt: skip
    return source


def bucket_sync_start(*, actor: User, access: DatasetAccess, source_id: int) -> Job:
    """Start a sync: the job lists the bucket and brings in only new or changed keys."""
    access.require_manage()
    source = BucketSource.objects.filter(id=source_id, dataset=access.dataset).first()
    if source is None:
        raise NotFound("Bucket source not found.", bucket_source=source_id)
    bucket_endpoint_check(source.endpoint_url)
    return _start_ingest(
        actor=actor, access=access, how="bucket_sync", entries=[],
        params={"discover": "bucket", "bucket_source_id": source_id},
    )  # fmt: skip
