"""Label-error detection jobs through the API: confident learning over real images with known
flipped labels, and a detector's disagreements with box annotations."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
from django.db.models import Count
from sklearn.datasets import load_digits

from bench.quality import digit_png
from labeling.models import Annotation, Assignment, MLModel, ModelVersion, Prediction, Task
from quality.models import Finding
from storage.objects import object_store
from tests.conftest import World
from tests.factories import BlobFactory, DatasetFactory, ItemFactory
from tests.labeling.conftest import API, SPEC, publish, run

pytestmark = pytest.mark.django_db

DIGITS = {"classes": [{"name": str(d), "color": "#000000", "tools": ["classification"]} for d in range(10)]}


def _settle(world: World, task: Task, regions: list[dict[str, Any]]) -> Annotation:
    """One annotator's accepted work on a task, as the workflow leaves it."""
    annotation = Annotation.objects.create(
        task=task, author=world.users["annotator"], schema_version=1, result=regions, state="submitted"
    )
    Assignment.objects.create(
        task=task, user=world.users["annotator"], state="submitted", annotation=annotation
    )
    Task.objects.filter(id=task.pk).update(state="done", submitted=1, active=0, open_slots=0)
    return annotation


def _project_of_images(
    world: World, images: list[bytes], spec: dict[str, Any], *, text: bool = False
) -> list[Task]:
    assert publish(world, spec).status_code == 201
    dataset = DatasetFactory(organization=world.org)
    store = object_store()
    kind = "text/plain" if text else "image/png"
    for data in images:
        digest = hashlib.sha256(data).hexdigest()
        blob = BlobFactory(sha256=digest, size=len(data), media_type=kind)
        store.put_bytes(blob.key, data, content_type=kind)
        if text:
            meta = {"length": len(data), "encoding": "utf-8"}
            ItemFactory(dataset=dataset, primary=blob, modality="text", media_type=kind, meta=meta)
        else:
            ItemFactory(dataset=dataset, primary=blob, media_type=kind, meta={"width": 32, "height": 32})
    linked = world.client("owner").patch(
        f"{API}/datasets/{dataset.pk}", {"projects": [world.project.pk]}, format="json"
    )
    assert linked.status_code == 200, linked.content
    return list(Task.objects.filter(project=world.project).order_by("item_id"))


def _start(world: World, **params: Any) -> Any:
    made = world.client("manager").post(
        f"{API}/projects/{world.project.pk}/quality/jobs", {"kind": "label_errors", **params}, format="json"
    )
    assert made.status_code == 202, made.content
    return run(made.json()["id"])


