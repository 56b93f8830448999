"""Imports and exports of annotation files through the API, run as jobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from pycocotools.coco import COCO

from labeling.models import Annotation, Prediction
from tests.conftest import assert_error
from tests.labeling.conftest import NAMES, Labeled, run

pytestmark = pytest.mark.django_db


def _import(labeled: Labeled, fmt: str, data: bytes, who: str = "manager", **fields: Any) -> Any:
    payload = {"file": SimpleUploadedFile("upload", data), "format": fmt, **fields}
    return labeled.world.client(who).post(labeled.url("/imports"), payload, format="multipart")


def label_studio_export() -> list[dict[str, Any]]:
    """An export in Label Studio's documented JSON shape (one image task, one text task)."""
    return [
        {
            "id": 1,
            "data": {"image": "/data/upload/1/0001.jpg"},
            "annotations": [
                {
                    "id": 11,
                    "completed_by": 1,
                    "ground_truth": False,
                    "lead_time": 12.5,
                    "was_cancelled": False,
                    "result": [
                        {
                            "id": "rect1",
                            "from_name": "label",
                            "to_name": "image",
                            "type": "rectanglelabels",
                            "original_width": 640,
                            "original_height": 480,
                            "image_rotation": 0,
                            "value": {
                                "x": 10,
                                "y": 25,
                                "width": 50,
                                "height": 12.5,
                                "rotation": 0,
                                "rectanglelabels": ["car"],
                            },
                        },
                        {
                            "id": "rect1",
                            "from_name": "occluded",
                            "to_name": "image",
                            "type": "choices",
                            "original_width": 640,
                            "original_height": 480,
                            "value": {"x": 10, "y": 25, "width": 50, "height": 12.5, "choices": ["true"]},
                        },
                        {
                            "id": "poly1",
                            "from_name": "poly",
                            "to_name": "image",
                            "type": "polygonlabels",
                            "original_width": 640,
                            "original_height": 480,
                            "value": {"points": [[50, 50], [75, 50], [75, 75]], "polygonlabels": ["truck"]},
                        },
                        {
                            "id": "cls1",
                            "from_name": "weather",
                            "to_name": "image",
                            "type": "choices",
                            "value": {"choices": ["sunny"]},
                        },
                    ],
                }
            ],
            "predictions": [],
        },
        {
            "id": 2,
            "data": {"text": "ACME Corp hired Ann.", "loupe_item": NAMES["text"]},
            "annotations": [
                {
                    "id": 12,
                    "result": [
                        {
                            "id": "sp1",
                            "from_name": "ner",
                            "to_name": "text",
                            "type": "labels",
                            "value": {"start": 0, "end": 9, "text": "ACME Corp", "labels": ["org"]},
                        },
                    ],
                }
            ],
            "predictions": [],
        },
    ]


def test_a_label_studio_export_imports_with_its_annotations_intact(labeled: Labeled) -> None:
    response = _import(labeled, "labelstudio", json.dumps(label_studio_export()).encode())
    assert response.status_code == 202, response.content
    job = run(response.json()["id"])
    assert job.state == "succeeded", (job.failure, list(job.errors.values("item", "code", "message")))
    assert job.result["created"] == 2
    image = Annotation.objects.get(task_id=labeled.tasks["image"])
    assert image.ground_truth and image.state == "submitted"
    by_type = {r["type"]: r for r in image.result}
    assert by_type["bbox"]["geometry"] == pytest.approx(
        {"x": 64.0, "y": 120.0, "width": 320.0, "height": 60.0}
    )
    assert by_type["bbox"]["label"] == "car"
    assert by_type["bbox"]["attributes"]["occluded"] is True
    assert by_type["polygon"]["geometry"]["points"] == [[320.0, 240.0], [480.0, 240.0], [480.0, 360.0]]
    assert by_type["classification"]["label"] == "sunny"
    text = Annotation.objects.get(task_id=labeled.tasks["text"])
    assert text.result[0]["geometry"]["start"] == 0 and text.result[0]["geometry"]["end"] == 9
    revisions = labeled.world.client("manager").get(labeled.url(f"/annotations/{image.pk}/revisions")).json()
    assert revisions["results"][0]["action"] == "import"


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


GOOD = {
    "item": NAMES["image"],
    "regions": [
        {"id": "a", "type": "bbox", "label": "truck", "geometry": {"x": 1, "y": 1, "width": 5, "height": 5}}
    ],
}
OUTSIDE = {
    "item": NAMES["dicom"],
    "regions": [
        {"id": "b", "type": "bbox", "label": "truck", "geometry": {"x": 1, "y": 1, "width": 900, "height": 5}}
    ],
}
STRANGER = {"item": "nowhere/else.jpg", "regions": []}


