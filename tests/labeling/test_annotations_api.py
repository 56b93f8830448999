"""Schemas, annotations of every type, pointed refusals, ETag / If-Match and revisions, through the API."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from labeling.models import Annotation, AnnotationRevision, Prediction
from tests.conftest import World, assert_error
from tests.labeling.conftest import API, SPEC, Labeled, publish

pytestmark = pytest.mark.django_db


def _rle(height: int, width: int, box: tuple[int, int, int, int]) -> dict[str, Any]:
    pixels = np.zeros((height, width), dtype=np.uint8, order="F")
    x, y, w, h = box
    pixels[y : y + h, x : x + w] = 1
    rle = mask_utils.encode(pixels)
    return {"size": [height, width], "counts": rle["counts"].decode()}


def image_regions() -> list[dict[str, Any]]:
    return [
        {
            "id": "r1",
            "type": "bbox",
            "label": "car",
            "attributes": {"occluded": False},
            "geometry": {"x": 10, "y": 20, "width": 100, "height": 50},
        },
        {
            "id": "r2",
            "type": "rotated_bbox",
            "label": "car",
            "attributes": {"occluded": True},
            "geometry": {"cx": 200, "cy": 200, "width": 80, "height": 40, "angle": 30},
        },
        {
            "id": "r3",
            "type": "polygon",
            "label": "car",
            "attributes": {"occluded": False},
            "geometry": {
                "points": [[300, 300], [400, 300], [400, 400], [300, 400]],
                "holes": [[[320, 320], [340, 320], [340, 340]]],
            },
        },
        {
            "id": "r4",
            "type": "polyline",
            "label": "car",
            "attributes": {"occluded": False},
            "geometry": {"points": [[10, 400], [200, 410], [300, 420]]},
        },
        {
            "id": "r5",
            "type": "mask",
            "label": "car",
            "attributes": {"occluded": False},
            "geometry": {"rle": _rle(480, 640, (50, 60, 30, 20))},
        },
        {
            "id": "r6",
            "type": "keypoints",
            "label": "person",
            "attributes": {},
            "geometry": {"points": [[100, 100, 2], [90, 120, 1], [0, 0, 0]]},
        },
        {"id": "r7", "type": "classification", "label": "sunny", "attributes": {}, "geometry": {}},
        {
            "id": "r8",
            "type": "relation",
            "label": "drives",
            "attributes": {},
            "geometry": {"from": "r6", "to": "r1"},
        },
    ]


OTHER_REGIONS: dict[str, list[dict[str, Any]]] = {
    "text": [{"id": "s1", "type": "span", "label": "org", "geometry": {"start": 0, "end": 5}}],
    "audio": [
        {"id": "a1", "type": "time_segment", "label": "speech", "geometry": {"start": 1.0, "end": 2.5}},
        {
            "id": "a2",
            "type": "transcription",
            "label": "speech",
            "geometry": {"text": "hello", "start": 1.0, "end": 2.5},
        },
    ],
    "video": [
        {
            "id": "v1",
            "type": "video_track",
            "label": "car",
            "attributes": {"occluded": False},
            "geometry": {
                "keyframes": [
                    {"frame": 0, "x": 10, "y": 10, "width": 50, "height": 50},
                    {"frame": 50, "x": 100, "y": 100, "width": 60, "height": 60, "outside": True},
                ]
            },
        },
    ],
    "pointcloud": [
        {
            "id": "c1",
            "type": "cuboid",
            "label": "box3d",
            "geometry": {"center": [1, 2, 0], "size": [4, 2, 1.5], "yaw": 0.3},
        }
    ],
    "dicom": [
        {
            "id": "d1",
            "type": "bbox",
            "label": "truck",
            "geometry": {"x": 0, "y": 0, "width": 256, "height": 512},
        }
    ],
}


def create(
    labeled: Labeled, modality: str, result: list[dict[str, Any]], who: str = "annotator", **extra: Any
) -> Any:
    return labeled.world.client(who).post(
        labeled.url(f"/tasks/{labeled.tasks[modality]}/annotations"),
        {"result": result, **extra},
        format="json",
    )


# --- Schemas -----------------------------------------------------------------------------------


def test_a_manager_publishes_versions_and_every_member_reads_them(world: World) -> None:
    first = publish(world, SPEC)
    assert first.status_code == 201, first.content
    assert first.json()["version"] == 1
    second = publish(
        world, {**SPEC, "classes": [*SPEC["classes"], {"name": "bus", "color": "#010101", "tools": ["bbox"]}]}
    )
    assert second.json()["version"] == 2
    listed = world.client("annotator").get(f"{API}/projects/{world.project.id}/schemas").json()["results"]
    assert [s["version"] for s in listed] == [2, 1]
    one = world.client("ml_engineer").get(f"{API}/projects/{world.project.id}/schemas/1")
    assert one.json()["spec"]["classes"][1]["name"] == "car"


@pytest.mark.parametrize(
    ("who", "status"), [("annotator", 403), ("reviewer", 403), ("member", 404), ("outsider", 404)]
)
def test_only_managers_publish_a_schema(world: World, who: str, status: int) -> None:
    response = world.client(who).post(
        f"{API}/projects/{world.project.id}/schemas", {"spec": SPEC}, format="json"
    )
    assert_error(response, status)


def test_a_broken_spec_is_refused_with_every_problem_located(world: World) -> None:
    spec = copy.deepcopy(SPEC)
    spec["classes"].append({"name": "car", "color": "red", "tools": ["laser"]})
    spec["classes"][1]["attributes"][2]["min"] = 9
    error = assert_error(publish(world, spec), 422, "schema_spec_invalid")
    paths = {e["path"] for e in error["details"]["errors"]}
    assert any(p.startswith("classes[9]") for p in paths), paths  # duplicate name, bad colour, unknown tool
    assert any(p.startswith("classes[1].attributes[2]") for p in paths), paths  # min > max
    assert not world.project.label_schemas.exists()


def test_annotations_need_a_schema_first(world: World) -> None:
    from tests.factories import DatasetFactory, ItemFactory

    dataset = DatasetFactory(organization=world.org)
    dataset.projects.add(world.project)
    ItemFactory(dataset=dataset)
    world.client("manager").post(f"{API}/projects/{world.project.id}/tasks", {}, format="json")
    task = world.project.tasks.get()
    response = world.client("annotator").post(
        f"{API}/projects/{world.project.id}/tasks/{task.id}/annotations", {"result": []}, format="json"
    )
    assert_error(response, 409, "no_label_schema")


# --- Every type, and every way to get one wrong ------------------------------------------------


def test_an_annotator_creates_an_annotation_of_every_type(labeled: Labeled) -> None:
    response = create(labeled, "image", image_regions(), state="submitted", lead_time_ms=5000)
    assert response.status_code == 201, response.content
    body = response.json()
    assert response["ETag"] == '"1"'
    assert [r["type"] for r in body["result"]] == [r["type"] for r in image_regions()]
    assert body["result"][0]["attributes"] == {"occluded": False, "make": "other"}  # default filled
    assert body["state"] == "submitted" and body["submitted_at"] and body["lead_time_ms"] == 5000
    for modality, regions in OTHER_REGIONS.items():
        answer = create(labeled, modality, regions)
        assert answer.status_code == 201, (modality, answer.content)
        assert [r["id"] for r in answer.json()["result"]] == [r["id"] for r in regions]
    assert Annotation.objects.count() == 1 + len(OTHER_REGIONS)


def _broken(index: int, path: str, value: Any) -> list[dict[str, Any]]:
    regions = image_regions()
    target: Any = regions[index]
    *parents, last = path.split(".")
    for part in parents:
        target = target[part]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return regions


_DELETE = object()

IMAGE_REFUSALS = [
    # (region index, path to change, new value, expected code, expected field prefix)
    (0, "geometry.width", 700, "out_of_bounds", "geometry"),
    (0, "geometry.height", -5, "invalid_geometry", "geometry.height"),
    (0, "geometry.x", "12", "invalid_type", "geometry.x"),
    (0, "label", "bicycle", "unknown_class", "label"),
    (0, "label", "sunny", "tool_not_allowed", "type"),
    (0, "attributes.occluded", _DELETE, "required", "attributes.occluded"),
    (0, "attributes.occluded", "yes", "invalid_type", "attributes.occluded"),
    (0, "attributes.doors", 9, "out_of_range", "attributes.doors"),
    (0, "attributes.make", "tesla", "unknown_option", "attributes.make"),
    (0, "attributes.wheels", 4, "unknown_field", "attributes.wheels"),
    (1, "geometry.cx", 630, "out_of_bounds", "geometry"),
    (2, "geometry.points", [[0, 0], [100, 100], [100, 0], [0, 100]], "invalid_geometry", "geometry"),
    (2, "geometry.points", [[0, 0], [100, 100]], "invalid_geometry", "geometry.points"),
    (3, "geometry.points", [[10, 10]], "invalid_geometry", "geometry.points"),
    (4, "geometry.rle", _rle(100, 100, (1, 1, 5, 5)), "invalid_geometry", "geometry.rle"),
    (5, "geometry.points", [[100, 100, 2], [90, 120, 1]], "count_mismatch", "geometry.points"),
    (5, "geometry.points", [[100, 100, 2], [90, 120, 1], [5, 5, 7]], "invalid_value", "geometry.points"),
    (7, "geometry.to", "nope", "unknown_region", "geometry.to"),
    (1, "id", "r1", "duplicate_id", "id"),
]


@pytest.mark.parametrize(
    ("index", "path", "value", "code", "field"),
    IMAGE_REFUSALS,
    ids=[f"{r[0]}-{r[1]}-{r[3]}" for r in IMAGE_REFUSALS],
)
def test_each_invalid_image_region_is_refused_with_its_index_and_field(
    labeled: Labeled, index: int, path: str, value: Any, code: str, field: str
) -> None:
    error = assert_error(create(labeled, "image", _broken(index, path, value)), 422, "schema_violation")
    found = [e for e in error["details"]["errors"] if e["region"] == index and e["code"] == code]
    assert found, error["details"]["errors"]
    assert found[0]["field"].startswith(field), found
    assert not Annotation.objects.exists()


OTHER_REFUSALS = [
    (
        "text",
        {"id": "s", "type": "span", "label": "org", "geometry": {"start": 100, "end": 121}},
        "out_of_bounds",
    ),
    (
        "text",
        {"id": "s", "type": "span", "label": "org", "geometry": {"start": 5, "end": 5}},
        "invalid_geometry",
    ),
    (
        "audio",
        {"id": "a", "type": "time_segment", "label": "speech", "geometry": {"start": 9, "end": 10.5}},
        "out_of_bounds",
    ),
    (
        "video",
        {
            "id": "v",
            "type": "video_track",
            "label": "car",
            "attributes": {"occluded": False},
            "geometry": {"keyframes": [{"frame": 125, "x": 1, "y": 1, "width": 5, "height": 5}]},
        },
        "out_of_bounds",
    ),
    (
        "video",
        {
            "id": "v",
            "type": "video_track",
            "label": "car",
            "attributes": {"occluded": False},
            "geometry": {
                "keyframes": [
                    {"frame": 9, "x": 1, "y": 1, "width": 5, "height": 5},
                    {"frame": 3, "x": 1, "y": 1, "width": 5, "height": 5},
                ]
            },
        },
        "invalid_geometry",
    ),
    (
        "pointcloud",
        {
            "id": "c",
            "type": "cuboid",
            "label": "box3d",
            "geometry": {"center": [0, 0, 0], "size": [1, -2, 1], "yaw": 0},
        },
        "invalid_geometry",
    ),
    (
        "audio",
        {"id": "b", "type": "bbox", "label": "truck", "geometry": {"x": 0, "y": 0, "width": 1, "height": 1}},
        "modality_mismatch",
    ),
    (
        "dicom",
        {
            "id": "d",
            "type": "bbox",
            "label": "truck",
            "geometry": {"x": 0, "y": 0, "width": 257, "height": 1},
        },
        "out_of_bounds",
    ),
]


@pytest.mark.parametrize(
    ("modality", "region", "code"), OTHER_REFUSALS, ids=[f"{r[0]}-{r[2]}" for r in OTHER_REFUSALS]
)
def test_each_invalid_region_of_other_modalities_is_refused(
    labeled: Labeled, modality: str, region: dict[str, Any], code: str
) -> None:
    error = assert_error(create(labeled, modality, [region]), 422, "schema_violation")
    assert any(e["region"] == 0 and e["code"] == code for e in error["details"]["errors"]), error


def test_numbers_that_are_not_finite_are_refused(labeled: Labeled) -> None:
    # JSON has no NaN, but Python's parser reads the token: it must not reach the database.
    body = (
        '{"result": [{"id": "r1", "type": "bbox", "label": "truck", '
        '"geometry": {"x": NaN, "y": 1, "width": Infinity, "height": 5}}]}'
    )
    response = labeled.world.client("annotator").generic(
        "POST",
        labeled.url(f"/tasks/{labeled.tasks['image']}/annotations"),
        body,
        content_type="application/json",
    )
    assert response.status_code in (400, 422), response.content
    assert not Annotation.objects.exists()


def test_a_single_choice_schema_refuses_two_classifications(labeled: Labeled) -> None:
    both = [
        {"id": "a", "type": "classification", "label": "sunny", "geometry": {}},
        {"id": "b", "type": "classification", "label": "sunny", "geometry": {}},
    ]
    error = assert_error(create(labeled, "image", both), 422, "schema_violation")
    assert any(e["region"] == 1 and e["code"] == "too_many" for e in error["details"]["errors"]), error


def test_a_score_belongs_to_predictions_not_annotations(labeled: Labeled) -> None:
    regions = image_regions()[:1]
    regions[0]["score"] = 0.5
    error = assert_error(create(labeled, "image", regions), 422, "schema_violation")
    assert error["details"]["errors"][0]["region"] == 0


# --- Versions, If-Match, revisions -------------------------------------------------------------


def _patch(client: Any, labeled: Labeled, annotation_id: int, body: dict[str, Any], etag: str | None) -> Any:
    headers = {"HTTP_IF_MATCH": etag} if etag is not None else {}
    return client.patch(labeled.url(f"/annotations/{annotation_id}"), body, format="json", **headers)


def test_a_change_needs_if_match_and_a_stale_one_is_refused(labeled: Labeled) -> None:
    created = create(labeled, "image", image_regions()[:1])
    annotation_id, client = created.json()["id"], labeled.world.client("annotator")
    assert_error(_patch(client, labeled, annotation_id, {"result": []}, None), 428, "if_match_required")
    moved = _patch(client, labeled, annotation_id, {"result": image_regions()[:2]}, created["ETag"])
    assert moved.status_code == 200 and moved["ETag"] == '"2"'
    error = assert_error(
        _patch(client, labeled, annotation_id, {"result": []}, created["ETag"]), 412, "stale_version"
    )
    assert error["details"]["current_version"] == 2
    assert len(Annotation.objects.get(id=annotation_id).result) == 2


def test_two_editors_of_one_annotation_one_wins_the_other_gets_412_and_revisions_name_both(
    labeled: Labeled,
) -> None:
    created = create(labeled, "image", image_regions()[:1], who="annotator")
    annotation_id, etag = created.json()["id"], created["ETag"]
    author, reviewer = labeled.world.client("annotator"), labeled.world.client("reviewer")
    first = _patch(author, labeled, annotation_id, {"result": image_regions()[:2]}, etag)
    second = _patch(reviewer, labeled, annotation_id, {"result": image_regions()[:3]}, etag)
    assert first.status_code == 200
    assert_error(second, 412, "stale_version")
    # The reviewer reads again and re-applies the fix: nothing is silently overwritten.
    fresh = reviewer.get(labeled.url(f"/annotations/{annotation_id}"))
    assert len(fresh.json()["result"]) == 2
    retried = _patch(reviewer, labeled, annotation_id, {"result": image_regions()[:3]}, fresh["ETag"])
    assert retried.status_code == 200 and retried.json()["version"] == 3
    revisions = reviewer.get(labeled.url(f"/annotations/{annotation_id}/revisions")).json()["results"]
    assert [(r["version"], r["author"]["username"]) for r in revisions] == [
        (3, "reviewer"),
        (2, "annotator"),
        (1, "annotator"),
    ]
    assert revisions[0]["changes"] == {"added": ["r3"], "removed": [], "changed": []}


def test_history_keeps_every_revision_and_soft_delete_keeps_the_rows(labeled: Labeled) -> None:
    client = labeled.world.client("annotator")
    created = create(labeled, "image", image_regions()[:1])
    annotation_id = created.json()["id"]
    edited = _patch(
        client, labeled, annotation_id, {"result": image_regions()[:2], "lead_time_ms": 1000}, '"1"'
    )
    submitted = _patch(
        client, labeled, annotation_id, {"state": "submitted", "lead_time_ms": 500}, edited["ETag"]
    )
    assert submitted.json()["lead_time_ms"] == 1500 and submitted.json()["state"] == "submitted"
    back = _patch(client, labeled, annotation_id, {"state": "draft"}, submitted["ETag"])
    assert_error(back, 400)
    deleted = client.delete(labeled.url(f"/annotations/{annotation_id}"), HTTP_IF_MATCH=submitted["ETag"])
    assert deleted.status_code == 204
    assert_error(client.get(labeled.url(f"/annotations/{annotation_id}")), 404)
    assert client.get(labeled.url("/annotations")).json()["results"] == []
    actions = list(
        AnnotationRevision.objects.filter(annotation_id=annotation_id)
        .order_by("version")
        .values_list("action", flat=True)
    )
    assert actions == ["create", "update", "submit", "delete"]
    assert Annotation.objects.filter(id=annotation_id, deleted_at__isnull=False).exists()


def test_annotators_see_only_their_own_annotations_and_never_other_projects(labeled: Labeled) -> None:
    mine = create(labeled, "image", image_regions()[:1], who="manager").json()["id"]
    annotator = labeled.world.client("annotator")
    assert_error(annotator.get(labeled.url(f"/annotations/{mine}")), 404)
    assert annotator.get(labeled.url("/annotations")).json()["results"] == []
    assert labeled.world.client("reviewer").get(labeled.url(f"/annotations/{mine}")).status_code == 200
    assert_error(labeled.world.client("outsider").get(labeled.url(f"/annotations/{mine}")), 404)
    assert_error(labeled.world.client("member").get(labeled.url("/annotations")), 404)
    assert_error(_patch(annotator, labeled, mine, {"result": []}, '"1"'), 404)
    # An ML engineer sees every annotation but changes none.
    assert_error(_patch(labeled.world.client("ml_engineer"), labeled, mine, {"result": []}, '"1"'), 403)


def test_only_reviewers_and_managers_mark_ground_truth(labeled: Labeled) -> None:
    assert_error(create(labeled, "image", image_regions()[:1], ground_truth=True), 403)
    made = create(labeled, "image", image_regions()[:1], who="reviewer", ground_truth=True)
    assert made.status_code == 201 and made.json()["ground_truth"] is True


def test_ml_engineers_read_annotations_but_do_not_annotate(labeled: Labeled) -> None:
    assert_error(create(labeled, "image", image_regions()[:1], who="ml_engineer"), 403)
    create(labeled, "image", image_regions()[:1])
    listed = labeled.world.client("ml_engineer").get(labeled.url("/annotations")).json()["results"]
    assert len(listed) == 1


# --- Predictions -------------------------------------------------------------------------------


def test_predictions_are_validated_and_written_in_bulk_or_not_at_all(labeled: Labeled) -> None:
    client = labeled.world.client("ml_engineer")
    box = {
        "id": "p1",
        "type": "bbox",
        "label": "car",
        "attributes": {"occluded": False},
        "geometry": {"x": 1, "y": 1, "width": 10, "height": 10},
        "score": 0.9,
    }
    rows = [{"task": labeled.tasks["image"], "result": [box], "score": 0.9} for _ in range(300)]
    rows.append({"item": labeled.items["dicom"], "result": [{**box, "label": "truck", "attributes": {}}]})
    response = client.post(
        labeled.url("/predictions"), {"model_version": "yolo-v1", "predictions": rows}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["created"] == 301
    ids = response.json()["ids"]
    stored = Prediction.objects.get(id=ids[-1])
    assert stored.task_id == labeled.tasks["dicom"] and stored.result[0]["label"] == "truck"
    assert stored.result[0]["score"] == 0.9 and stored.model_version == "yolo-v1"
    assert Prediction.objects.filter(id__in=ids).count() == 301
    bad = [*rows[:5], {"task": labeled.tasks["image"], "result": [{**box, "score": 3}]}]
    error = assert_error(
        client.post(
            labeled.url("/predictions"), {"model_version": "yolo-v2", "predictions": bad}, format="json"
        ),
        422,
    )
    assert error["details"]["errors"][0]["record"] == 5
    listed = labeled.world.client("annotator").get(labeled.url("/predictions?model_version=yolo-v2")).json()
    assert listed["results"] == []
    assert_error(
        labeled.world.client("annotator").post(
            labeled.url("/predictions"), {"model_version": "x", "predictions": rows[:1]}, format="json"
        ),
        403,
    )


def test_ten_thousand_predictions_go_in_one_call(labeled: Labeled) -> None:
    geometry = {"x": 1, "y": 1, "width": 10, "height": 10}
    box = {"id": "p", "type": "bbox", "label": "truck", "geometry": geometry, "score": 0.5}
    rows = [{"task": labeled.tasks["image"], "result": [box], "score": 0.5} for _ in range(10_000)]
    response = labeled.world.client("ml_engineer").post(
        labeled.url("/predictions"), {"model_version": "bulk", "predictions": rows}, format="json"
    )
    assert response.status_code == 201, response.content[:300]
    assert response.json()["created"] == 10_000
    assert Prediction.objects.filter(model_version="bulk").count() == 10_000
    too_many = labeled.world.client("ml_engineer").post(
        labeled.url("/predictions"), {"model_version": "bulk", "predictions": rows + rows[:1]}, format="json"
    )
    assert_error(too_many, 413)
