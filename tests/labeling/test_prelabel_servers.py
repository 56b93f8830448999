"""Pre-label jobs through model servers: real HTTP servers on 127.0.0.1, one speaking Loupe's
protocol and one the Label Studio ML backend protocol, reached through the public API (register a
version, start a job) and the job runner. A server failing some requests (500 past the retries, a
timeout, a per-item error) leaves exactly those items with errors and the rest predicted; a re-run
predicts only what failed."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
from django.test import Client
from PIL import Image

from labeling import services
from labeling.models import ModelVersion, Prediction, Task
from projects.models import Job, JobError, JobState
from storage.models import Dataset, Item
from storage.objects import object_store
from tests.conftest import World
from tests.factories import DatasetFactory
from tests.labeling.conftest import API, publish, run
from tests.labeling.modelserver import Answer, Request, Serve
from tests.labeling.test_prelabel_api import image_item

pytestmark = pytest.mark.django_db

SPEC: dict[str, Any] = {
    "classes": [
        {"name": "person_face", "color": "#ff0000", "tools": ["bbox"]},
        {"name": "vehicle", "color": "#00ff00", "tools": ["bbox"]},
    ]
}
PUBLIC_URL = "https://loupe.example.com/"
# The model server client's settings, per version: quick retries, a short timeout.
CLIENT = {"retries": 2, "backoff": 0.01, "max_backoff": 0.1, "timeout": 0.5}


class Site:
    """A project with a schema and a dataset of small images of different sizes, one task each."""

    def __init__(self, world: World, count: int) -> None:
        self.world = world
        assert publish(world, SPEC).status_code == 201
        dataset = cast(Dataset, DatasetFactory(organization=world.org))
        dataset.projects.add(world.project)
        self.items: dict[str, Item] = {}
        for k in range(count):
            picture = Image.new("RGB", (40 + 8 * k, 30 + 6 * k), (20 * k, 90, 200))
            self.items[f"img-{k}.jpg"] = image_item(dataset, f"img-{k}.jpg", picture)
        services.tasks_ensure(world.project.pk)
        by_item = dict(Task.objects.filter(project=world.project).values_list("item_id", "id"))
        self.tasks = {name: by_item[item.pk] for name, item in self.items.items()}  # name → task id
        self.names = {task: name for name, task in self.tasks.items()}

    def url(self, path: str) -> str:
        return f"{API}/projects/{self.world.project.pk}{path}"

    def register(self, **body: Any) -> int:
        payload = {"name": "detector", "version": "1", "task_type": "detection", "modalities": ["image"],
                   "outputs": ["bbox"], **body}  # fmt: skip
        response = self.world.client("manager").post(self.url("/models"), payload, format="json")
        assert response.status_code == 201, response.content
        return int(response.json()["id"])

    def prelabel(self, version: int) -> Job:
        response = self.world.client("manager").post(
            self.url("/prelabel"), {"model_version": version}, format="json"
        )
        assert response.status_code == 202, response.content
        return run(response.json()["id"])

    def errors(self, job: Job) -> dict[str, tuple[str, str]]:
        """Item name → (code, message) of the job's errors."""
        rows = JobError.objects.filter(job=job).values_list("item", "code", "message")
        return {self.names[int(item.removeprefix("task "))]: (code, message) for item, code, message in rows}

    def predictions(self, version: int) -> dict[str, Prediction]:
        found = Prediction.objects.filter(source_id=version)
        counts = Counter(p.task_id for p in found)
        assert set(counts.values()) <= {1}, counts  # never two predictions of one task by one version
        return {self.names[p.task_id]: p for p in found}

    def size(self, name: str) -> tuple[int, int]:
        meta = self.items[name].meta
        return meta["width"], meta["height"]

    def assert_serves(self, url: str, name: str) -> None:
        """``url`` is a link Loupe serves (its public URL + a signed object path) to the item's bytes."""
        assert url.startswith(PUBLIC_URL.rstrip("/") + "/objects/"), url
        response = Client().get(urlsplit(url).path)  # no login: the signature is the key
        assert response.status_code == 200
        with object_store().open(self.items[name].primary.key) as handle:
            assert response.getvalue() == handle.read()


@pytest.fixture
def site(world: World, objects_dir: Path, settings: Any) -> Site:
    settings.LOUPE_MODEL_ALLOWED_NETWORKS = ["127.0.0.0/8"]  # read by model_policy() at each call
    settings.LOUPE_PUBLIC_URL = PUBLIC_URL
    return Site(world, count=7)