def test_one_refused_record_means_nothing_is_imported_unless_partial(labeled: Labeled) -> None:
    data = _jsonl([GOOD, OUTSIDE, STRANGER])
    job = run(_import(labeled, "jsonl", data).json()["id"])
    assert job.state == "failed" and "nothing imported" in job.failure
    assert not Annotation.objects.exists()
    errors = labeled.world.client("manager").get(f"/api/v1/jobs/{job.pk}/errors").json()["results"]
    assert {e["code"] for e in errors} == {"out_of_bounds", "unmatched_item"}
    assert any("region 0" in e["item"] for e in errors)

    partial = run(_import(labeled, "jsonl", data, partial="true").json()["id"])
    assert partial.state == "succeeded" and partial.result["created"] == 1 and partial.result["refused"] == 2
    assert Annotation.objects.get().task_id == labeled.tasks["image"]


def test_a_reimport_replaces_the_imported_annotation_with_a_new_revision(labeled: Labeled) -> None:
    run(_import(labeled, "jsonl", _jsonl([GOOD])).json()["id"])
    changed = {
        **GOOD,
        "regions": [{**GOOD["regions"][0], "geometry": {"x": 2, "y": 2, "width": 5, "height": 5}}],
    }
    job = run(_import(labeled, "jsonl", _jsonl([changed])).json()["id"])
    assert job.result["updated"] == 1
    annotation = Annotation.objects.get()
    assert annotation.version == 2 and annotation.result[0]["geometry"]["x"] == 2


def test_predictions_import_keeps_scores(labeled: Labeled) -> None:
    scored = {**GOOD, "regions": [{**GOOD["regions"][0], "score": 0.75}]}
    job = run(
        _import(
            labeled, "jsonl", _jsonl([scored]), who="ml_engineer", target="predictions", model_version="det-2"
        ).json()["id"]
    )
    assert job.state == "succeeded", job.failure
    prediction = Prediction.objects.get()
    assert prediction.model_version == "det-2" and prediction.result[0]["score"] == 0.75
    assert prediction.score == 0.75


@pytest.mark.parametrize(
    ("who", "target", "status"),
    [
        ("annotator", "ground_truth", 403),
        ("ml_engineer", "ground_truth", 403),
        ("outsider", "ground_truth", 404),
        ("annotator", "predictions", 403),
    ],
)
def test_who_may_import(labeled: Labeled, who: str, target: str, status: int) -> None:
    assert_error(_import(labeled, "jsonl", _jsonl([GOOD]), who=who, target=target), status)


def test_an_export_is_a_job_whose_file_loads_in_pycocotools(labeled: Labeled, tmp_path: Path) -> None:
    client = labeled.world.client("annotator")
    boxes = [
        {
            "id": f"b{i}",
            "type": "bbox",
            "label": "truck",
            "geometry": {"x": 10 * i, "y": 5, "width": 8, "height": 9},
        }
        for i in range(3)
    ]
    client.post(
        labeled.url(f"/tasks/{labeled.tasks['image']}/annotations"),
        {"result": boxes, "state": "submitted"},
        format="json",
    )
    client.post(
        labeled.url(f"/tasks/{labeled.tasks['dicom']}/annotations"), {"result": boxes[:1]}, format="json"
    )
    ml = labeled.world.client("ml_engineer")
    started = ml.post(labeled.url("/exports"), {"format": "coco"}, format="json")
    assert started.status_code == 202, started.content
    early = ml.get(labeled.url(f"/exports/{started.json()['id']}/download"))
    assert_error(early, 409, "export_not_ready")
    job = run(started.json()["id"])
    assert job.state == "succeeded", job.failure
    assert job.result["items"] == 1 and job.result["regions"] == 3  # the draft is not exported
    link = ml.get(labeled.url(f"/exports/{job.pk}/download")).json()
    downloaded = ml.get(link["url"])
    assert downloaded.status_code == 200
    path = tmp_path / "coco.json"
    path.write_bytes(b"".join(downloaded.streaming_content) if downloaded.streaming else downloaded.content)
    coco = COCO(str(path))
    assert len(coco.getAnnIds()) == 3
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())][:3] == ["vehicle", "car", "truck"]
    assert_error(
        labeled.world.client("annotator").post(labeled.url("/exports"), {"format": "coco"}, format="json"),
        403,
    )
    assert_error(labeled.world.client("outsider").get(labeled.url(f"/exports/{job.pk}/download")), 404)


def test_an_import_only_format_cannot_be_exported(labeled: Labeled) -> None:
    response = labeled.world.client("manager").post(
        labeled.url("/exports"), {"format": "cvat"}, format="json"
    )
    assert_error(response, 400)


def test_a_malformed_file_fails_the_import_with_the_reason(labeled: Labeled) -> None:
    job = run(_import(labeled, "coco", b"{not json").json()["id"])
    assert job.state == "failed"
    assert not Annotation.objects.exists()
    assert job.errors.filter(code="malformed").exists()
