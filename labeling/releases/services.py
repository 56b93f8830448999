"""Cutting releases and asking for their exports; reading a release the caller may see."""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Max, QuerySet

from labeling.formats import FORMAT_NAMES, get_format
from labeling.models import Release, ReleaseExport, ReleaseItem, ReleaseState, TaskState
from labeling.releases.select import filter_normalize
from labeling.releases.splits import DEFAULT_RATIOS, normalize_ratios
from labeling.services import _require_schema, parsed_schema
from projects.access import ProjectAccess, ProjectAction, project_access
from projects.audit import audit_record
from projects.exceptions import Conflict, InvalidInput, NotFound, SchemaViolation
from projects.jobs import job_start
from projects.models import Job, JobState, Organization, Project
from storage.models import Dataset
from storage.objects import object_store

_SPLIT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,15}$")


def _problems(problems: list[dict[str, str]]) -> None:
    if problems:
        raise SchemaViolation(
            "The release's filter or splits are not valid.", code="release_invalid", errors=problems
        )


def _check_filter(project: Project, raw: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    problems: list[dict[str, str]] = []
    for i, state in enumerate(raw.get("states") or []):
        if state not in TaskState.values:
            problems.append({"path": f"filter.states[{i}]", "code": "unknown_state", "message": f"{state!r}"})
    linked = set(Dataset.objects.filter(projects=project).values_list("id", flat=True))
    for i, dataset in enumerate(raw.get("datasets") or []):
        if dataset not in linked:
            problems.append(
                {"path": f"filter.datasets[{i}]", "code": "unknown_dataset",
                 "message": f"Dataset {dataset} is not linked to this project."}
            )  # fmt: skip
    for i, name in enumerate(raw.get("classes") or []):
        if name not in class_names:
            problems.append(
                {"path": f"filter.classes[{i}]", "code": "unknown_class",
                 "message": f"{name!r} is not a class of the current schema."}
            )  # fmt: skip
    if raw.get("only_with_classes") and not raw.get("classes"):
        problems.append(
            {"path": "filter.only_with_classes", "code": "needs_classes", "message": "Name the classes."}
        )
    _problems(problems)
    return filter_normalize(raw)


def _check_splits(raw: dict[str, Any]) -> dict[str, Any]:
    ratios = raw.get("ratios") or DEFAULT_RATIOS
    problems: list[dict[str, str]] = []
    for name, ratio in ratios.items():
        if not _SPLIT_NAME.match(name):
            problems.append(
                {"path": f"splits.ratios.{name}", "code": "bad_name",
                 "message": "Split names are 1-16 lowercase letters, digits, - or _."}
            )  # fmt: skip
        if not 0 < ratio <= 1:
            problems.append({"path": f"splits.ratios.{name}", "code": "bad_ratio", "message": "From 0 to 1."})
    if abs(sum(ratios.values()) - 1) > 1e-6:
        problems.append(
            {"path": "splits.ratios", "code": "ratios_sum", "message": "The ratios must sum to 1."}
        )
    if len(ratios) > 10:
        problems.append({"path": "splits.ratios", "code": "too_many", "message": "At most 10 splits."})
    _problems(problems)
    return {
        "ratios": dict(normalize_ratios(ratios)),
        "stratify": bool(raw.get("stratify", False)),
        "seed": str(raw.get("seed", "")),
    }


def release_create(
    *,
    actor: User,
    access: ProjectAccess,
    name: str,
    notes: str = "",
    filter: dict[str, Any] | None = None,
    splits: dict[str, Any] | None = None,
    parent: int | str | None = "latest",
) -> Release:
    """Number a new release and start the job that freezes it (labeling.releases.build)."""
    access.require(ProjectAction.RELEASES_CREATE)
    project = access.project
    schema = _require_schema(project.pk)
    selection = _check_filter(project, filter or {}, list(parsed_schema(schema).classes))
    split_config = _check_splits(splits or {})
    with transaction.atomic():
        Project.objects.select_for_update().filter(id=project.pk).first()  # numbers are handed in turn
        releases = Release.objects.filter(project=project)
        if parent == "latest":
            parent_release = releases.filter(state=ReleaseState.READY).order_by("-version").first()
        elif parent is None:
            parent_release = None
        else:
            parent_release = releases.filter(version=parent).first()
            if parent_release is None:
                raise NotFound("Parent release not found.", parent=parent)
            if parent_release.state != ReleaseState.READY:
                raise Conflict("The parent release is not ready.", code="release_not_ready", parent=parent)
        version = (releases.aggregate(v=Max("version"))["v"] or 0) + 1
        release = Release.objects.create(
            project=project,
            version=version,
            name=name,
            notes=notes,
            filter=selection,
            splits=split_config,
            parent=parent_release,
            schema_version=schema.version,
            created_by=actor,
        )
        audit_record(
            actor=actor,
            verb="release.create",
            obj=release,
            project=project,
            organization=Organization(id=project.organization_id),
            changes={"version": version, "name": name, "filter": selection, "splits": split_config},
        )
        release.job = job_start(
            kind="labeling.release_build",
            actor=actor,
            organization=project.organization,
            project=project,
            params={"release_id": release.pk},
        )
        release.save(update_fields=["job"])
    return release


def release_state(release: Release, job_state: str | None) -> str:
    """`failed` for a release whose build job failed or was cancelled (its number stays used)."""
    if release.state == ReleaseState.BUILDING and job_state in (JobState.FAILED, JobState.CANCELLED):
        return ReleaseState.FAILED
    return release.state


def releases_of(access: ProjectAccess) -> QuerySet[Release]:
    access.require(ProjectAction.RELEASES_VIEW)
    return Release.objects.filter(project_id=access.project.pk).select_related("parent", "job")


def release_get(
    *, user: User, release_id: int, action: ProjectAction = ProjectAction.RELEASES_VIEW
) -> tuple[Release, ProjectAccess]:
    """A release of a project the caller may see (404 otherwise), and the caller's access."""
    project_id = Release.objects.filter(id=release_id).values_list("project_id", flat=True).first()
    if project_id is None:
        raise NotFound("Release not found.", release_id=release_id)
    access = project_access(user=user, project_id=project_id)
    access.require(ProjectAction.RELEASES_VIEW).require(action)
    release = Release.objects.select_related("parent", "job", "project").get(id=release_id)
    return release, access


def release_ready(release: Release) -> None:
    if release.state != ReleaseState.READY:
        raise Conflict(
            "The release is not ready yet.",
            code="release_not_ready",
            state=release_state(release, release.job.state if release.job else None),
        )


def manifest_download(release: Release) -> dict[str, Any]:
    release_ready(release)
    expires = settings.LOUPE_URL_EXPIRES_S
    filename = f"release-{release.project_id}-{release.version}-manifest.jsonl"
    return {
        "url": object_store().url(release.manifest_key, expires_s=expires, filename=filename),
        "expires_in": expires,
        "filename": filename,
        "size": release.manifest_size,
        "sha256": release.manifest_sha256,
    }


# --- Exports -----------------------------------------------------------------------------------


def export_request(
    *, actor: User, access: ProjectAccess, release: Release, format: str, include_media: bool
) -> tuple[ReleaseExport, bool]:
    """The release's export in this format: the existing one (made once, a release never changes)
    unless it failed, else a new export job. Returns (export, created)."""
    access.require(ProjectAction.RELEASES_EXPORT)
    if format not in FORMAT_NAMES or not get_format(format).can_export:
        raise InvalidInput(
            f"{format!r} is not a format Loupe exports.", field="format", formats=list(FORMAT_NAMES)
        )
    release_ready(release)
    with transaction.atomic():
        export = (
            ReleaseExport.objects.select_for_update(of=("self",))
            .select_related("job")
            .filter(release=release, format=format, include_media=include_media)
            .first()
        )
        if export is not None and (
            export.job is None or export.job.state not in (JobState.FAILED, JobState.CANCELLED)
        ):
            return export, False
        if export is None:
            try:
                with transaction.atomic():
                    export = ReleaseExport.objects.create(
                        release=release, format=format, include_media=include_media, created_by=actor
                    )
            except IntegrityError:  # asked twice at once: the other request made it
                return ReleaseExport.objects.select_related("job").get(
                    release=release, format=format, include_media=include_media
                ), False
        export.job = job_start(
            kind="labeling.release_export",
            actor=actor,
            organization=access.project.organization,
            project=access.project,
            params={"export_id": export.pk},
        )
        export.save(update_fields=["job"])
    return export, True


def export_get(*, release: Release, export_id: int) -> ReleaseExport:
    export = ReleaseExport.objects.select_related("job").filter(id=export_id, release=release).first()
    if export is None:
        raise NotFound("Export not found.", export_id=export_id)
    return export


def export_state(export: ReleaseExport) -> str:
    return export.job.state if export.job is not None else JobState.QUEUED


def export_download(export: ReleaseExport) -> dict[str, Any] | None:
    """A fresh short-lived link to a finished export (null until it is ready)."""
    if not export.key or export_state(export) != JobState.SUCCEEDED:
        return None
    expires = settings.LOUPE_URL_EXPIRES_S
    return {
        "url": object_store().url(export.key, expires_s=expires, filename=export.filename),
        "expires_in": expires,
        "filename": export.filename,
        "size": export.size,
        "sha256": export.sha256,
    }


def job_of(job: Job | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {
        "id": job.pk,
        "state": job.state,
        "done": job.done,
        "total": job.total,
        "progress": (job.done / job.total)
        if job.total
        else (1.0 if job.state == JobState.SUCCEEDED else None),
        "failure": job.failure,
    }


# --- Streaming read for pipelines ---------------------------------------------------------------


def items_lines(release: Release, *, split: str | None = None) -> Iterator[bytes]:
    """The release's items as JSON Lines, in item order, each with a short-lived media URL; read
    from the database a few thousand rows at a time while the response is being sent."""
    release_ready(release)
    store, expires = object_store(), settings.LOUPE_URL_EXPIRES_S
    rows = ReleaseItem.objects.filter(release=release)
    if split:
        rows = rows.filter(split=split)
    fields = (
        "item_id", "name", "modality", "media_type", "sha256", "size", "split", "source", "annotation_id",
        "annotation_version", "schema_version", "meta", "regions", "blob_key",
    )  # fmt: skip
    names = ("item", *fields[1:8], "annotation", *fields[9:13])
    for row in rows.order_by("item_id").values_list(*fields).iterator(chunk_size=2000):
        record = dict(zip(names, row[:-1], strict=True))
        record["url"] = store.url(row[-1], expires_s=expires, filename=posixpath.basename(row[1]))
        yield (json.dumps(record, ensure_ascii=False) + "\n").encode()
