"""A schema migration over 10k annotations loses nothing, records revisions and audit, and reverses."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest

from labeling.models import Annotation, AnnotationRevision, Prediction
from projects.models import AuditEvent
from tests.conftest import assert_error
from tests.labeling.conftest import SPEC, Labeled, publish, run

pytestmark = pytest.mark.django_db

N = 10_000


def _regions(n: int) -> list[dict[str, Any]]:
    regions: list[dict[str, Any]] = [
        {
            "id": "a",
            "type": "bbox",
            "label": "car",
            "attributes": {"occluded": n % 2 == 0, "make": "other"},
            "geometry": {"x": n % 500, "y": 1, "width": 10, "height": 10},
        },
        {
            "id": "b",
            "type": "polygon",
            "label": "truck",
            "attributes": {},
            "geometry": {"points": [[0, 0], [10, 0], [10, 10]], "holes": []},
        },
    ]
    if n % 3 == 0:
        regions.append(
            {"id": "c", "type": "classification", "label": "sunny", "attributes": {}, "geometry": {}}
        )
    if n % 5 == 0:
        regions.append(
            {
                "id": "d",
                "type": "keypoints",
                "label": "person",
                "attributes": {},
                "geometry": {"points": [[1, 1, 2], [2, 2, 2], [0, 0, 0]]},
            }
        )
    return regions


def _labels(model: Any, field: str = "result") -> Counter[str]:
    counts: Counter[str] = Counter()
    for result in model.objects.values_list(field, flat=True).iterator():
        counts.update(r["label"] for r in result)
    return counts


def _v2_spec() -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    classes = {c["name"]: c for c in spec["classes"]}
    classes["car"]["name"] = "auto"
    heavy = {
        "name": "heavy",
        "color": "#222222",
        "tools": ["bbox", "polygon", "keypoints"],
        "skeleton": classes["person"]["skeleton"],
    }
    spec["classes"] = [c for c in spec["classes"] if c["name"] not in ("truck", "person", "sunny")] + [heavy]
    return spec


def test_rename_merge_and_delete_over_10k_annotations_reconcile_exactly_and_reverse(labeled: Labeled) -> None:
    task_id, author = labeled.tasks["image"], labeled.world.users["annotator"]
    Annotation.objects.bulk_create(
        Annotation(task_id=task_id, author=author, schema_version=1, state="submitted", result=_regions(n))
        for n in range(N)
    )
    Prediction.objects.bulk_create(
        Prediction(task_id=task_id, model_version="m1", schema_version=1, result=_regions(n))
        for n in range(100)
    )
    before = _labels(Annotation)
    assert before["car"] == N and before["truck"] == N

    operations = [
        {"op": "rename_class", "from": "car", "to": "auto"},
        {"op": "merge_classes", "from": ["truck", "person"], "into": "heavy"},
        {"op": "delete_class", "class": "sunny"},
    ]
    response = publish(labeled.world, _v2_spec(), operations=operations)
    assert response.status_code == 201, response.content
    job = run(response.json()["migration_job"])
    assert job.state == "succeeded", job.failure
    assert job.done == N + 100

    after, archived = _labels(Annotation), _labels(Annotation, "archived")
    assert after["auto"] == before["car"]
    assert after["heavy"] == before["truck"] + before["person"]
    assert archived["sunny"] == before["sunny"] and "sunny" not in after
    assert sum(after.values()) + sum(archived.values()) == sum(before.values())
    assert set(Annotation.objects.values_list("schema_version", flat=True)) == {2}
    assert _labels(Prediction)["auto"] == 100
    assert AnnotationRevision.objects.filter(action="migrate", job_id=job.pk).count() == N
    assert job.result["annotations_regions_before"] + job.result["annotations_archived_before"] == (
        job.result["annotations_regions_after"] + job.result["annotations_archived_after"]
    )
    assert AuditEvent.objects.filter(verb="label_schema.publish").count() == 2

    # Publishing the inverse brings the old names and the archived class back.
    inverse = [{"op": "rename_class", "from": "auto", "to": "car"}, {"op": "restore_class", "class": "sunny"}]
    v3 = copy.deepcopy(_v2_spec())
    for c in v3["classes"]:
        if c["name"] == "auto":
            c["name"] = "car"
    v3["classes"].append(next(c for c in SPEC["classes"] if c["name"] == "sunny"))
    back = publish(labeled.world, v3, operations=inverse)
    assert back.status_code == 201, back.content
    assert run(back.json()["migration_job"]).state == "succeeded"
    restored = _labels(Annotation)
    assert restored["car"] == before["car"] and restored["sunny"] == before["sunny"]
    assert sum(_labels(Annotation, "archived").values()) == 0


def test_a_schema_that_drops_a_class_in_use_without_an_operation_is_refused(labeled: Labeled) -> None:
    spec = copy.deepcopy(SPEC)
    spec["classes"] = [c for c in spec["classes"] if c["name"] != "truck"]
    error = assert_error(publish(labeled.world, spec), 422, "migration_invalid")
    assert any("truck" in e["message"] for e in error["details"]["errors"]), error
    assert labeled.world.project.label_schemas.count() == 1


def test_an_operation_naming_an_unknown_class_is_refused(labeled: Labeled) -> None:
    error = assert_error(
        publish(labeled.world, SPEC, operations=[{"op": "rename_class", "from": "ghost", "to": "car"}]),
        422,
        "migration_invalid",
    )
    assert error["details"]["errors"][0]["path"].startswith("operations[0]")


def test_regions_the_new_version_refuses_are_kept_and_reported(labeled: Labeled) -> None:
    polygon = {"id": "p", "type": "polygon", "label": "car", "attributes": {"occluded": False},
               "geometry": {"points": [[0, 0], [10, 0], [10, 10]], "holes": []}}  # fmt: skip
    kept = Annotation.objects.create(task_id=labeled.tasks["image"], author=labeled.world.users["annotator"],
                                     schema_version=1, state="submitted", result=[polygon])  # fmt: skip
    spec = copy.deepcopy(SPEC)
    car = next(c for c in spec["classes"] if c["name"] == "car")
    car["name"], car["tools"] = "auto", ["bbox"]
    response = publish(labeled.world, spec, operations=[{"op": "rename_class", "from": "car", "to": "auto"}])
    job = run(response.json()["migration_job"])
    assert job.state == "succeeded"
    kept.refresh_from_db()
    assert kept.result[0]["label"] == "auto" and kept.result[0]["type"] == "polygon"
    error = job.errors.get()
    assert error.code == "invalid_after_migration" and error.item == f"annotation {kept.pk}"
    assert "tool" in error.message or "type" in error.message
