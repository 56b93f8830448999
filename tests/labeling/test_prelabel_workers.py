"""Pre-labeling on real Celery workers: a worker SIGKILLed mid-job, and an annotator's interactive
prediction answered by a worker (the web process never runs models)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from labeling import services
from labeling.models import ModelVersion, Prediction, Task
from projects.models import Job, JobChunk, JobState
from tests.conftest import World
from tests.factories import DatasetFactory, ItemFactory
from tests.labeling.conftest import API, publish
from tests.workers import celery_worker, purge_queues

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SPEC = {"classes": [{"name": "thing", "color": "#ff0000", "tools": ["bbox"]}]}


class ModelServer(ThreadingHTTPServer):
    """Loupe's model-server protocol: one box per item, a little slow, counting what it answered."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.answered: list[str] = []
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    server: ModelServer

    def log_message(self, *_: Any) -> None:
        pass

    def _reply(self, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply({"status": "ok", "model": "boxes", "labels": ["thing"]})

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(0.15)  # inference takes time: a kill lands mid-job
        results = []
        for item in request["items"]:
            box = {"x": 10, "y": 10, "width": 20, "height": 20}
            results.append({"key": item["key"], "score": 0.8,
                            "regions": [{"id": "p1", "type": "bbox", "label": "thing", "geometry": box,
                                         "score": 0.8}]})  # fmt: skip
        with self.server.lock:
            self.server.answered.extend(item["key"] for item in request["items"])
        self._reply({"results": results})


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    server = ModelServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _empty_queues() -> None:
    purge_queues()


def setup_project(world: World, server: ModelServer, settings: Any, tasks: int) -> tuple[int, list[int]]:
    settings.LOUPE_MODEL_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    assert publish(world, SPEC).status_code == 201
    dataset = DatasetFactory(organization=world.org)
    dataset.projects.add(world.project)
    for i in range(tasks):
        ItemFactory(dataset=dataset, name=f"frames/{i:03d}.jpg")
    services.tasks_ensure(world.project.pk)
    response = world.client("manager").post(
        f"{API}/projects/{world.project.pk}/models",
        {"name": "boxes", "version": "1", "kind": "http", "endpoint": f"http://127.0.0.1:{server.server_port}/",
         "task_type": "detection", "modalities": ["image"], "outputs": ["bbox"], "labels": ["thing"]},
        format="json",
    )  # fmt: skip
    assert response.status_code == 201, response.content
    ids = list(Task.objects.filter(project=world.project).order_by("id").values_list("id", flat=True))
    return response.json()["id"], ids


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def worker_env(objects: Path) -> dict[str, str]:
    return {
        "LOUPE_MODEL_ALLOWED_NETWORKS": "127.0.0.0/8",
        "LOUPE_PRELABEL_BATCH": "2",
        "LOUPE_STORAGE": "local",
        "LOUPE_OBJECTS_DIR": str(objects),
        "LOUPE_JOB_STALL_SECONDS": "2",
        "LOUPE_JOB_RECOVER_INTERVAL": "1",
    }


def test_a_prelabel_job_survives_its_worker_being_killed_with_one_prediction_per_task(
    world: World, model_server: ModelServer, settings: Any, objects_dir: Path
) -> None:
    version, task_ids = setup_project(world, model_server, settings, tasks=40)
    settings.LOUPE_PRELABEL_BATCH = 2
    response = world.client("manager").post(
        f"{API}/projects/{world.project.pk}/prelabel", {"model_version": version}, format="json"
    )
    assert response.status_code == 202, response.content
    job_id = response.json()["id"]
    env = worker_env(objects_dir)
    with celery_worker(env=env) as first:
        wait_for(lambda: Job.objects.get(id=job_id).chunks_done >= 4, 60, "the first worker to make progress")
        first.kill()
    killed = Job.objects.get(id=job_id)
    assert killed.state == JobState.RUNNING and killed.chunks_done < (killed.chunks_total or 0)
    with celery_worker(beat=True, env=env) as second:
        try:
            wait_for(lambda: Job.objects.get(id=job_id).state == JobState.SUCCEEDED, 90, "the job to finish")
        except AssertionError:
            raise AssertionError("".join(second.log[-60:])) from None
    job = Job.objects.get(id=job_id)
    assert job.attempts >= 2 and job.result["predicted"] == 40 and job.done == job.total == 40
    per_task = list(
        Prediction.objects.filter(source_id=version).order_by("task_id").values_list("task_id", flat=True)
    )
    assert per_task == task_ids  # every task, each exactly once
    assert sorted(JobChunk.objects.filter(job=job).values_list("index", flat=True)) == list(range(20))
    # The batch the kill interrupted was asked again, and nothing else was.
    assert len(model_server.answered) - 40 <= 2


def test_an_annotator_asks_for_a_prediction_and_a_worker_answers_it(
    world: World, model_server: ModelServer, settings: Any, objects_dir: Path
) -> None:
    version, task_ids = setup_project(world, model_server, settings, tasks=1)
    annotator = world.client("annotator")
    url = f"{API}/projects/{world.project.pk}/tasks/{task_ids[0]}/predict"
    with celery_worker(env=worker_env(objects_dir)):
        response = annotator.post(url, {"model_version": version}, format="json")
        assert response.status_code == 200, response.content
        again = annotator.post(url, {"model_version": version}, format="json")
    body = response.json()
    assert body["task"] == task_ids[0] and body["source"] == version and body["model_version"] == "boxes:1"
    assert [r["label"] for r in body["result"]] == ["thing"]
    assert again.status_code == 200
    assert (
        Prediction.objects.filter(task_id=task_ids[0], source_id=version).count() == 1
    )  # replaced, kept once
    assert ModelVersion.objects.get(id=version).kind == "http"
