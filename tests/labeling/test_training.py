"""Training models on releases through the API: digit images and topic texts classified, entity
spans tagged by a fine-tuned spaCy pipeline, the trained versions pre-labeling through normal jobs,
the uncertainty-first queue, cards and lineage, permissions, cancels and killed workers."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tarfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.utils import timezone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from bench.quality import digit_png
from labeling import hooks
from labeling.inference import builtin
from labeling.inference.base import ModelUnavailable
from labeling.inference.features import hog_vector, pixel_vector
from labeling.inference.trained import (
    LinearModel,
    file_entry,
    pack_directory,
    unpack_directory,
    verified_read,
)
from labeling.models import (
    Annotation,
    Assignment,
    ModelVersion,
    Prediction,
    Release,
    ReleaseItem,
    Task,
    Training,
)
from labeling.training import jobs as training_jobs
from labeling.training.recipes import span_metrics
from projects import jobs
from projects.exceptions import Conflict
from projects.models import ChunkState, Job, JobChunk
from storage.objects import object_store
from tests.conftest import World, assert_error
from tests.factories import BlobFactory, DatasetFactory, ItemFactory
from tests.labeling.conftest import API, publish, run

pytestmark = pytest.mark.django_db

SPLITS = {"ratios": {"train": 0.6, "val": 0.1, "test": 0.3}, "stratify": True, "seed": "t"}


def _schema(tool: str, classes: list[str]) -> dict[str, Any]:
    return {
        "settings": {"classification": "single"},
        "classes": [{"name": name, "color": "#000000", "tools": [tool]} for name in classes],
    }


def _items(world: World, contents: list[bytes], *, text: bool) -> list[Task]:
    """Items with these bytes in a dataset linked to the project; their tasks, in the same order."""
    dataset = DatasetFactory(organization=world.org)
    store = object_store()
    kind = "text/plain" if text else "image/png"
    for n, data in enumerate(contents):
        digest = hashlib.sha256(data + str(n).encode()).hexdigest()  # equal texts stay distinct items
        blob = BlobFactory(sha256=digest, size=len(data), media_type=kind)
        store.put_bytes(blob.key, data, content_type=kind)
        meta = {"length": len(data.decode()), "encoding": "utf-8"} if text else {"width": 32, "height": 32}
        ItemFactory(
            dataset=dataset,
            primary=blob,
            name=f"item-{n:04d}",
            modality="text" if text else "image",
            media_type=kind,
            meta=meta,
        )
    linked = world.client("owner").patch(
        f"{API}/datasets/{dataset.pk}", {"projects": [world.project.pk]}, format="json"
    )
    assert linked.status_code == 200, linked.content
    return list(Task.objects.filter(project=world.project).order_by("item__name"))


def _settle(world: World, tasks: list[Task], regions: list[list[dict[str, Any]]]) -> None:
    """Annotators' accepted work on these tasks, as the workflow leaves it."""
    annotator = world.users["annotator"]
    annotations = Annotation.objects.bulk_create(
        Annotation(task=t, author=annotator, schema_version=1, result=r, state="submitted")
        for t, r in zip(tasks, regions, strict=True)
    )
    Assignment.objects.bulk_create(
        Assignment(task=t, user=annotator, state="submitted", annotation=a)
        for t, a in zip(tasks, annotations, strict=True)
    )
    Task.objects.filter(id__in=[t.pk for t in tasks]).update(
        state="done", submitted=1, active=0, open_slots=0
    )


def _class(label: str) -> list[dict[str, Any]]:
    return [{"id": "c", "type": "classification", "label": label, "attributes": {}, "geometry": {}}]


def _cut(world: World) -> dict[str, Any]:
    made = world.client("manager").post(
        f"{API}/projects/{world.project.pk}/releases", {"name": "r", "splits": SPLITS}, format="json"
    )
    assert made.status_code == 202, made.content
    job = run(Release.objects.get(id=made.json()["id"]).job_id or 0)
    assert job.state == "succeeded", job.failure
    return dict(world.client("manager").get(f"{API}/releases/{made.json()['id']}").json())


def _train(world: World, release_id: int, recipe: str, who: str = "ml_engineer", **body: Any) -> Any:
    return world.client(who).post(
        f"{API}/releases/{release_id}/trainings", {"recipe": recipe, **body}, format="json"
    )


