"""A project with real image items and labels that went through the workflow, for release tests."""

from __future__ import annotations

import hashlib
import io
from typing import Any

from django.contrib.auth.models import User
from PIL import Image

from labeling.models import Annotation, Release, Task
from storage.models import Blob, Dataset, Item
from storage.objects import object_store
from tests.conftest import World, client_for
from tests.factories import DatasetFactory, MembershipFactory, ProjectMemberFactory, UserFactory
from tests.labeling.conftest import API, run

SCHEMA: dict[str, Any] = {
    "settings": {"classification": "single", "out_of_bounds": "reject"},
    "classes": [
        {"name": "car", "color": "#ff0000", "tools": ["bbox"]},
        {"name": "person", "color": "#00ff00", "tools": ["bbox"]},
        {"name": "bike", "color": "#0000ff", "tools": ["bbox"]},
    ],
}
CLASSES = ["car", "person", "bike"]


def box(rid: str, label: str, x: int, y: int, w: int = 20, h: int = 10) -> dict[str, Any]:
    return {
        "id": rid,
        "type": "bbox",
        "label": label,
        "attributes": {},
        "geometry": {"x": x, "y": y, "width": w, "height": h},
    }


def image_item(dataset: Dataset, n: int, *, size: tuple[int, int] = (64, 48)) -> Item:
    """A real PNG in the object store, with its true sha256."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (n * 7 % 256, n * 13 % 256, n * 29 % 256)).save(buffer, "PNG")
    data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    key = f"blobs/{sha[:2]}/{sha[2:4]}/{sha}"
    object_store().put_bytes(key, data, content_type="image/png")
    blob, _ = Blob.objects.get_or_create(
        sha256=sha, defaults={"size": len(data), "media_type": "image/png", "key": key}
    )
    meta = {
        "width": size[0],
        "height": size[1],
        "format": "PNG",
        "user": {"camera": "rear" if n % 2 else "front"},
    }
    return Item.objects.create(
        dataset=dataset, name=f"frames/{n:04d}.png", modality="image", media_type="image/png",
        size=len(data), primary=blob, meta=meta,
    )  # fmt: skip


class Shop:
    """A project whose tasks are labeled, submitted and reviewed through the API."""

    def __init__(
        self, world: World, items: int = 12, *, review: str = "all", schema: dict[str, Any] = SCHEMA
    ) -> None:
        self.world = world
        manager = world.client("manager")
        assert manager.post(self.url("/schemas"), {"spec": schema}, format="json").status_code == 201
        assert manager.patch(self.url("/workflow"), {"review": review}, format="json").status_code == 200
        self.dataset = DatasetFactory(organization=world.org)
        self.items = [image_item(self.dataset, n) for n in range(items)]
        linked = world.client("owner").patch(
            f"{API}/datasets/{self.dataset.pk}", {"projects": [world.project.pk]}, format="json"
        )
        assert linked.status_code == 200, linked.content

    def add_items(self, first: int, last: int) -> None:
        """More items in the dataset, and their tasks (a manager's "create missing tasks")."""
        for n in range(first, last):
            image_item(self.dataset, n)
        created = self.world.client("manager").post(self.url("/tasks"), {}, format="json")
        assert created.status_code == 200 and created.json()["created"] == last - first, created.content

    def url(self, path: str) -> str:
        return f"{API}/projects/{self.world.project.id}{path}"

    def task_of(self, item: Item) -> Task:
        return Task.objects.get(project=self.world.project, item=item)

    def label_all(self, regions_for: Any, who: str = "annotator", client: Any = None) -> dict[int, int]:
        """The annotator pulls every task and submits `regions_for(item_name)`; task id → annotation id."""
        client = client or self.world.client(who)
        done: dict[int, int] = {}
        while (handed := client.post(self.url("/next"))).status_code == 200:
            body = handed.json()
            name = Task.objects.select_related("item").get(id=body["task"]["id"]).item.name
            submitted = client.post(
                self.url(f"/assignments/{body['assignment']['id']}/submit"),
                {
                    "lease_id": body["assignment"]["lease_id"],
                    "result": regions_for(name),
                    "lead_time_ms": 500,
                },
                format="json",
            )
            assert submitted.status_code in (200, 201), submitted.content
            done[body["task"]["id"]] = submitted.json()["id"]
        return done

    def review(self, annotation_id: int, verdict: str, **extra: Any) -> Any:
        annotation = Annotation.objects.get(id=annotation_id)
        response = self.world.client("reviewer").post(
            self.url(f"/annotations/{annotation_id}/review"),
            {"verdict": verdict, **extra},
            format="json",
            HTTP_IF_MATCH=f'"{annotation.version}"',
        )
        assert response.status_code == 200, response.content
        return response

    def release(self, who: str = "manager", **body: Any) -> Any:
        return self.world.client(who).post(self.url("/releases"), {"name": "r", **body}, format="json")

    def cut(self, **body: Any) -> dict[str, Any]:
        """Create a release and build it to the end; its API representation."""
        response = self.release(**body)
        assert response.status_code == 202, response.content
        release = Release.objects.get(id=response.json()["id"])
        assert release.job_id is not None
        job = run(release.job_id)
        assert job.state == "succeeded", (job.failure, job.result)
        shown = self.world.client("manager").get(f"{API}/releases/{release.pk}")
        assert shown.status_code == 200
        return dict(shown.json())


def another_annotator(world: World, name: str = "annotator2") -> tuple[User, Any]:
    user = UserFactory(username=name)
    MembershipFactory(organization=world.org, user=user)
    ProjectMemberFactory(project=world.project, user=user, role="annotator")
    return user, client_for(user)