# --- Loupe's protocol ------------------------------------------------------------------------------


def test_a_native_server_failing_some_requests_leaves_only_their_items_failed(
    site: Site, serve: Serve
) -> None:
    healthy = threading.Event()

    def faces(request: Request, n: int) -> Answer:
        """A face and a hand per image, in pixels of its size; until healthy: 500 for the batch
        with img-0, no answer in time for img-6, an error of its own for img-2."""
        items = request.body["items"]
        names = {item["name"] for item in items}
        if not healthy.is_set() and "img-0.jpg" in names:
            return 500, {"error": "CUDA out of memory"}
        if not healthy.is_set() and "img-6.jpg" in names:
            server.stop.wait(2)  # past the version's 0.5 s timeout
            return 200, {"results": []}
        results = []
        for item in items:
            if not healthy.is_set() and item["name"] == "img-2.jpg":
                results.append({"key": item["key"], "regions": [], "error": "cannot decode"})
                continue
            width, height = item["meta"]["width"], item["meta"]["height"]
            face = {"id": "f", "type": "bbox", "label": "face", "score": 0.9,
                    "geometry": {"x": 1, "y": 2, "width": width / 2, "height": height / 2}}  # fmt: skip
            hand = {"id": "h", "type": "bbox", "label": "hand", "score": 0.5,
                    "geometry": {"x": 0, "y": 0, "width": 3, "height": 3}}  # fmt: skip
            results.append({"key": item["key"], "regions": [face, hand], "score": 0.9})
        return 200, {"results": results[::-1]}  # matched by key, not position

    server = serve(faces)
    version = site.register(
        kind="http",
        endpoint=server.url,
        labels=["face", "hand"],
        label_map={"face": "person_face"},
        params={"batch_size": 2, "threshold": 0.5, **CLIENT},
    )

    job = site.prelabel(version)

    assert job.state == JobState.SUCCEEDED, job.failure
    assert (job.total, job.done, job.chunks_total) == (7, 7, 4)
    assert job.result == {"predicted": 3, "regions": 3, "dropped_unmapped": 3, "dropped_invalid": 0,
                          "failed": 4}  # fmt: skip
    errors = site.errors(job)
    assert set(errors) == {"img-0.jpg", "img-1.jpg", "img-2.jpg", "img-6.jpg"}
    assert {code for code, _ in errors.values()} == {"prediction_failed"}
    answered_500 = f"POST {server.url}/predict answered 500 (after 3 attempts): CUDA out of memory"
    assert errors["img-0.jpg"][1] == errors["img-1.jpg"][1] == answered_500
    assert errors["img-2.jpg"][1] == "cannot decode"
    timed_out = errors["img-6.jpg"][1]
    assert timed_out.startswith(f"POST {server.url}/predict failed: timeout:") and "0.5s" in timed_out

    predictions = site.predictions(version)
    assert set(predictions) == {"img-3.jpg", "img-4.jpg", "img-5.jpg"}
    for name, prediction in predictions.items():
        width, height = site.size(name)
        assert prediction.result == [
            {"id": "f", "type": "bbox", "label": "person_face", "score": 0.9, "attributes": {},
             "geometry": {"x": 1, "y": 2, "width": width / 2, "height": height / 2}}
        ]  # fmt: skip
        assert (prediction.score, prediction.model_version, prediction.job_id) == (0.9, "detector:1", job.pk)

    # What the server received: one request per batch of two (the 500 one sent three times, the
    # timed-out one once), the version's params without the client's settings, a URL per image.
    predicts = [r for r in server.requests if r.path == "/predict"]
    sent = [[site.names[int(item["key"])] for item in r.body["items"]] for r in predicts]
    assert sent == [["img-0.jpg", "img-1.jpg"]] * 3 + [["img-2.jpg", "img-3.jpg"], ["img-4.jpg", "img-5.jpg"],
                                                       ["img-6.jpg"]]  # fmt: skip
    assert {r.method for r in predicts} == {"POST"}
    assert all(r.body["params"] == {"batch_size": 2, "threshold": 0.5} for r in predicts)
    assert all(r.body["model_version"] == "detector:1" for r in predicts)
    for item in [item for r in predicts for item in r.body["items"]]:
        name = item["name"]
        assert (item["meta"]["width"], item["meta"]["height"]) == site.size(name)
        assert (item["modality"], item["media_type"]) == ("image", "image/jpeg")
        site.assert_serves(item["url"], name)

    healthy.set()
    again = site.prelabel(version)

    assert again.state == JobState.SUCCEEDED, again.failure
    assert (again.total, again.result["predicted"], again.result["failed"]) == (4, 4, 0)
    assert site.errors(again) == {}
    later = server.requests[len(predicts) :]
    rerun = [site.names[int(item["key"])] for r in later for item in r.body["items"]]
    assert sorted(rerun) == ["img-0.jpg", "img-1.jpg", "img-2.jpg", "img-6.jpg"]  # only what failed
    predictions = site.predictions(version)
    assert len(predictions) == 7  # one each, the earlier three untouched
    assert {name for name, p in predictions.items() if p.job_id == job.pk} == {"img-3.jpg", "img-4.jpg",
                                                                              "img-5.jpg"}  # fmt: skip