def test_confident_learning_finds_flipped_labels_among_real_digit_images(
    world: World, objects_dir: Any
) -> None:
    digits = load_digits()
    n = 600
    rng = np.random.default_rng(3)
    flipped = set(rng.choice(n, size=n // 10, replace=False).tolist())
    tasks = _project_of_images(world, [digit_png(digits.images[i]) for i in range(n)], DIGITS)
    given = {}
    for index, task in enumerate(tasks):
        truth = int(digits.target[index])
        label = (truth + int(rng.integers(1, 10))) % 10 if index in flipped else truth
        given[task.pk] = index
        _settle(
            world,
            task,
            [{"id": "c", "type": "classification", "label": str(label), "attributes": {}, "geometry": {}}],
        )
    job = _start(world, mode="classification", folds=5)
    assert job.state == "succeeded", job.failure
    assert job.result["fitted"] == n and job.done == job.total == n
    found = Finding.objects.filter(project=world.project, source="label_error")
    flagged = {given[t] for t in found.values_list("task_id", flat=True)}
    true_positives = len(flagged & flipped)
    precision, recall = true_positives / len(flagged), true_positives / len(flipped)
    assert precision >= 0.75 and recall >= 0.75, (precision, recall)
    # The ones the model is sure about went to review; the findings say what the model thinks.
    example = found.order_by("-score").first()
    assert example is not None and example.details["suggested"] != example.details["given"]
    routed = Task.objects.filter(project=world.project, state="in_review", qc_status="flagged").count()
    assert routed == found.filter(score__gte=0.5).values("task_id").distinct().count() > 0
    # A second run (over the tasks still settled) refreshes findings rather than adding to them.
    assert _start(world, mode="classification", folds=5).state == "succeeded"
    per_task = Finding.objects.filter(project=world.project, source="label_error").values("task_id")
    assert not per_task.annotate(n=Count("id")).filter(n__gt=1).exists()


def test_a_detector_s_disagreements_with_the_boxes_become_scored_findings(
    world: World, objects_dir: Any
) -> None:
    (task,) = _project_of_images(world, [digit_png(np.zeros((8, 8)))], SPEC)
    annotation = _settle(
        world,
        task,
        [
            {
                "id": "a",
                "type": "bbox",
                "label": "car",
                "attributes": {"occluded": False},
                "geometry": {"x": 0, "y": 0, "width": 10, "height": 10},
            },
            {
                "id": "b",
                "type": "bbox",
                "label": "truck",
                "attributes": {},
                "geometry": {"x": 20, "y": 0, "width": 10, "height": 10},
            },
        ],
    )
    model = MLModel.objects.create(organization=world.org, name="detector")
    version = ModelVersion.objects.create(
        model=model, version="1", kind="http", task_type="detection", endpoint="http://example.com"
    )
    Prediction.objects.create(
        task=task,
        source=version,
        model_version="detector:1",
        schema_version=1,
        result=[
            {
                "id": "p1",
                "type": "bbox",
                "label": "truck",
                "score": 0.9,
                "geometry": {"x": 0, "y": 0, "width": 10, "height": 10},
            },
            {
                "id": "p2",
                "type": "bbox",
                "label": "person",
                "score": 0.95,
                "geometry": {"x": 0, "y": 20, "width": 10, "height": 10},
            },
        ],
    )
    job = _start(world, mode="detection", model_version=version.pk)
    assert job.state == "succeeded", job.failure
    assert job.done == job.total == 1
    found = {
        (f.kind, f.region_id): f for f in Finding.objects.filter(project=world.project, source="detection")
    }
    assert set(found) == {("wrong_class", "a"), ("missing", "p2"), ("extra", "b")}
    assert found[("missing", "p2")].score == pytest.approx(0.95)
    assert found[("wrong_class", "a")].annotation_id == annotation.pk
    assert "person" in found[("missing", "p2")].message
    listed = world.client("reviewer").get(
        f"{API}/projects/{world.project.pk}/quality/findings", {"source": "detection", "min_score": 0.9}
    )
    assert {f["kind"] for f in listed.json()["results"]} >= {"missing"}


def test_detection_needs_the_model_version_whose_predictions_to_compare(
    world: World, objects_dir: Any
) -> None:
    made = world.client("manager").post(
        f"{API}/projects/{world.project.pk}/quality/jobs",
        {"kind": "label_errors", "mode": "detection"},
        format="json",
    )
    assert made.status_code == 400 and made.json()["error"]["details"]["field"] == "model_version"


def test_detection_reads_only_a_model_of_the_project_s_organization(world: World, objects_dir: Any) -> None:
    theirs = MLModel.objects.create(organization=world.other_org, name="their detector")
    version = ModelVersion.objects.create(
        model=theirs, version="1", kind="http", task_type="detection", endpoint="http://example.com"
    )
    made = world.client("manager").post(
        f"{API}/projects/{world.project.pk}/quality/jobs",
        {"kind": "label_errors", "mode": "detection", "model_version": version.pk},
        format="json",
    )
    assert made.status_code == 404 and made.json()["error"]["code"] == "not_found"


TOPICS = {
    "sports": [
        "The striker scored twice in the second half.",
        "The team won the championship final.",
        "She ran the marathon in record time.",
        "The coach praised the goalkeeper after the match.",
        "Fans cheered as the tennis player served an ace.",
    ],
    "finance": [
        "Shares fell three percent after the earnings report.",
        "The central bank raised interest rates.",
        "Investors moved their savings into government bonds.",
        "The company reported record quarterly profit.",
        "Inflation pushed the price of loans higher.",
    ],
}


def test_text_items_are_read_through_sentence_embeddings(world: World, objects_dir: Any) -> None:
    """The text path: MiniLM embeddings of the items (the `embeddings` extra), one label flipped."""
    texts = [
        (topic, f"{sentence} ({n})")
        for n in range(4)
        for topic, sentences in TOPICS.items()
        for sentence in sentences
    ]
    spec = {"classes": [{"name": t, "color": "#000000", "tools": ["classification"]} for t in TOPICS]}
    tasks = _project_of_images(world, [t.encode() for _, t in texts], spec, text=True)
    flipped = tasks[3]
    for task, (topic, _) in zip(tasks, texts, strict=True):
        label = ("finance" if topic == "sports" else "sports") if task == flipped else topic
        _settle(
            world,
            task,
            [{"id": "c", "type": "classification", "label": label, "attributes": {}, "geometry": {}}],
        )
    job = _start(world, mode="classification", folds=4)
    assert job.state == "succeeded", job.failure
    assert job.result["fitted"] == len(texts) == 40
    found = Finding.objects.filter(project=world.project, source="label_error").order_by("-score")
    assert found.first() is not None and found.first().task_id == flipped.pk