def _trained(world: World, release_id: int, recipe: str, **body: Any) -> dict[str, Any]:
    """Start a training, run its job to the end, and read it back through the API."""
    started = _train(world, release_id, recipe, **body)
    assert started.status_code == 202, started.content
    assert started.json()["state"] == "queued" and started.json()["model_version"] is None
    job = run(started.json()["job"]["id"])
    assert job.state == "succeeded", (job.failure, job.result)
    shown = world.client("reviewer").get(f"{API}/trainings/{started.json()['id']}")
    assert shown.status_code == 200, shown.content
    return dict(shown.json())


def _prelabel(world: World, version_id: int, task_filter: dict[str, Any]) -> Job:
    made = world.client("manager").post(
        f"{API}/projects/{world.project.pk}/prelabel",
        {"model_version": version_id, "filter": task_filter},
        format="json",
    )
    assert made.status_code == 202, made.content
    job = run(made.json()["id"])
    assert job.state == "succeeded", job.failure
    return job


def _held_out(release: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """The release's test items: task id → frozen regions."""
    return dict(
        ReleaseItem.objects.filter(release_id=release["id"], split="test").values_list("task_id", "regions")
    )


def _predicted_classes(version_id: int, task_ids: list[int]) -> dict[int, str]:
    return {
        task_id: result[0]["label"]
        for task_id, result in Prediction.objects.filter(
            source_id=version_id, task_id__in=task_ids
        ).values_list("task_id", "result")
        if result
    }


# --- Digits: image-logreg ------------------------------------------------------------------------


@pytest.fixture
def digits(world: World, objects_dir: Path) -> tuple[dict[str, Any], list[Task], np.ndarray]:
    """450 labeled digit images released (train/val/test), and 30 more left open."""
    data = load_digits()
    labeled, left = 450, 30
    assert publish(world, _schema("classification", [str(d) for d in range(10)])).status_code == 201
    tasks = _items(world, [digit_png(data.images[i]) for i in range(labeled + left)], text=False)
    _settle(world, tasks[:labeled], [_class(str(data.target[i])) for i in range(labeled)])
    return _cut(world), tasks, data.target[: labeled + left]


@pytest.fixture
def small(world: World, objects_dir: Path) -> dict[str, Any]:
    """A ready release of 40 labeled digit images."""
    data = load_digits()
    assert publish(world, _schema("classification", [str(d) for d in range(10)])).status_code == 201
    tasks = _items(world, [digit_png(data.images[i]) for i in range(40)], text=False)
    _settle(world, tasks, [_class(str(data.target[i])) for i in range(40)])
    return _cut(world)


def test_digits_train_a_model_that_labels_held_out_images_prelabels_and_feeds_the_uncertainty_queue(
    digits: tuple[dict[str, Any], list[Task], np.ndarray], world: World
) -> None:
    release, tasks, truth = digits
    training = _trained(world, release["id"], "image-logreg", name="digits")
    version = training["model_version"]
    assert training["state"] == "succeeded" and training["phase"] == "done"
    assert (version["name"], version["kind"], version["release"]) == ("digits", "trained", release["id"])
    assert version["version"] == f"r{release['version']}-t{training['id']}"
    assert version["labels"] == [str(d) for d in range(10)] and version["outputs"] == ["classification"]

    # The model card, through the API.
    card = training["card"]
    data = card["data"]
    assert data["release"] == {
        "id": release["id"],
        "version": release["version"],
        "name": release["name"],
        "manifest_sha256": release["manifest"]["sha256"],
        "schema_version": release["schema_version"],
    }
    assert data["train_splits"] == ["train", "val"] and data["eval_split"] == "test"
    assert data["split_sizes"] == release["counts"]["by_split"]
    trained_on = data["split_sizes"]["train"] + data["split_sizes"]["val"]
    assert data["items"]["used"] == trained_on and data["items"]["skipped"] == {}
    assert card["recipe"]["name"] == "image-logreg" and card["params"]["C"] == 0.1
    assert card["features"] == {"kind": "pixels+hog", "dimensions": 580, "modality": "image"}
    assert card["label_map"] == {str(d): str(d) for d in range(10)}
    assert card["metrics"]["validation"]["method"] == "5-fold stratified cross-validation"
    assert card["metrics"]["validation"]["accuracy"] >= 0.85
    assert card["metrics"]["training"]["items"] == trained_on
    assert card["seconds"]["total"] >= card["seconds"]["fit"] > 0
    assert set(card["artifacts"]) == {"model.json", "model.npz"}
    listed = world.client("annotator").get(f"{API}/projects/{world.project.pk}/models").json()["results"]
    assert next(v for v in listed if v["id"] == version["id"])["card"] == card

    # Held-out accuracy, from the trained model's predictions made by a normal pre-label job.
    held_out = _held_out(release)
    _prelabel(world, version["id"], {"tasks": sorted(held_out)})
    predicted = _predicted_classes(version["id"], sorted(held_out))
    accuracy = np.mean([predicted[t] == regions[0]["label"] for t, regions in held_out.items()])
    assert len(predicted) == len(held_out) >= 120 and accuracy >= 0.9, accuracy

    # The open tasks get pre-labeled, each prediction pointing to the version, scored.
    open_tasks = tasks[450:]
    job = _prelabel(world, version["id"], {"state": ["open"]})
    assert job.result["predicted"] == len(open_tasks) == 30
    rows = Prediction.objects.filter(task__in=open_tasks)
    assert {p.source_id for p in rows} == {version["id"]} and all(0 < (p.score or 0) <= 1 for p in rows)
    guessed = _predicted_classes(version["id"], [t.pk for t in open_tasks])
    right = sum(guessed[t.pk] == str(truth[450 + i]) for i, t in enumerate(open_tasks))
    assert right >= 26, right

    manager = world.client("manager")
    url = f"{API}/projects/{world.project.pk}"
    changed = manager.patch(f"{url}/workflow", {"ordering": "uncertainty", "review": "none"}, format="json")
    assert changed.status_code == 200, changed.content
    # Active learning: the uncertainty-first queue hands out what the model doubts most first.
    scores = dict(
        Prediction.objects.filter(source_id=version["id"], task__state="open").values_list("task_id", "score")
    )
    ranked = sorted(scores, key=lambda t: (scores[t], t))
    assert ranked[0] != min(scores)  # served by doubt, not in the order tasks were made
    client = world.client("annotator")
    handed = client.post(f"{url}/next")
    assert handed.status_code == 200, handed.content
    body = handed.json()
    assert body["task"]["id"] == ranked[0]
    (offered,) = [
        p for p in body["predictions"] if p["model_version"] == f"{version['name']}:{version['version']}"
    ]
    submitted = client.post(
        f"{url}/assignments/{body['assignment']['id']}/submit",
        {
            "lease_id": body["assignment"]["lease_id"],
            "result": [{k: v for k, v in r.items() if k != "score"} for r in offered["result"]],
            "from_prediction": offered["id"],
        },
        format="json",
    )
    assert submitted.status_code == 201, submitted.content
    second = client.post(f"{url}/next").json()
    assert second["task"]["id"] == ranked[1]

    # The next release's lineage of that item names the model and the release it learned from.
    later = _cut(world)
    item_id = Task.objects.get(id=ranked[0]).item_id
    lineage = manager.get(f"{API}/releases/{later['id']}/items/{item_id}/lineage").json()
    (annotation,) = lineage["annotations"]
    prelabel = annotation["prelabel"]
    assert prelabel["registered_version"] == version["id"]
    assert prelabel["training_release"] == {
        "id": release["id"],
        "version": release["version"],
        "project": world.project.pk,
    }
    assert prelabel["outcome"]["kept"] == 1


def test_a_worker_killed_between_chunks_registers_one_version(
    small: dict[str, Any], world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = small
    monkeypatch.setattr(training_jobs, "FEATURE_CHUNK_ITEMS", 10)
    started = _train(world, release["id"], "image-logreg", params={"folds": 0})
    job_id = started.json()["job"]["id"]

    class Killed(BaseException):
        """Like SIGKILL: no handler of the job engine runs."""

    def die_after_fit(job: Job, index: int) -> None:
        if index == job.params["feature_chunks"]:
            raise Killed

    with pytest.raises(Killed):
        jobs.job_execute(job_id=job_id, on_chunk=die_after_fit)
    shown = world.client("manager").get(f"{API}/trainings/{started.json()['id']}").json()
    assert shown["state"] == "running" and shown["phase"] == "artifacts" and shown["model_version"] is None
    assert not ModelVersion.objects.filter(release_id=release["id"]).exists()
    Job.objects.filter(id=job_id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    redone: list[int] = []
    assert jobs.job_execute(job_id=job_id, on_chunk=lambda _, i: redone.append(i)) == "succeeded"
    job = Job.objects.get(id=job_id)
    assert redone == [job.params["feature_chunks"] + 1]
    assert ModelVersion.objects.filter(release_id=release["id"]).count() == 1
    training = Training.objects.get(id=started.json()["id"])
    assert training.model_version is not None and training.model_version.card["data"]["items"]["used"] >= 25
    assert job.done == job.total
    # The work files are gone; the model's files and card stay.
    prefix = job.params["prefix"]
    assert sorted(i.key[len(prefix) :] for i in object_store().iter_objects(prefix)) == [
        "card.json",
        "model.json",
        "model.npz",
    ]


def test_a_batch_whose_worker_died_mid_chunk_is_computed_by_the_fit_and_counted_once(
    small: dict[str, Any], world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = small
    monkeypatch.setattr(training_jobs, "FEATURE_CHUNK_ITEMS", 10)
    job_id = _train(world, release["id"], "image-logreg", params={"folds": 0}).json()["job"]["id"]

    class Killed(BaseException):
        pass

    def die(job: Job, index: int) -> None:
        raise Killed

    with pytest.raises(Killed):
        jobs.job_execute(job_id=job_id, on_chunk=die)
    # A second worker took batch 1 and died in its middle: the lease is left, expired.
    JobChunk.objects.create(
        job_id=job_id,
        index=1,
        state=ChunkState.LEASED,
        token="dead",
        lease_until=timezone.now() - timedelta(1),
    )
    Job.objects.filter(id=job_id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    order: list[int] = []
    assert jobs.job_execute(job_id=job_id, on_chunk=lambda _, i: order.append(i)) == "succeeded"
    job = Job.objects.get(id=job_id)
    fit = job.params["feature_chunks"]
    assert order.index(fit) < order.index(1)  # the fit ran before batch 1's own chunk came back
    version = ModelVersion.objects.get(release_id=release["id"])
    trained_on = sum(release["counts"]["by_split"][s] for s in ("train", "val"))
    assert version.card["data"]["items"]["used"] == trained_on == job.result["items_used"]
    assert job.done == job.total == trained_on + 2


def test_a_cancelled_training_registers_nothing(small: dict[str, Any], world: World) -> None:
    release = small
    started = _train(world, release["id"], "image-logreg")
    job_id = started.json()["job"]["id"]

    def cancel_after_features(job: Job, index: int) -> None:
        if index == 0:
            cancelled = world.client("ml_engineer").post(f"{API}/jobs/{job_id}/cancel")
            assert cancelled.status_code == 200, cancelled.content

    assert jobs.job_execute(job_id=job_id, on_chunk=cancel_after_features) == "cancelled"
    shown = world.client("manager").get(f"{API}/trainings/{started.json()['id']}").json()
    assert shown["state"] == "cancelled" and shown["model_version"] is None and shown["card"] is None
    assert not ModelVersion.objects.filter(kind="trained").exists()


def test_a_changed_model_file_is_refused_before_it_is_loaded(small: dict[str, Any], world: World) -> None:
    release = small
    version = _trained(world, release["id"], "image-logreg", params={"folds": 0})["model_version"]
    entry = ModelVersion.objects.get(id=version["id"]).artifacts["model.npz"]
    store = object_store()
    with store.open(entry["key"]) as handle:
        data = bytearray(handle.read())
    data[-20] ^= 0xFF
    store.put_bytes(entry["key"], bytes(data), content_type="application/octet-stream")
    made = world.client("manager").post(
        f"{API}/projects/{world.project.pk}/prelabel", {"model_version": version["id"]}, format="json"
    )
    job = run(made.json()["id"])
    assert job.state == "failed" and "SHA-256" in job.failure
    assert not Prediction.objects.filter(source_id=version["id"]).exists()


def test_a_release_of_one_class_fails_its_training_saying_why(world: World, objects_dir: Path) -> None:
    data = load_digits()
    assert publish(world, _schema("classification", [str(d) for d in range(10)])).status_code == 201
    tasks = _items(world, [digit_png(data.images[i]) for i in range(10)], text=False)
    _settle(world, tasks, [_class("3")] * 10)
    started = _train(world, _cut(world)["id"], "image-logreg")
    job = run(started.json()["job"]["id"])
    assert job.state == "failed" and "at least two classes" in job.failure
    shown = world.client("manager").get(f"{API}/trainings/{started.json()['id']}").json()
    assert shown["state"] == "failed" and shown["model_version"] is None
    assert not ModelVersion.objects.filter(kind="trained").exists()


def test_a_trained_model_asks_for_an_evaluation_on_the_held_out_split(
    small: dict[str, Any], world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = small
    asked: list[tuple[int, int, str, int | None]] = []
    monkeypatch.setattr(hooks, "_MODEL_TRAINED", [lambda v, r, s, a: asked.append((v.pk, r.pk, s, a))])
    training = _trained(world, release["id"], "image-logreg", params={"folds": 0})
    version = training["model_version"]
    assert asked == [(version["id"], release["id"], "test", world.users["ml_engineer"].pk)]
    assert training["job"]["result"]["evaluation"] == "asked on test"

    def refuse(*_: Any) -> None:
        raise Conflict("No evaluation today.", code="busy")

    # A refused evaluation does not undo the model.
    monkeypatch.setattr(hooks, "_MODEL_TRAINED", [refuse])
    again = _trained(world, release["id"], "image-logreg", params={"folds": 0})
    assert again["model_version"]["id"] != version["id"]
    assert again["job"]["result"]["evaluation"] == "refused: No evaluation today."
    # Without a held-out split nothing is asked.
    monkeypatch.setattr(hooks, "_MODEL_TRAINED", [refuse])
    alone = _trained(world, release["id"], "image-logreg", params={"folds": 0, "eval_split": None})
    assert alone["job"]["result"]["evaluation"] == "no held-out split"


# --- Topics: text-logreg -------------------------------------------------------------------------

TOPICS: dict[str, tuple[list[str], list[str]]] = {
    "sports": (
        ["The striker", "The goalkeeper", "The coach", "The home team", "Our captain", "The champion"],
        ["scored twice in the second half", "won the final set after a long rally",
         "was sent off after a late tackle", "lifted the trophy in front of the fans",
         "broke the world record in the sprint", "signed a new contract with the club"],
    ),
    "finance": (
        ["Shares of the bank", "The central bank", "Investors", "The bond market", "The company", "Analysts"],
        ["fell four percent after the earnings report", "raised interest rates by a quarter point",
         "worried about inflation and rising debt", "expect quarterly profits to beat forecasts",
         "cut its dividend to shore up capital", "sold government bonds as yields climbed"],
    ),
    "weather": (
        ["Heavy rain", "A cold front", "The storm", "Forecasters", "Strong winds", "A heatwave"],
        ["will bring snow to the mountains overnight", "flooded roads across the valley",
         "expect temperatures to drop below freezing", "knocked down trees and power lines",
         "is moving north with thunder and hail", "pushed temperatures above forty degrees"],
    ),
    "cooking": (
        ["Simmer the sauce", "Knead the dough", "The chef", "This recipe", "Roast the vegetables",
         "Whisk the eggs"],
        ["with garlic, butter and fresh thyme", "until it is smooth and elastic",
         "seasons the soup with salt and pepper", "needs two cups of flour and a pinch of sugar",
         "in a hot oven for forty minutes", "and fold them gently into the batter"],
    ),
}  # fmt: skip


def _topic_texts(n_per_topic: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for topic, (subjects, predicates) in TOPICS.items():
        for _ in range(n_per_topic):
            out.append((f"{rng.choice(subjects)} {rng.choice(predicates)}.", topic))
    rng.shuffle(out)
    return out


def test_text_topics_train_to_a_model_that_classifies_held_out_texts(
    world: World, objects_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert publish(world, _schema("classification", sorted(TOPICS))).status_code == 201
    texts = _topic_texts(30, seed=1)
    tasks = _items(world, [text.encode() for text, _ in texts], text=True)
    _settle(world, tasks, [_class(topic) for _, topic in texts])
    release = _cut(world)
    training = _trained(world, release["id"], "text-logreg")
    version, card = training["model_version"], training["card"]
    assert card["features"] == {"kind": "minilm", "dimensions": 384, "modality": "text"}
    assert version["modalities"] == ["text"] and sorted(version["labels"]) == sorted(TOPICS)
    assert card["metrics"]["validation"]["accuracy"] >= 0.85
    held_out = _held_out(release)
    _prelabel(world, version["id"], {"tasks": sorted(held_out)})
    predicted = _predicted_classes(version["id"], sorted(held_out))
    accuracy = np.mean([predicted[t] == regions[0]["label"] for t, regions in held_out.items()])
    assert len(held_out) >= 30 and accuracy >= 0.85, accuracy
    # Where the embeddings extra is missing, the model is refused up front, naming it.
    monkeypatch.setitem(builtin.EXTRA_MODULES, "embeddings", ("loupe_module_not_installed",))
    refused = world.client("manager").post(
        f"{API}/projects/{world.project.pk}/prelabel", {"model_version": version["id"]}, format="json"
    )
    assert assert_error(refused, 409, "model_unavailable")["details"]["extra"] == "embeddings"


def test_a_recipe_whose_extra_is_missing_is_refused_naming_it(
    world: World, objects_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert publish(world, _schema("classification", sorted(TOPICS))).status_code == 201
    texts = _topic_texts(3, seed=2)
    _settle(world, _items(world, [t.encode() for t, _ in texts], text=True), [_class(c) for _, c in texts])
    release = _cut(world)
    monkeypatch.setitem(builtin.EXTRA_MODULES, "embeddings", ("loupe_module_not_installed",))
    refused = assert_error(_train(world, release["id"], "text-logreg"), 409, "model_unavailable")
    assert refused["details"]["extra"] == "embeddings" and "loupe[embeddings]" in refused["message"]
    assert not Training.objects.exists() and not Job.objects.filter(kind="labeling.training").exists()


# --- Entities: spacy-ner -------------------------------------------------------------------------

PEOPLE = [
    "Maria Lopez",
    "James Carter",
    "Aiko Tanaka",
    "Oliver Smith",
    "Fatima Khan",
    "Lukas Becker",
    "Sofia Rossi",
    "Chen Wei",
    "David Okafor",
    "Emma Dubois",
    "Raj Patel",
    "Anna Nowak",
]
ORGS = [
    "Siemens",
    "Google",
    "the World Bank",
    "Toyota",
    "Unilever",
    "Amnesty International",
    "Deutsche Bank",
    "Airbus",
    "Microsoft",
    "the Red Cross",
    "Samsung",
    "Reuters",
]
PLACES = [
    "Berlin",
    "Nairobi",
    "Tokyo",
    "Toronto",
    "Madrid",
    "Cairo",
    "Oslo",
    "Mumbai",
    "Chicago",
    "Lyon",
    "Seoul",
    "Lagos",
]
SENTENCES = [
    "{person} joined {org} as chief economist last year.",
    "{org} opened a new office in {place} on Monday.",
    "In {place}, {person} met executives from {org}.",
    "{person}, who grew up in {place}, now leads {org}.",
    "Shares of {org} rose after {person} spoke in {place}.",
    "The mayor of {place} thanked {person} for the donation.",
    "{person} said the factory near {place} would close by March.",
    "A spokesperson for {org} declined to comment on the report.",
    "{person} will travel to {place} next week to sign the agreement.",
    "Analysts expect {org} to announce job cuts in {place}.",
    "Thousands gathered in {place} to hear {person} speak.",
    "Prices fell sharply in {place} last month.",
    "Nobody expected the storm to be so strong.",
]  # fmt: skip


def _news(n: int, seed: int) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """Short news sentences with their person, org and place spans (character offsets)."""
    rng = random.Random(seed)
    pools = {"person": PEOPLE, "org": ORGS, "place": PLACES}
    out = []
    for _ in range(n):
        text, spans = "", []
        for part in re.split(r"(\{\w+\})", rng.choice(SENTENCES)):
            if part[1:-1] in pools:
                value = rng.choice(pools[part[1:-1]])
                spans.append((len(text), len(text) + len(value), part[1:-1]))
                text += value
            else:
                text += part
        out.append((text, spans))
    return out


def _spans(spans: list[tuple[int, int, str]]) -> list[dict[str, Any]]:
    return [
        {"id": f"s{i}", "type": "span", "label": label, "attributes": {}, "geometry": {"start": s, "end": e}}
        for i, (s, e, label) in enumerate(spans)
    ]


def test_spacy_ner_learns_the_release_s_spans_and_reports_span_f1(world: World, objects_dir: Path) -> None:
    assert publish(world, _schema("span", ["org", "person", "place"])).status_code == 201
    news = _news(150, seed=3)
    tasks = _items(world, [text.encode() for text, _ in news], text=True)
    _settle(world, tasks, [_spans(spans) for _, spans in news])
    release = _cut(world)
    training = _trained(world, release["id"], "spacy-ner", params={"epochs": 8})
    version, card = training["model_version"], training["card"]
    assert version["task_type"] == "ner" and version["outputs"] == ["span"]
    assert version["labels"] == ["org", "person", "place"]
    assert set(card["artifacts"]) == {"model.json", "pipeline.tar.gz"}
    validation = card["metrics"]["validation"]
    assert validation["method"].endswith("items held back (0.2)") and validation["f1"] >= 0.8
    assert set(validation["per_label"]) == {"org", "person", "place"}
    # Span F1 on the held-out split, from a normal pre-label job's predictions.
    held_out = _held_out(release)
    _prelabel(world, version["id"], {"tasks": sorted(held_out)})
    found = dict(
        Prediction.objects.filter(source_id=version["id"], task_id__in=held_out).values_list(
            "task_id", "result"
        )
    )
    truth = [
        {(r["geometry"]["start"], r["geometry"]["end"], r["label"]) for r in held_out[t]} for t in held_out
    ]
    guessed = [
        {(r["geometry"]["start"], r["geometry"]["end"], r["label"]) for r in found.get(t, [])}
        for t in held_out
    ]
    assert span_metrics(truth, guessed)["f1"] >= 0.8
    scored = [r["score"] for regions in found.values() for r in regions]
    assert scored and all(0 < s <= 1 for s in scored)


# --- Permissions and bad requests ----------------------------------------------------------------


def test_who_may_train_and_read_trainings(small: dict[str, Any], world: World) -> None:
    for who in ("reviewer", "annotator"):
        assert_error(_train(world, small["id"], "image-logreg", who=who), 403)
    for who in ("outsider", "member"):
        assert_error(_train(world, small["id"], "image-logreg", who=who), 404)
    assert not Training.objects.exists()
    for who in ("manager", "ml_engineer", "owner"):
        assert _train(world, small["id"], "image-logreg", who=who).status_code == 202
    listed = world.client("reviewer").get(f"{API}/releases/{small['id']}/trainings")
    assert listed.status_code == 200 and len(listed.json()["results"]) == 3
    training_id = listed.json()["results"][0]["id"]
    assert_error(world.client("annotator").get(f"{API}/releases/{small['id']}/trainings"), 403)
    assert_error(world.client("annotator").get(f"{API}/trainings/{training_id}"), 403)
    assert_error(world.client("outsider").get(f"{API}/trainings/{training_id}"), 404)
    assert_error(world.client("outsider").get(f"{API}/releases/{small['id']}/trainings"), 404)
    assert_error(world.client("manager").get(f"{API}/trainings/999999"), 404)


def test_bad_trainings_are_refused_and_write_nothing(small: dict[str, Any], world: World) -> None:
    release_id = small["id"]
    jobs_before = Job.objects.count()
    assert_error(_train(world, release_id, "deep-magic"), 400, "invalid")
    for params, field in (
        ({"C": -1}, "params.C"),
        ({"C": "big"}, "params.C"),
        ({"features": "colour"}, "params.features"),
        ({"folds": 1}, "params.folds"),
        ({"learning_rate": 0.1}, "params.learning_rate"),
        ({"train_splits": ["train", "holdout"]}, "params.train_splits"),
        ({"train_splits": "train"}, "params.train_splits"),
        ({"eval_split": "val"}, "params.eval_split"),
    ):
        refused = assert_error(_train(world, release_id, "image-logreg", params=params), 400, "invalid")
        assert refused["details"]["field"] == field, (params, refused)
    # The schema has no span class, and the release no text item.
    assert_error(_train(world, release_id, "spacy-ner"), 422, "recipe_not_applicable")
    assert_error(_train(world, release_id, "text-logreg"), 422, "recipe_not_applicable")
    assert_error(_train(world, 999999, "image-logreg"), 404)
    assert not Training.objects.exists() and Job.objects.count() == jobs_before
    building = world.client("manager").post(
        f"{API}/projects/{world.project.pk}/releases", {"name": "b"}, format="json"
    )
    assert_error(_train(world, building.json()["id"], "image-logreg"), 409, "release_not_ready")
    assert not Training.objects.exists()


# --- Pure functions ------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 3])
def test_a_linear_model_gives_scikit_learn_s_probabilities(classes: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 7)) * [1, 2, 3, 4, 5, 6, 7] + 3
    y = np.array([f"c{i % classes}" for i in range(120)])
    x[:, 0] += (np.arange(120) % classes) * 2
    scaler = StandardScaler().fit(x)
    classifier = LogisticRegression(C=0.5, max_iter=1000).fit(scaler.transform(x), y)
    model = LinearModel(
        tuple(classifier.classes_), scaler.mean_, scaler.scale_, classifier.coef_, classifier.intercept_
    )
    again = LinearModel.from_npz(model.to_npz(), model.labels)
    expected = classifier.predict_proba(scaler.transform(x))
    assert np.allclose(again.probabilities(x), expected, atol=1e-10)


def test_hog_features_are_scikit_image_s() -> None:
    from skimage import data, transform
    from skimage.feature import hog

    photo = transform.resize(data.camera(), (32, 40), anti_aliasing=True)
    noise = np.random.default_rng(1).random((32, 32))
    for picture in (photo, noise):
        reference = hog(
            picture, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm="L2-Hys"
        )
        assert np.allclose(hog_vector(picture), reference, atol=1e-6)


def test_model_files_are_checked_and_archives_unpacked_safely(tmp_path: Path) -> None:
    files = {"k/model.json": b'{"format": 1}'}
    artifacts = {"model.json": file_entry("k/model.json", files["k/model.json"])}
    assert verified_read(files.__getitem__, artifacts, "model.json") == b'{"format": 1}'
    with pytest.raises(ModelUnavailable, match="SHA-256"):
        verified_read({"k/model.json": b'{"format": 2}'}.__getitem__, artifacts, "model.json")
    with pytest.raises(ModelUnavailable, match=r"no model\.npz"):
        verified_read(files.__getitem__, artifacts, "model.npz")
    source = tmp_path / "pipeline"
    (source / "ner").mkdir(parents=True)
    (source / "ner" / "model").write_bytes(b"weights")
    (source / "config.cfg").write_text("[nlp]\n")
    unpack_directory(pack_directory(source), tmp_path / "out")
    assert (tmp_path / "out" / "ner" / "model").read_bytes() == b"weights"
    for name, kind in (
        ("../escape", tarfile.REGTYPE),
        ("/etc/passwd", tarfile.REGTYPE),
        ("link", tarfile.SYMTYPE),
    ):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            member = tarfile.TarInfo(name)
            member.type, member.linkname = kind, "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            archive.addfile(member, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
        with pytest.raises(ModelUnavailable, match="refused entry"):
            unpack_directory(buffer.getvalue(), tmp_path / "bad")
    assert not (tmp_path / "escape").exists()


def test_span_metrics_count_exact_matches() -> None:
    truth = [{(0, 5, "person"), (10, 15, "org")}, {(3, 8, "place")}]
    found = [{(0, 5, "person"), (10, 14, "org")}, {(3, 8, "place"), (20, 25, "org")}]
    scores = span_metrics(truth, found)
    # 2 right of 4 found, 2 of 3 true spans found.
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.5, 0.6667, 0.5714)
    assert scores["per_label"]["org"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert json.dumps(scores)  # plain JSON, for the card


def test_pixel_vectors_ignore_exposure_and_a_flat_picture_carries_nothing() -> None:
    blocks = np.kron(np.array([[0.0, 1.0], [2.0, 3.0]]), np.ones((2, 2)))  # 4x4, four flat blocks
    expected = (blocks - blocks.mean()) / blocks.std()
    np.testing.assert_allclose(pixel_vector(blocks), expected.ravel(), rtol=1e-6)
    np.testing.assert_allclose(pixel_vector(blocks * 3 + 50), expected.ravel(), rtol=1e-6)
    flat = pixel_vector(np.full((16, 16), 200.0))
    assert flat.shape == (256,) and not flat.any()