# --- A Label Studio ML backend ---------------------------------------------------------------------


def rectangle(rid: str, label: str, **box: float) -> dict[str, Any]:
    """A Label Studio rectangle result, its box in percentages of the image."""
    value = {**box, "rotation": 0, "rectanglelabels": [label]}
    return {"id": rid, "from_name": "bbox", "to_name": "image", "type": "rectanglelabels", "value": value}


def test_a_label_studio_backend_predicts_in_pixels_and_a_500_fails_only_its_items(
    site: Site, serve: Serve
) -> None:
    healthy = threading.Event()
    failing = {site.tasks["img-2.jpg"], site.tasks["img-3.jpg"]}

    def backend(request: Request, n: int) -> Answer:
        """label-studio-ml-backend's answers: a car and a bus per task, in percentages."""
        if request.path == "/setup":
            return 200, {"model_version": "yolo-8"}
        tasks = request.body["tasks"]
        if not healthy.is_set() and failing & {task["id"] for task in tasks}:
            return 500, b"Internal Server Error"
        predictions = []
        for task in tasks:
            car = rectangle(f"c{task['id']}", "car", x=10, y=20, width=50, height=25)
            car.update(score=0.8, original_width=10, original_height=10)
            bus = rectangle(f"b{task['id']}", "bus", x=0, y=0, width=5, height=5)
            predictions.append({"result": [car, bus], "score": 0.7, "model_version": "yolo-8"})
        return 200, {"results": predictions}

    server = serve(backend)
    version = site.register(
        kind="labelstudio",
        endpoint=server.url + "/",
        labels=["car", "bus"],
        label_map={"car": "vehicle"},
        params={"batch_size": 2, "threshold": 0.4, **CLIENT},
    )

    job = site.prelabel(version)

    assert job.state == JobState.SUCCEEDED, job.failure
    assert job.result == {"predicted": 5, "regions": 5, "dropped_unmapped": 5, "dropped_invalid": 0,
                          "failed": 2}  # fmt: skip
    answered_500 = f"POST {server.url}/predict answered 500 (after 3 attempts): Internal Server Error"
    assert site.errors(job) == {
        "img-2.jpg": ("prediction_failed", answered_500),
        "img-3.jpg": ("prediction_failed", answered_500),
    }
    predictions = site.predictions(version)
    assert set(predictions) == {"img-0.jpg", "img-1.jpg", "img-4.jpg", "img-5.jpg", "img-6.jpg"}
    for name, prediction in predictions.items():
        width, height = site.size(name)
        task = site.tasks[name]
        (region,) = prediction.result
        assert {k: v for k, v in region.items() if k != "geometry"} == {
            "id": f"c{task}", "type": "bbox", "label": "vehicle", "score": 0.8, "attributes": {}
        }  # fmt: skip
        # Percentages of the item's own size (not original_width/height) become pixels.
        expected = {"x": width * 0.1, "y": height * 0.2, "width": width * 0.5, "height": height * 0.25}
        assert region["geometry"] == pytest.approx(expected)
        assert prediction.score == 0.7

    # What the backend received: one /setup, then a request per batch of two tasks (the 500 one
    # three times), tasks named by their Loupe task ids, each image as a URL in data.image.
    assert server.paths()[0] == "/setup" and server.paths().count("/setup") == 1
    setup = server.requests[0].body
    registered = ModelVersion.objects.get(id=version)
    uid = f"{version}.{int(registered.created_at.timestamp())}"  # Label Studio's <id>.<timestamp>
    assert (setup["project"], setup["model_version"], setup["hostname"]) == (uid, "detector:1", "")
    assert all(r.body["project"] == uid for r in server.requests[1:])
    assert '<RectangleLabels name="bbox" toName="image">' in setup["schema"]
    assert '<Label value="car" />' in setup["schema"] and '<Label value="bus" />' in setup["schema"]
    predicts = server.requests[1:]
    ids = [[task["id"] for task in r.body["tasks"]] for r in predicts]
    t = [site.tasks[f"img-{k}.jpg"] for k in range(7)]
    assert ids == [[t[0], t[1]], [t[2], t[3]], [t[2], t[3]], [t[2], t[3]], [t[4], t[5]], [t[6]]]
    assert all(r.body["label_config"] == setup["schema"] for r in predicts)
    assert all(r.body["params"] == {"batch_size": 2, "threshold": 0.4, "context": None} for r in predicts)
    for task in [task for r in predicts for task in r.body["tasks"]]:
        assert set(task["data"]) == {"image"}
        site.assert_serves(task["data"]["image"], site.names[task["id"]])

    healthy.set()
    again = site.prelabel(version)

    assert again.state == JobState.SUCCEEDED, again.failure
    assert (again.total, again.result["predicted"], again.result["failed"]) == (2, 2, 0)
    later = server.requests[len(predicts) + 1 :]
    assert [r.path for r in later] == ["/predict"]  # set up once per predictor of the worker process
    assert [task["id"] for task in later[0].body["tasks"]] == [t[2], t[3]]
    assert len(site.predictions(version)) == 7


