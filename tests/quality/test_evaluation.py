"""Model evaluation against a release's approved labels, through the API and the job runner.

The numbers are held to the reference libraries computed here on the same inputs: pycocotools'
COCOeval for detection, scikit-learn for classification, jiwer for transcriptions, and a span
case worked out by hand.
"""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest
from django.db import transaction
from django.utils import timezone
from PIL import Image
from pycocotools import mask as masks
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from labeling import hooks
from labeling.models import MLModel, ModelVersion, Prediction, Release, ReleaseItem
from projects.models import Job, JobChunk, JobError
from quality.metrics import evaluation as ev
from quality.models import Evaluation
from storage.objects import object_store
from tests.conftest import World, assert_error
from tests.labeling.conftest import API, run
from tests.labeling.modelserver import Answer, ModelServers, Request, Serve
from tests.labeling.releases import Shop, box

pytestmark = pytest.mark.django_db

CLASSES_SPEC: dict[str, Any] = {
    "settings": {"classification": "single", "out_of_bounds": "reject"},
    "classes": [
        {"name": name, "color": "#123456", "tools": ["classification"]} for name in ("bird", "cat", "dog")
    ],
}


def number(name: str) -> int:
    return int(name.rsplit("/", 1)[-1].split(".")[0])


def detection_truth(name: str) -> list[dict[str, Any]]:
    n = number(name)
    found = [box("c", "car", 4 + n % 5, 4, 20, 12)]
    if n % 2 == 0:
        found.append(box("p", "person", 30, 10 + n % 3, 10, 20))
    if n % 3 == 0:
        found.append(box("b", "bike", 5, 28, 16, 10))
    return found


