"""Releases on real Celery workers: built and exported by a worker, and a worker killed mid-build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from labeling.models import Annotation, Release, ReleaseExport, ReleaseItem, Task
from projects.models import Job, JobChunk, JobState
from storage.models import Blob, Dataset, Item
from tests.conftest import World
from tests.labeling.conftest import API
from tests.labeling.releases import SCHEMA, box
from tests.projects.test_jobs_on_workers import wait_for
from tests.workers import celery_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

FAST_RECOVERY = {"LOUPE_JOB_STALL_SECONDS": "2", "LOUPE_JOB_RECOVER_INTERVAL": "1"}


def accepted_tasks(world: World, n: int) -> None:
    """`n` accepted image tasks with one accepted annotation each, written in bulk."""
    assert (
        world.client("manager")
        .post(f"{API}/projects/{world.project.id}/schemas", {"spec": SCHEMA}, format="json")
        .status_code
        == 201
    )
    dataset = Dataset.objects.create(organization=world.org, name="frames")
    dataset.projects.add(world.project)
    blobs = Blob.objects.bulk_create(
        Blob(sha256=f"{i:064x}", size=100, media_type="image/png", key=f"blobs/{i:064x}") for i in range(n)
    )
    items = Item.objects.bulk_create(
        Item(dataset=dataset, name=f"frames/{i:05d}.png", modality="image", media_type="image/png",
             meta={"width": 64, "height": 48}, primary=blob)
        for i, blob in enumerate(blobs)
    )  # fmt: skip
    tasks = Task.objects.bulk_create(
        Task(project=world.project, item=item, state="accepted", overlap=1, open_slots=0) for item in items
    )
    now = timezone.now()
    Annotation.objects.bulk_create(
        Annotation(task=task, author=world.users["annotator"], schema_version=1, state="submitted",
                   result=[box("b1", "car", i % 30, 3)], review_status="accepted", submitted_at=now)
        for i, task in enumerate(tasks)
    )  # fmt: skip


def test_a_worker_builds_and_exports_a_release_and_a_killed_build_finishes_exactly(
    world: World, tmp_path: Path
) -> None:
    objects = tmp_path / "objects"
    env = {"LOUPE_OBJECTS_DIR": str(objects), "LOUPE_STORAGE": "local", **FAST_RECOVERY}
    with override_settings(LOUPE_OBJECTS_DIR=objects, LOUPE_STORAGE="local"):
        accepted_tasks(world, 12_000)
        manager = world.client("manager")
        with celery_worker(env=env) as first:
            created = manager.post(
                f"{API}/projects/{world.project.id}/releases", {"name": "big"}, format="json"
            )
            assert created.status_code == 202, created.content
            release_id = created.json()["id"]
            job_id = created.json()["job"]["id"]
            wait_for(lambda: Job.objects.get(id=job_id).chunks_done >= 1, 60, "the first chunk")
            first.kill()
        killed = Job.objects.get(id=job_id)
        assert killed.state == JobState.RUNNING and killed.chunks_done < (killed.chunks_total or 0)
        with celery_worker(beat=True, env=env) as second:
            try:
                wait_for(
                    lambda: manager.get(f"{API}/releases/{release_id}").json()["state"] == "ready",
                    90,
                    "ready",
                )
                asked = manager.post(
                    f"{API}/releases/{release_id}/exports", {"format": "coco"}, format="json"
                )
                assert asked.status_code == 202
                export_url = f"{API}/releases/{release_id}/exports/{asked.json()['id']}"
                shown: dict[str, Any] = wait_for(
                    lambda: (body := manager.get(export_url).json())["state"] == "succeeded" and body,
                    90,
                    "export",
                )
            except AssertionError:
                raise AssertionError("".join(second.log[-60:])) from None
    release = Release.objects.get(id=release_id)
    job = Job.objects.get(id=job_id)
    assert job.attempts >= 2  # taken over after the kill
    assert sorted(JobChunk.objects.filter(job=job).values_list("index", flat=True)) == list(
        range(job.chunks_total or 0)
    )
    entries = ReleaseItem.objects.filter(release=release)
    assert (
        entries.count() == release.counts["items"] == 12_000 == entries.values("item_id").distinct().count()
    )
    export = ReleaseExport.objects.get(id=shown["id"])
    assert (
        shown["download"]["sha256"] == export.sha256 and (objects / export.key).stat().st_size == export.size
    )