# --- The client's settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"retries": "many"}, "retries must be an integer from 0 to 10."),
        ({"retries": 2.5}, "retries must be an integer from 0 to 10."),
        ({"timeout": 0}, "timeout must be a number from 0.001 to 3600."),
        ({"backoff": True}, "backoff must be a number from 0 to 3600."),
        ({"concurrency": 0}, "concurrency must be an integer from 1 to 64."),
    ],
)
def test_a_model_servers_client_settings_are_checked_when_it_is_registered(
    site: Site, params: dict[str, Any], message: str
) -> None:
    payload = {"name": "detector", "version": "1", "kind": "http", "endpoint": "http://127.0.0.1:9",
               "task_type": "detection", "modalities": ["image"], "outputs": ["bbox"],
               "params": params}  # fmt: skip
    response = site.world.client("manager").post(site.url("/models"), payload, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["message"], error["details"]["field"]) == (message, "params")


def test_a_prelabel_job_cancelled_midway_keeps_what_it_predicted_and_a_new_job_does_the_rest(
    site: Site, serve: Serve
) -> None:
    from projects import jobs

    def faces(request: Request, n: int) -> Answer:
        box = {"x": 1, "y": 1, "width": 5, "height": 5}
        regions = [{"id": "f", "type": "bbox", "label": "face", "score": 0.8, "geometry": box}]
        return 200, {"results": [{"key": item["key"], "regions": regions} for item in request.body["items"]]}

    server = serve(faces)
    version = site.register(
        kind="http",
        endpoint=server.url,
        labels=["face"],
        label_map={"face": "person_face"},
        params={"batch_size": 2, **CLIENT},
    )
    manager = site.world.client("manager")
    started = manager.post(site.url("/prelabel"), {"model_version": version}, format="json")
    job_id = started.json()["id"]

    def cancel_after_the_first_batch(job: Job, index: int) -> None:
        if index == 0:
            assert manager.post(f"{API}/jobs/{job.pk}/cancel").status_code in (200, 202)

    assert jobs.job_execute(job_id=job_id, on_chunk=cancel_after_the_first_batch) == "cancelled"
    watched = manager.get(f"{API}/jobs/{job_id}").json()
    assert (watched["state"], watched["done"], watched["total"]) == ("cancelled", 2, 7)
    assert set(site.predictions(version)) == {"img-0.jpg", "img-1.jpg"}
    assert len(server.requests) == 1  # the batches after the cancel never reached the model

    rest = site.prelabel(version)
    assert (rest.state, rest.total, rest.result["predicted"]) == (JobState.SUCCEEDED, 5, 5)
    assert len(site.predictions(version)) == 7