def detection_guess(n: int, truth: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Near the truth with varied overlap and scores; some misses, a wrong class, false alarms."""
    rng = random.Random(n)
    said: list[dict[str, Any]] = []
    for region in truth:
        g = region["geometry"]
        if region["label"] == "car" and n % 7 == 3:
            continue  # missed
        if region["label"] == "bike" and n % 6 == 3:
            continue
        label = "bike" if region["label"] == "person" and n % 5 == 2 else region["label"]
        shift = rng.choice([0, 1, 2, 4, 7])
        width = max(2, g["width"] - rng.choice([0, 1, 3]))
        said.append(
            {**box(f"g{len(said)}", label, g["x"] + shift, g["y"], width, g["height"]), "score": rng.random()}
        )
    if n % 4 == 1:  # a false alarm
        said.append({**box("fa", "car", 40, 30, 12, 10), "score": rng.uniform(0.1, 0.7)})
    return said


def register(world: World, name: str, version: str = "1", **fields: Any) -> ModelVersion:
    """A model server's version whose predictions are all stored already (nothing will call it)."""
    model, _ = MLModel.objects.get_or_create(organization=world.org, name=name)
    fields = {"endpoint": "http://127.0.0.1:9", "task_type": "detection", "outputs": ["bbox"], **fields}
    return ModelVersion.objects.create(
        model=model, version=version, kind="http", modalities=["image"], **fields
    )


def predict(shop: Shop, version: ModelVersion, guess: Any) -> dict[int, list[dict[str, Any]]]:
    """Store `guess(n)` as the version's prediction of item n (None: no prediction)."""
    stored = {}
    for item in shop.items:
        regions = guess(number(item.name))
        if regions is None:
            continue
        task = shop.task_of(item)
        Prediction.objects.create(
            task=task, source=version, model_version=f"{version.model.name}:{version.version}",
            schema_version=1, result=regions, score=0.5,
        )  # fmt: skip
        stored[task.pk] = regions
    return stored


def evaluate(
    shop: Shop, release_id: int, version: ModelVersion, who: str = "ml_engineer", **body: Any
) -> Any:
    response = shop.world.client(who).post(
        f"{API}/releases/{release_id}/evaluations", {"model_version": version.pk, **body}, format="json"
    )
    return response


def evaluated(shop: Shop, release_id: int, version: ModelVersion, **body: Any) -> dict[str, Any]:
    """Start the evaluation, run its job to the end, and read it back in full."""
    started = evaluate(shop, release_id, version, **body)
    assert started.status_code == 202, started.content
    job = run(started.json()["job"]["id"])
    assert job.state == "succeeded", (job.failure, job.result)
    shown = shop.world.client("reviewer").get(f"{API}/evaluations/{started.json()['id']}")
    assert shown.status_code == 200, shown.content
    return dict(shown.json())


def release_rows(release_id: int, split: str | None = None) -> list[ReleaseItem]:
    rows = ReleaseItem.objects.filter(release_id=release_id).order_by("id")
    return list(rows.filter(split=split) if split else rows)


def png_of(world: World, url: str) -> Image.Image:
    response = world.client("ml_engineer").get(url)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "image/png"
    picture = Image.open(io.BytesIO(response.content))
    picture.load()
    return picture


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Model servers on 127.0.0.1 (tests.labeling.modelserver), stopped after the test."""
    servers = ModelServers()
    yield servers.start
    servers.close()


@pytest.fixture
def detection_shop(world: World, objects_dir: Path) -> Shop:
    shop = Shop(world, 16, review="none")
    assert len(shop.label_all(detection_truth)) == 16
    return shop


# --- Detection -----------------------------------------------------------------------------------


def _cocoeval(truth: dict[str, Any], results: list[dict[str, Any]], iou_type: str) -> Any:
    """pycocotools' own COCOeval of `results` against `truth`, summarized."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = truth
        gt.createIndex()
        reference = COCOeval(gt, gt.loadRes(results), iouType=iou_type)
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    return reference


def _stats(reference: Any) -> list[Any]:
    return [None if s < 0 else s for s in reference.stats]  # -1: COCOeval has no figure


def test_detection_numbers_are_cocoevals_and_precision_recall_is_greedy_at_the_threshold(
    detection_shop: Shop,
) -> None:
    shop, world = detection_shop, detection_shop.world
    release = shop.cut(splits={"ratios": {"train": 0.5, "test": 0.5}, "seed": "eval"})
    version = register(world, "detector")
    predicted = predict(shop, version, lambda n: detection_guess(n, detection_truth(f"{n:04d}.png")))

    shown = evaluated(shop, release["id"], version, split="test", threshold=0.4)

    rows = release_rows(release["id"], "test")
    assert 3 <= len(rows) <= 13
    assert (shown["state"], shown["task_type"], shown["split"], shown["threshold"]) == (
        "succeeded", "detection", "test", 0.4,
    )  # fmt: skip
    covered = {
        "items": len(rows),
        "predicted": len(rows),
        "missing": 0,
        "reused": len(rows),
        "ran": 0,
        "failed": 0,
    }
    assert shown["counts"] == {**covered, "families": ["detection"]}
    metrics = shown["metrics"]["detection"]

    # COCOeval on the same truth (the release's frozen boxes) and detections (the stored predictions).
    labels = sorted({r["label"] for row in rows for r in row.regions} | {
        r["label"] for row in rows for r in predicted[row.task_id]})  # fmt: skip
    category = {label: i + 1 for i, label in enumerate(labels)}
    truth: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
    truth["categories"] = [{"id": i, "name": label} for label, i in category.items()]
    detections = []
    for row in rows:
        truth["images"].append({"id": row.item_id, "width": row.meta["width"], "height": row.meta["height"]})
        for r in row.regions:
            g = r["geometry"]
            truth["annotations"].append(
                {
                    "id": len(truth["annotations"]) + 1,
                    "image_id": row.item_id,
                    "category_id": category[r["label"]],
                    "bbox": [g["x"], g["y"], g["width"], g["height"]],
                    "area": g["width"] * g["height"],
                    "iscrowd": 0,
                }
            )
        for r in predicted[row.task_id]:
            g = r["geometry"]
            detections.append(
                {
                    "image_id": row.item_id,
                    "category_id": category[r["label"]],
                    "score": r["score"],
                    "bbox": [g["x"], g["y"], g["width"], g["height"]],
                }
            )
    reference = _cocoeval(truth, detections, "bbox")
    assert metrics["iou_type"] == "bbox"
    assert [metrics["coco"][name] for name in ev.COCO_STATS] == pytest.approx(_stats(reference), abs=1e-12)
    assert 0 < metrics["coco"]["map"] < metrics["coco"]["ap50"] < 1  # misses and false alarms cost
    precision = reference.eval["precision"]
    for k, label in enumerate(labels):
        per_class = precision[:, :, k, 0, -1]
        assert metrics["per_class"][label]["ap"] == pytest.approx(per_class[per_class > -1].mean(), abs=1e-12)
        assert metrics["pr_curves"]["precision"][label] == pytest.approx(
            list(precision[0, :, k, 0, -1]), abs=1e-12
        )
    assert metrics["pr_curves"]["recall"] == pytest.approx(list(reference.params.recThrs))

    # Precision and recall at 0.4: greedy by score, one truth box per detection, IoU >= 0.5, per class.
    tp = fp = 0
    for row in rows:
        kept = sorted((r for r in predicted[row.task_id] if r["score"] >= 0.4), key=lambda r: -r["score"])
        free = list(row.regions)
        for r in kept:
            ious = [(_iou(r, t), i) for i, t in enumerate(free) if t["label"] == r["label"]]
            best = max(ious, default=(0.0, -1))
            if best[0] >= 0.5:
                free.pop(best[1])
                tp += 1
            else:
                fp += 1
    fn = sum(len(row.regions) for row in rows) - tp
    assert (metrics["tp"], metrics["fp"], metrics["fn"]) == (tp, fp, fn)
    assert metrics["precision"] == pytest.approx(tp / (tp + fp))
    assert metrics["recall"] == pytest.approx(tp / (tp + fn))
    assert shown["summary"]["detection"]["map"] == metrics["coco"]["map"]

    # The precision/recall curves, a real PNG.
    assert set(shown["plots"]) == {"pr_curves"}
    picture = png_of(world, shown["plots"]["pr_curves"])
    assert picture.format == "PNG" and picture.size == (800, 600)
    evaluation = Evaluation.objects.get(id=shown["id"])
    assert object_store().exists(evaluation.plots["pr_curves"])


def _iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    g, h = a["geometry"], b["geometry"]
    width = min(g["x"] + g["width"], h["x"] + h["width"]) - max(g["x"], h["x"])
    height = min(g["y"] + g["height"], h["y"] + h["height"]) - max(g["y"], h["y"])
    inter = max(width, 0) * max(height, 0)
    return inter / (g["width"] * g["height"] + h["width"] * h["height"] - inter)


def test_the_model_runs_on_items_it_has_no_prediction_for_and_what_it_says_is_kept(
    world: World,
    objects_dir: Path,
    serve: Serve,
    settings: Any,
) -> None:
    settings.LOUPE_MODEL_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    shop = Shop(world, 5, review="none")
    shop.label_all(detection_truth)
    release = shop.cut()

    def detector(request: Request, n: int) -> Answer:
        """A car where the truth has one, shifted by two pixels; nothing else."""
        results = []
        for item in request.body["items"]:
            car = next(r for r in detection_truth(item["name"]) if r["label"] == "car")
            g = car["geometry"]
            results.append({"key": item["key"], "score": 0.8, "regions": [
                {"id": "x", "type": "bbox", "label": "car", "score": 0.8,
                 "geometry": {**g, "x": g["x"] + 2}}]})  # fmt: skip
        return 200, {"results": results}

    server = serve(detector)
    registered = world.client("manager").post(shop.url("/models"), {
        "name": "server", "version": "1", "kind": "http", "endpoint": server.url, "task_type": "detection",
        "modalities": ["image"], "outputs": ["bbox"], "labels": ["car"], "params": {"batch_size": 2},
    }, format="json")  # fmt: skip
    assert registered.status_code == 201, registered.content
    version = ModelVersion.objects.get(id=registered.json()["id"])
    # One item was pre-labeled already: its prediction is reused, the model is not asked again.
    first = shop.items[0]
    Prediction.objects.create(task=shop.task_of(first), source=version, model_version="server:1",
                              schema_version=1, result=[], score=None)  # fmt: skip

    shown = evaluated(shop, release["id"], version)

    asked = [item["name"] for r in server.requests if r.path == "/predict" for item in r.body["items"]]
    assert sorted(asked) == sorted(item.name for item in shop.items[1:])
    assert len([r for r in server.requests if r.path == "/predict"]) == 2  # the version's batches of two
    assert shown["counts"]["ran"] == 4 and shown["counts"]["reused"] == 1 and shown["counts"]["missing"] == 0
    kept = Prediction.objects.filter(source=version).exclude(task=shop.task_of(first))
    assert kept.count() == 4 and {p.job_id for p in kept} == {shown["job"]["id"]}
    assert all(p.result[0]["label"] == "car" and p.result[0]["score"] == 0.8 for p in kept)
    metrics = shown["metrics"]["detection"]
    cars = 5
    assert metrics["per_class"]["car"]["tp"] == 4 and metrics["per_class"]["car"]["fn"] == 1
    assert metrics["fn"] == sum(len(detection_truth(i.name)) for i in shop.items) - 4
    assert metrics["per_class"]["car"]["recall"] == pytest.approx(4 / cars)

    # Asked again: the same evaluation. A rerun recomputes it, reusing every prediction.
    again = evaluate(shop, release["id"], version)
    assert again.status_code == 200 and again.json()["id"] == shown["id"]
    rerun = evaluate(shop, release["id"], version, rerun=True, threshold=0.9)
    assert rerun.status_code == 202 and rerun.json()["id"] == shown["id"], rerun.content
    assert rerun.json()["job"]["id"] != shown["job"]["id"] and rerun.json()["summary"] == {}
    assert run(rerun.json()["job"]["id"]).state == "succeeded"
    after = world.client("manager").get(f"{API}/evaluations/{shown['id']}").json()
    assert after["counts"]["ran"] == 0 and after["counts"]["reused"] == 5
    assert after["metrics"]["detection"]["tp"] == 0  # no car scores 0.9
    assert len([r for r in server.requests if r.path == "/predict"]) == 2
    assert Evaluation.objects.count() == 1


def test_items_the_model_fails_on_are_reported_and_left_out(
    world: World,
    objects_dir: Path,
    serve: Serve,
    settings: Any,
) -> None:
    settings.LOUPE_MODEL_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    shop = Shop(world, 3, review="none")
    shop.label_all(detection_truth)
    release = shop.cut()

    def broken(request: Request, n: int) -> Answer:
        return 200, {"results": [{"key": item["key"], "regions": [], "error": "cannot decode"}
                                 for item in request.body["items"]]}  # fmt: skip

    server = serve(broken)
    version = register(world, "broken", endpoint=server.url, params={"retries": 0})

    shown = evaluated(shop, release["id"], version)

    assert shown["counts"] | {"families": None} == {"items": 3, "predicted": 0, "missing": 3, "reused": 0,
                                                    "ran": 3, "failed": 3, "families": None}  # fmt: skip
    errors = JobError.objects.filter(job_id=shown["job"]["id"])
    assert errors.count() == 3 and {e.message for e in errors} == {"cannot decode"}
    assert shown["metrics"]["detection"]["images"] == 0


# --- Classification and comparing models ---------------------------------------------------------


def test_classification_numbers_are_scikit_learns_and_two_models_compare_side_by_side(
    world: World, objects_dir: Path
) -> None:
    shop = Shop(world, 15, review="none", schema=CLASSES_SPEC)
    truth = {n: ("bird", "cat", "dog")[n % 3] for n in range(15)}
    shop.label_all(lambda name: [{"id": "k", "type": "classification", "label": truth[number(name)],
                                  "attributes": {}, "geometry": {}}])  # fmt: skip
    release = shop.cut()

    def classify(label: str, score: float) -> list[dict[str, Any]]:
        return [{"id": "k", "type": "classification", "label": label, "attributes": {}, "geometry": {},
                 "score": score}]  # fmt: skip

    def first_guess(n: int) -> list[dict[str, Any]] | None:
        if n == 14:
            return None  # never predicted: left out, counted as missing
        if n == 13:
            return []  # predicted, but no class: answered "(none)"
        wrong = {1: "dog", 4: "bird", 7: "bird", 9: "cat"}
        # two class regions: the higher score is the answer
        return [*classify(wrong.get(n, truth[n]), 0.9), *classify("cat", 0.3)]

    first = register(world, "classifier", "1", task_type="classification", outputs=["classification"])
    second = register(world, "classifier", "2", task_type="classification", outputs=["classification"])
    predict(shop, first, first_guess)
    predict(shop, second, lambda n: classify(truth[n] if n % 5 else "cat", 0.7))

    one = evaluated(shop, release["id"], first)
    two = evaluated(shop, release["id"], second)

    assert one["task_type"] == "classification" and one["counts"]["missing"] == 1
    rows = release_rows(release["id"])
    y_true = [truth[number(row.name)] for row in rows if number(row.name) != 14]
    y_pred = []
    for row in rows:
        n = number(row.name)
        if n == 14:
            continue
        regions = first_guess(n) or []
        y_pred.append(max(regions, key=lambda r: r["score"])["label"] if regions else "(none)")
    metrics = one["metrics"]["classification"]
    assert metrics["items"] == 14
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert metrics["micro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="micro"))
    labels = sorted(set(y_true) | set(y_pred))
    assert metrics["confusion"] == {
        "labels": labels,
        "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    precision, recall, _, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    for i, label in enumerate(labels):
        assert metrics["per_class"][label]["precision"] == pytest.approx(precision[i])
        assert metrics["per_class"][label]["support"] == support[i]
        if support[i]:
            assert metrics["per_class"][label]["recall"] == pytest.approx(recall[i])
    assert metrics["accuracy"] == pytest.approx(9 / 14)  # 4 wrong, 1 without an answer

    # Side by side: one row per model version with its headline numbers.
    listed = world.client("reviewer").get(f"{API}/releases/{release['id']}/evaluations")
    assert listed.status_code == 200
    rows_listed = {r["model_version"]["name"]: r for r in listed.json()["results"]}
    assert set(rows_listed) == {"classifier:1", "classifier:2"}
    assert rows_listed["classifier:1"]["summary"]["classification"]["accuracy"] == pytest.approx(9 / 14)
    assert rows_listed["classifier:2"]["summary"]["classification"]["accuracy"] == pytest.approx(13 / 15)
    assert two["metrics"]["classification"]["accuracy"] == pytest.approx(13 / 15)
    assert {r["state"] for r in listed.json()["results"]} == {"succeeded"}
    assert "metrics" not in rows_listed["classifier:1"]  # the list stays light; details are one GET away

    picture = png_of(world, one["plots"]["confusion_matrix"])
    assert picture.format == "PNG" and 400 <= picture.size[0] <= 2200 and 400 <= picture.size[1] <= 2000
    assert (
        world.client("ml_engineer").get(f"{API}/evaluations/{one['id']}/plots/pr_curves.png").status_code
        == 404
    )


def test_a_plot_lost_with_a_dead_worker_is_drawn_when_asked_for(world: World, objects_dir: Path) -> None:
    shop = Shop(world, 3, review="none", schema=CLASSES_SPEC)
    shop.label_all(lambda name: [{"id": "k", "type": "classification", "label": "cat", "attributes": {},
                                  "geometry": {}}])  # fmt: skip
    release = shop.cut()
    version = register(world, "classifier", task_type="classification", outputs=["classification"])
    predict(shop, version, lambda n: [{"id": "k", "type": "classification", "label": "cat", "attributes": {},
                                       "geometry": {}}])  # fmt: skip
    started = evaluate(shop, release["id"], version)
    job_id = started.json()["job"]["id"]
    # The job commits its results, and the worker dies before drawing the plots.
    from quality.evaluation import EvaluationRun

    original = EvaluationRun.after_finish
    EvaluationRun.after_finish = lambda self, job: None  # type: ignore[method-assign]
    try:
        assert run(job_id).state == "succeeded"
    finally:
        EvaluationRun.after_finish = original  # type: ignore[method-assign]
    assert Evaluation.objects.get(id=started.json()["id"]).plots == {}

    picture = png_of(world, f"{API}/evaluations/{started.json()['id']}/plots/confusion_matrix.png")

    assert picture.format == "PNG"
    stored = Evaluation.objects.get(id=started.json()["id"]).plots
    assert set(stored) == {"confusion_matrix"} and object_store().exists(stored["confusion_matrix"])


# --- Asking, permissions, the training hook -------------------------------------------------------


@pytest.fixture
def small(world: World, objects_dir: Path) -> tuple[Shop, dict[str, Any], ModelVersion]:
    shop = Shop(world, 4, review="none")
    shop.label_all(detection_truth)
    release = shop.cut(splits={"ratios": {"train": 0.5, "test": 0.5}, "seed": "x"})
    version = register(world, "detector")
    predict(shop, version, lambda n: detection_guess(n, detection_truth(f"{n:04d}.png")))
    return shop, release, version


def test_who_may_evaluate_and_read_evaluations(small: tuple[Shop, dict[str, Any], ModelVersion]) -> None:
    shop, release, version = small
    world = shop.world
    url = f"{API}/releases/{release['id']}/evaluations"
    for who in ("reviewer", "annotator"):
        assert_error(evaluate(shop, release["id"], version, who=who), 403, "permission_denied")
    for who in ("member", "outsider"):
        assert_error(evaluate(shop, release["id"], version, who=who), 404)
    assert Evaluation.objects.count() == 0

    started = evaluate(shop, release["id"], version, who="manager")
    assert started.status_code == 202, started.content
    evaluation_id = started.json()["id"]
    for who in ("owner", "admin", "manager", "reviewer", "ml_engineer"):
        assert world.client(who).get(url).status_code == 200, who
        assert world.client(who).get(f"{API}/evaluations/{evaluation_id}").status_code == 200, who
    assert_error(world.client("annotator").get(url), 403)
    assert_error(world.client("annotator").get(f"{API}/evaluations/{evaluation_id}"), 403)
    for who in ("member", "outsider"):
        assert_error(world.client(who).get(url), 404)
        assert_error(world.client(who).get(f"{API}/evaluations/{evaluation_id}"), 404)
        assert_error(world.client(who).get(f"{API}/evaluations/{evaluation_id}/plots/pr_curves.png"), 404)
    # Plots of a job not yet run.
    assert_error(
        world.client("manager").get(f"{API}/evaluations/{evaluation_id}/plots/pr_curves.png"),
        409,
        "evaluation_not_ready",
    )


def test_bad_requests_write_nothing(small: tuple[Shop, dict[str, Any], ModelVersion]) -> None:
    shop, release, version = small
    world = shop.world
    theirs = MLModel.objects.create(organization=world.other_org, name="theirs")
    foreign = ModelVersion.objects.create(
        model=theirs,
        version="1",
        kind="http",
        endpoint="http://127.0.0.1:9",
        task_type="detection",
        modalities=["image"],
        outputs=["bbox"],
    )
    jobs_before = Job.objects.count()

    assert_error(evaluate(shop, release["id"], foreign), 404, "not_found")
    missing = ModelVersion(pk=version.pk + 1000, model=version.model)
    assert_error(evaluate(shop, release["id"], missing), 404, "not_found")
    assert_error(evaluate(shop, release["id"], version, split="holdout"), 400, "invalid")
    assert_error(evaluate(shop, release["id"], version, split="x" * 17), 400)
    assert_error(evaluate(shop, release["id"], version, threshold=1.5), 400)
    assert_error(evaluate(shop, release["id"], version, threshold=-0.1), 400)
    assert_error(evaluate(shop, release["id"], version, threshold="high"), 400)
    assert_error(evaluate(shop, 10**9, version), 404)
    building = Release.objects.create(project=world.project, version=99, name="b", schema_version=1)
    assert_error(evaluate(shop, building.pk, version), 409, "release_not_ready")

    assert Evaluation.objects.count() == 0 and Job.objects.count() == jobs_before


def test_a_running_evaluation_is_not_started_twice(small: tuple[Shop, dict[str, Any], ModelVersion]) -> None:
    shop, release, version = small
    first = evaluate(shop, release["id"], version, split="test")
    assert first.status_code == 202
    same = evaluate(shop, release["id"], version, split="test")
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    assert_error(evaluate(shop, release["id"], version, split="test", rerun=True), 409, "evaluation_running")
    other_split = evaluate(shop, release["id"], version, split="train")
    assert other_split.status_code == 202 and other_split.json()["id"] != first.json()["id"]
    # A failed evaluation is started again when asked for.
    Job.objects.filter(id=first.json()["job"]["id"]).update(state="failed")
    retried = evaluate(shop, release["id"], version, split="test")
    assert retried.status_code == 202 and retried.json()["id"] == first.json()["id"]
    assert retried.json()["job"]["id"] != first.json()["job"]["id"]


def test_a_model_trained_on_a_release_is_evaluated_on_its_held_out_split(
    small: tuple[Shop, dict[str, Any], ModelVersion],
) -> None:
    shop, release, version = small
    row = Release.objects.get(id=release["id"])
    with transaction.atomic():
        hooks.model_trained(version, row, "test", shop.world.users["ml_engineer"].pk)
        hooks.model_trained(version, row, "nothing-here", None)  # no such items: nothing to evaluate
    evaluation = Evaluation.objects.get()
    assert (evaluation.model_version_id, evaluation.release_id, evaluation.split) == (
        version.pk,
        row.pk,
        "test",
    )
    assert evaluation.created_by == shop.world.users["ml_engineer"]
    assert evaluation.job is not None and evaluation.job.kind == "quality.evaluation"
    assert run(evaluation.job.pk).state == "succeeded"
    evaluation.refresh_from_db()
    assert evaluation.task_type == "detection"
    assert evaluation.counts["items"] == len(release_rows(row.pk, "test"))


# --- The pure functions ------------------------------------------------------------------------


def span(start: int, end: int, label: str, score: float | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "id": f"{start}-{end}",
        "type": "span",
        "label": label,
        "geometry": {"start": start, "end": end},
    }
    if score is not None:
        found["score"] = score
    return found


def test_span_scores_are_exact_matches_of_start_end_and_label() -> None:
    examples = [
        ev.Example(
            truth=[span(0, 5, "PER"), span(10, 16, "ORG"), span(20, 25, "LOC")],
            predicted=[span(0, 5, "PER", 0.9), span(10, 15, "ORG", 0.9), span(20, 25, "ORG", 0.8)],
        ),
        ev.Example(
            truth=[span(3, 9, "PER")],
            predicted=[span(3, 9, "PER", 0.95), span(30, 34, "LOC", 0.7), span(40, 44, "PER", 0.2)],
        ),
        ev.Example(truth=[span(1, 4, "ORG")], predicted=[]),
    ]
    got = ev.span_metrics(examples, threshold=0.5)
    # Hits: PER 0-5, PER 3-9. Wrong: ORG 10-15 (end), ORG 20-25 (label), LOC 30-34; PER 40-44 scores
    # below 0.5. Missed: ORG 10-16, LOC 20-25, ORG 1-4. 5 spans true, 5 said: P = R = F1 = 2/5.
    assert (got["tp"], got["fp"], got["fn"]) == (2, 3, 3)
    assert got["precision"] == pytest.approx(2 / 5)
    assert got["recall"] == pytest.approx(2 / 5)
    assert got["f1"] == pytest.approx(2 / 5)
    assert got["per_label"]["PER"] == {"tp": 2, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert got["per_label"]["ORG"] == {"tp": 0, "fp": 2, "fn": 2, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert got["per_label"]["LOC"] == {"tp": 0, "fp": 1, "fn": 1, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert ev.evaluate(examples, threshold=0.5).task_type == "spans"


def transcription(text: str, start: float | None = None) -> dict[str, Any]:
    geometry: dict[str, Any] = {"text": text}
    if start is not None:
        geometry["start"], geometry["end"] = start, start + 1
    return {"id": text[:8], "type": "transcription", "label": "speech", "geometry": geometry}


def test_transcription_error_rates_are_jiwers_over_the_whole_set() -> None:
    references = ["the quick brown fox", "jumps over the lazy dog", "hello world"]
    hypotheses = ["the quick brown box", "jumps over lazy dog today", "hello"]
    examples = [
        # Two segments given out of order: read in time order.
        ev.Example(
            truth=[transcription("brown fox", 2.0), transcription("the quick", 0.5)],
            predicted=[transcription(hypotheses[0])],
        ),
        ev.Example(truth=[transcription(references[1])], predicted=[transcription(hypotheses[1])]),
        ev.Example(truth=[transcription(references[2])], predicted=[transcription(hypotheses[2])]),
    ]
    got = ev.transcription_metrics(examples)
    assert got["items"] == 3
    assert got["wer"] == pytest.approx(jiwer.wer(references, hypotheses))
    assert got["cer"] == pytest.approx(jiwer.cer(references, hypotheses))
    words = jiwer.process_words(references, hypotheses)
    assert got["words"] == {"substitutions": words.substitutions, "deletions": words.deletions,
                            "insertions": words.insertions, "hits": words.hits}  # fmt: skip
    assert 0 < got["wer"] < 1


def test_polygons_are_evaluated_as_masks_by_cocoeval() -> None:
    square: dict[str, Any] = {
        "id": "s",
        "type": "polygon",
        "label": "roof",
        "geometry": {"points": [[2, 2], [20, 2], [20, 20], [2, 20]]},
    }
    shifted: dict[str, Any] = {
        **square,
        "score": 0.8,
        "geometry": {"points": [[4, 2], [22, 2], [22, 20], [4, 20]]},
    }
    far: dict[str, Any] = {**square, "score": 0.6, "geometry": {"points": [[30, 30], [38, 30], [38, 38]]}}
    examples = [
        ev.Example(truth=[square], predicted=[shifted, far], width=48, height=48),
        ev.Example(truth=[square], predicted=[], width=48, height=48),
    ]
    got = ev.detection_metrics(examples, threshold=0.5)

    def rle(points: list[list[int]]) -> dict[str, Any]:
        return masks.merge(masks.frPyObjects([[float(v) for p in points for v in p]], 48, 48))

    images = [{"id": 1, "width": 48, "height": 48}, {"id": 2, "width": 48, "height": 48}]
    outline = rle(square["geometry"]["points"])
    annotations = [
        {"id": i, "image_id": i, "category_id": 1, "iscrowd": 0, "segmentation": outline,
         "area": float(masks.area(outline))}
        for i in (1, 2)
    ]  # fmt: skip
    truth = {"images": images, "categories": [{"id": 1, "name": "roof"}], "annotations": annotations}
    results = [
        {"image_id": 1, "category_id": 1, "score": r["score"], "segmentation": rle(r["geometry"]["points"])}
        for r in (shifted, far)
    ]
    assert got["iou_type"] == "segm"
    assert [got["coco"][name] for name in ev.COCO_STATS] == pytest.approx(
        _stats(_cocoeval(truth, results, "segm")), abs=1e-12
    )
    assert (got["tp"], got["fp"], got["fn"]) == (1, 1, 1)
    assert np.isclose(got["precision"], 0.5) and np.isclose(got["recall"], 0.5)


def test_which_families_are_measured() -> None:
    assert ev.families_of({"bbox", "classification"}, ["bbox"]) == ["detection"]
    assert ev.families_of({"bbox", "classification"}, []) == ["detection", "classification"]
    assert ev.families_of({"keypoints", "bbox"}, []) == ["detection", "keypoints"]
    assert ev.families_of({"cuboid"}, []) == []
    empty = ev.evaluate([ev.Example(truth=[{"type": "cuboid"}], predicted=[])])
    assert (empty.task_type, empty.metrics) == ("", {})
    # A detector that found nothing scores 0, not an error.
    nothing = ev.detection_metrics([ev.Example(truth=[box("a", "car", 1, 1)], predicted=[])])
    assert nothing["coco"]["map"] == 0.0 and nothing["recall"] == 0.0 and nothing["precision"] is None


def test_a_worker_killed_mid_chunk_is_redone_before_the_metrics_are_computed(
    small: tuple[Shop, dict[str, Any], ModelVersion], monkeypatch: pytest.MonkeyPatch
) -> None:
    from projects import jobs
    from quality import evaluation

    shop, release, version = small
    monkeypatch.setattr(evaluation, "CHUNK_ITEMS", 2)  # 4 items: two item chunks, then the metrics chunk
    started = evaluate(shop, release["id"], version)
    job_id = started.json()["job"]["id"]

    class Killed(BaseException):
        """Like SIGKILL: no handler of the job engine runs."""

    prepare = evaluation.EvaluationRun.prepare_chunk

    def die_in_the_second_chunk(self: Any, job: Job, index: int) -> Any:
        if index == 1:
            raise Killed
        return prepare(self, job, index)

    monkeypatch.setattr(evaluation.EvaluationRun, "prepare_chunk", die_in_the_second_chunk)
    with pytest.raises(Killed):
        jobs.job_execute(job_id=job_id)
    monkeypatch.setattr(evaluation.EvaluationRun, "prepare_chunk", prepare)
    # Nobody may take the metrics chunk while the dead worker's chunk is held: it would measure
    # without that chunk's items.
    Job.objects.filter(id=job_id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    order: list[int] = []
    assert jobs.job_execute(job_id=job_id, on_chunk=lambda _, index: order.append(index)) == "waiting"
    assert order == [] and Evaluation.objects.get(id=started.json()["id"]).evaluated_at is None
    # Once its lease is stale, the next worker redoes it, then measures every item.
    JobChunk.objects.filter(job_id=job_id, index=1).update(lease_until=timezone.now() - timedelta(hours=1))
    Job.objects.filter(id=job_id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert jobs.job_execute(job_id=job_id, on_chunk=lambda _, index: order.append(index)) == "succeeded"
    assert order == [1, 2]

    shown = world_get(shop, f"{API}/evaluations/{started.json()['id']}")
    assert shown["counts"]["items"] == shown["counts"]["predicted"] == 4
    rows = release_rows(release["id"])
    said = dict(Prediction.objects.filter(source=version).values_list("task_id", "result"))
    examples = [ev.Example(truth=row.regions, predicted=said[row.task_id], score=0.5) for row in rows]
    assert shown["metrics"]["detection"] == ev.detection_metrics(examples, threshold=0.5)
    assert set(shown["plots"]) == {"pr_curves"}


def world_get(shop: Shop, url: str) -> dict[str, Any]:
    response = shop.world.client("manager").get(url)
    assert response.status_code == 200, response.content
    return dict(response.json())


# --- Keypoints -----------------------------------------------------------------------------------


Points = Sequence[tuple[float, float, int]]


def skeleton(label: str, points: Points, score: float | None = None) -> dict[str, Any]:
    region: dict[str, Any] = {
        "id": f"k{len(points)}", "type": "keypoints", "label": label, "attributes": {},
        "geometry": {"points": [list(p) for p in points]},
    }  # fmt: skip
    if score is not None:
        region["score"] = score
    return region


def _moved(points: Points, dx: float) -> Points:
    return [(x + dx, y, v) for x, y, v in points]


PERSON = [(20 + 3 * i, 10 + 4 * i, 2 if i % 5 else 1) for i in range(17)]  # a 48 x 64 px person
HAND = [(5, 5, 2), (12, 9, 2), (9, 15, 0)]  # a small hand: the area floor applies


def _kp_reference(
    truths: Sequence[Points],
    guesses: Sequence[Sequence[tuple[Points, float]]],
    sigmas: list[float],
) -> Any:
    """pycocotools' keypoint COCOeval on one class, the truth's area the box of its labelled
    points floored at 32 x 32 px."""
    truth: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "c"}]}
    results = []
    for image, (points, said) in enumerate(zip(truths, guesses, strict=True), start=1):
        truth["images"].append({"id": image, "width": 100, "height": 100})
        labelled = [p for p in points if p[2]]
        xs, ys = [p[0] for p in labelled], [p[1] for p in labelled]
        w, h = max(xs) - min(xs), max(ys) - min(ys)
        truth["annotations"].append({
            "id": image, "image_id": image, "category_id": 1, "iscrowd": 0, "num_keypoints": len(labelled),
            "keypoints": [float(v) for p in points for v in p], "area": max(w * h, 1024.0),
            "bbox": [min(xs), min(ys), w, h],
        })  # fmt: skip
        for guess, score in said:
            results.append({"image_id": image, "category_id": 1, "score": score,
                            "keypoints": [float(v) for p in guess for v in p]})  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = truth
        gt.createIndex()
        reference = COCOeval(gt, gt.loadRes(results), iouType="keypoints")
        reference.params.kpt_oks_sigmas = np.array(sigmas)
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    return reference


def test_keypoints_are_measured_per_class_by_cocoeval_with_the_skeletons_sigmas() -> None:
    from quality.metrics.matching import oks

    # Per image: the person's prediction exact, a little off, further off, absent; a hand
    # predicted with one false alarm and one skeleton of the wrong length.
    person_guesses: list[list[tuple[Points, float]]] = [
        [(PERSON, 0.9)], [(_moved(PERSON, 2), 0.8)], [(_moved(PERSON, 6), 0.7)], [],
    ]  # fmt: skip
    hand_guesses: list[list[tuple[Points, float]]] = [
        [(HAND, 0.9), (_moved(HAND, 40), 0.6)], [(_moved(HAND, 1), 0.3)], [(_moved(HAND, 3), 0.8)], [],
    ]  # fmt: skip
    examples = []
    for n in range(4):
        said = [skeleton("person", g, s) for g, s in person_guesses[n]]
        said += [skeleton("hand", g, s) for g, s in hand_guesses[n]]
        if n == 3:
            said.append(skeleton("hand", HAND[:2], 0.9))  # two points for a three-point hand
        examples.append(
            ev.Example(
                truth=[skeleton("person", PERSON), skeleton("hand", HAND)],
                predicted=said,
                width=100,
                height=100,
            )
        )
    names = {
        "person": [n.upper().replace("_", " ") for n in ev.COCO_PERSON_KEYPOINTS],
        "hand": ["a", "b", "c"],
    }

    got = ev.evaluate(examples, threshold=0.5, skeletons=names)

    assert (got.task_type, got.families) == ("keypoints", ["keypoints"])
    metrics = got.metrics["keypoints"]
    person, hand = metrics["per_class"]["person"], metrics["per_class"]["hand"]
    assert (person["sigmas"], hand["sigmas"]) == ("coco_person", "uniform")
    assert (person["keypoints"], hand["keypoints"]) == (17, 3)
    assert metrics["skipped_predictions"] == 1
    stats = {}
    for label, truth, guesses, sigmas in (
        ("person", PERSON, person_guesses, ev.COCO_PERSON_SIGMAS),
        ("hand", HAND, hand_guesses, [0.05] * 3),
    ):
        reference = _kp_reference([truth] * 4, guesses, list(sigmas))
        stats[label] = _stats(reference)
        assert [metrics["per_class"][label][k] for k in ("ap", "ap50", "ap75", "ar")] == pytest.approx(
            [stats[label][i] for i in (0, 1, 2, 5)], abs=1e-12
        )
    assert 0 < person["ap"] < person["ap50"] <= 1  # the moved skeletons cost at strict OKS
    for n, name in enumerate(ev.KEYPOINT_STATS):  # over the classes, as COCO averages categories
        values = [stats[label][n] for label in ("person", "hand") if stats[label][n] is not None]
        assert metrics["coco"][name] == pytest.approx(sum(values) / len(values) if values else None)

    # At the threshold: greedy by score against quality's OKS (constants 2 sigma), OKS >= 0.5.
    k = {"person": [2 * s for s in ev.COCO_PERSON_SIGMAS], "hand": [0.1] * 3}
    counts = {"tp": 0, "fp": 0, "fn": 0}
    for n in range(4):
        for label, truth, guesses in (("person", PERSON, person_guesses), ("hand", HAND, hand_guesses)):
            kept = sorted((g for g in guesses[n] if g[1] >= 0.5), key=lambda g: -g[1])
            free = True
            for guess, _ in kept:
                if free and oks(skeleton(label, truth), skeleton(label, guess), k=k[label]) >= 0.5:
                    counts["tp"], free = counts["tp"] + 1, False
                else:
                    counts["fp"] += 1
            counts["fn"] += int(free)
    assert {key: metrics[key] for key in counts} == counts
    assert metrics["precision"] == pytest.approx(counts["tp"] / (counts["tp"] + counts["fp"]))
    assert ev.summary_of(got.metrics)["keypoints"]["map"] == metrics["coco"]["map"]


def test_a_keypoint_class_only_the_model_knows_has_no_ap_but_its_alarms_count() -> None:
    examples = [
        ev.Example(
            truth=[skeleton("hand", HAND)],
            predicted=[skeleton("hand", HAND, 0.9), skeleton("paw", [(1, 1, 2), (3, 3, 2)], 0.9)],
        )
    ]
    got = ev.keypoint_metrics(examples)
    assert got["per_class"]["paw"]["ap"] is None and got["per_class"]["paw"]["fp"] == 1
    assert got["per_class"]["hand"]["ap"] == pytest.approx(1.0)
    assert got["coco"]["map"] == pytest.approx(1.0)  # the unknown class lowers no AP
    assert (got["tp"], got["fp"], got["fn"], got["precision"]) == (1, 1, 0, 0.5)


POSE_SPEC: dict[str, Any] = {
    "settings": {"classification": "single", "out_of_bounds": "reject"},
    "classes": [
        {"name": "person", "color": "#00ff00", "tools": ["keypoints"],
         "skeleton": {"keypoints": list(ev.COCO_PERSON_KEYPOINTS), "edges": [[0, 1], [0, 2]]}},
        {"name": "hand", "color": "#0000ff", "tools": ["keypoints"],
         "skeleton": {"keypoints": ["wrist", "thumb", "index"], "edges": [[0, 1], [0, 2]]}},
    ],
}  # fmt: skip


def pose_truth(n: int) -> list[dict[str, Any]]:
    person = [(4 + 2 * i, 3 + 2 * i, 2) for i in range(17)]
    hand = [(44 + n % 3, 10, 2), (50, 14, 2), (54, 8 + n % 2, 2)]
    return [skeleton("person", person), skeleton("hand", hand)]


def test_a_pose_model_is_evaluated_with_the_release_schemas_skeletons(
    world: World, objects_dir: Path
) -> None:
    shop = Shop(world, 6, review="none", schema=POSE_SPEC)
    assert len(shop.label_all(lambda name: pose_truth(number(name)))) == 6
    release = shop.cut()
    version = register(world, "pose", task_type="keypoints", outputs=["keypoints"])

    def guess(n: int) -> list[dict[str, Any]]:
        person, hand = pose_truth(n)
        moved = [[x + n % 4, y, v] for x, y, v in person["geometry"]["points"]]
        return [{**person, "geometry": {"points": moved}, "score": 0.9 - n / 10}, {**hand, "score": 0.7}]

    predict(shop, version, guess)
    shown = evaluated(shop, release["id"], version)

    assert (shown["task_type"], shown["counts"]["families"]) == ("keypoints", ["keypoints"])
    metrics = shown["metrics"]["keypoints"]
    # The person class has COCO's skeleton in the schema, so COCO's sigmas; the hand the uniform one.
    assert metrics["per_class"]["person"]["sigmas"] == "coco_person"
    assert metrics["per_class"]["hand"]["sigmas"] == "uniform"
    said = dict(Prediction.objects.filter(source=version).values_list("task_id", "result"))
    rows = release_rows(release["id"])
    examples = [
        ev.Example(
            truth=row.regions, predicted=said[row.task_id], score=0.5, width=64, height=48, key=row.name
        )
        for row in rows
    ]
    skeletons = {c["name"]: c["skeleton"]["keypoints"] for c in POSE_SPEC["classes"]}
    assert metrics == ev.keypoint_metrics(examples, threshold=0.5, skeletons=skeletons)
    assert metrics["per_class"]["hand"]["ap"] == pytest.approx(1.0)
    assert 0 < metrics["per_class"]["person"]["ap"] < 1  # moved by up to 3 px
    listed = world_get(shop, f"{API}/releases/{release['id']}/evaluations")
    assert listed["results"][0]["summary"]["keypoints"]["map"] == metrics["coco"]["map"]
