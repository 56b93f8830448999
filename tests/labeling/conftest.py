"""A project with a linked dataset holding an item of every modality, and a schema using every tool."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from labeling.models import Task
from projects import jobs
from projects.models import Job
from tests.conftest import World
from tests.factories import DatasetFactory, ItemFactory
from tests.labeling.modelserver import ModelServers, Serve

API = "/api/v1"

SPEC: dict[str, Any] = {
    "settings": {"classification": "single", "out_of_bounds": "reject"},
    "classes": [
        {"name": "vehicle", "color": "#888888", "tools": ["bbox"]},
        {
            "name": "car",
            "color": "#ff0000",
            "hotkey": "c",
            "parent": "vehicle",
            "tools": ["bbox", "rotated_bbox", "polygon", "polyline", "mask", "video_track"],
            "attributes": [
                {"name": "occluded", "type": "bool", "required": True},
                {"name": "make", "type": "enum", "options": ["audi", "bmw", "other"], "default": "other"},
                {"name": "doors", "type": "int", "min": 2, "max": 5},
            ],
        },
        {"name": "truck", "color": "#aa0000", "tools": ["bbox", "polygon"]},
        {
            "name": "person",
            "color": "#00ff00",
            "tools": ["keypoints", "bbox"],
            "skeleton": {"keypoints": ["head", "left_hand", "right_hand"], "edges": [[0, 1], [0, 2]]},
        },
        {"name": "sunny", "color": "#ffff00", "tools": ["classification"]},
        {"name": "org", "color": "#0000ff", "tools": ["span"]},
        {"name": "speech", "color": "#00ffff", "tools": ["time_segment", "transcription"]},
        {"name": "drives", "color": "#ff00ff", "tools": ["relation"]},
        {"name": "box3d", "color": "#123456", "tools": ["cuboid"]},
    ],
}

META = {
    "image": {"width": 640, "height": 480, "format": "JPEG"},
    "text": {"length": 120, "lines": 3, "encoding": "utf-8"},
    "audio": {"duration_s": 10.0, "sample_rate": 16000, "channels": 1},
    "video": {
        "duration_s": 5.0,
        "fps": 25.0,
        "frames": 125,
        "frames_estimated": False,
        "width": 1280,
        "height": 720,
    },
    "pointcloud": {"format": "pcd", "points": 1000, "bounds": {"min": [-10, -10, -2], "max": [10, 10, 3]}},
    "dicom": {"rows": 512, "columns": 256, "frames": 1},
}
NAMES = {
    "image": "street/0001.jpg",
    "text": "news/article.txt",
    "audio": "calls/call.wav",
    "video": "drive/clip.mp4",
    "pointcloud": "lidar/sweep.pcd",
    "dicom": "scans/ct.dcm",
}
MEDIA_TYPES = {
    "image": "image/jpeg",
    "text": "text/plain",
    "audio": "audio/wav",
    "video": "video/mp4",
    "pointcloud": "application/x-pcd",
    "dicom": "application/dicom",
}


@dataclass
class Labeled:
    world: World
    tasks: dict[str, int]  # modality → task id
    items: dict[str, int]

    def url(self, path: str) -> str:
        return f"{API}/projects/{self.world.project.id}{path}"


def publish(world: World, spec: dict[str, Any], **extra: Any) -> Any:
    return world.client("manager").post(
        f"{API}/projects/{world.project.id}/schemas", {"spec": spec, **extra}, format="json"
    )


@pytest.fixture
def objects_dir(settings: Any, tmp_path: Path) -> Path:
    settings.LOUPE_STORAGE = "local"
    settings.LOUPE_OBJECTS_DIR = tmp_path / "objects"
    return Path(settings.LOUPE_OBJECTS_DIR)


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Starts model servers on 127.0.0.1 (tests.labeling.modelserver); stopped after the test."""
    servers = ModelServers()
    yield servers.start
    servers.close()


def run(job_id: int) -> Job:
    """Run a job to the end as a worker would (tests do not run on-commit hooks)."""
    try:
        while jobs.job_execute(job_id=job_id) == "sliced":
            pass
    except Exception:  # noqa: S110  (the job records its failure; the test reads it)
        pass
    return Job.objects.get(id=job_id)


@pytest.fixture
def labeled(world: World, objects_dir: Path) -> Labeled:
    dataset = DatasetFactory(organization=world.org)
    dataset.projects.add(world.project)
    items = {
        modality: ItemFactory(
            dataset=dataset,
            name=NAMES[modality],
            modality=modality,
            media_type=MEDIA_TYPES[modality],
            meta=meta,
        ).pk
        for modality, meta in META.items()
    }
    response = publish(world, SPEC)
    assert response.status_code == 201, response.content
    created = world.client("manager").post(f"{API}/projects/{world.project.id}/tasks", {}, format="json")
    assert created.status_code == 200 and created.json()["created"] == len(items), created.content
    tasks = dict(Task.objects.filter(project=world.project).values_list("item__modality", "id"))
    return Labeled(world=world, tasks=tasks, items=items)
