"""The model loop end to end, through the API alone: texts uploaded, labeled by annotators through
the queue, released, a model trained on the release and evaluated on its held-out split, the rest
of the texts pre-labeled by that model, and annotators who start from its predictions keeping the
right ones: the pre-label report measures how much of the model's work they kept.

Jobs run in this process as a worker runs them (`run`); every other step is an API call by the
role that makes it in production.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.conftest import World
from tests.labeling.conftest import API, publish, run
from tests.labeling.releases import another_annotator
from tests.storage.conftest import upload

pytestmark = pytest.mark.django_db

# Four topics. Subjects and predicates share a few words across topics ("record", "rates", "heat",
# "the city"…), and one text in seven carries a clause from another topic: a model has to learn
# which words matter, and gets some texts wrong.
TOPICS: dict[str, tuple[list[str], list[str]]] = {
    "sports": (
        ["The striker", "The goalkeeper", "The coach", "The home team", "Our captain", "The champion",
         "The city's club"],
        ["scored twice in the second half", "won the final set after a long rally",
         "was sent off after a late tackle", "lifted the trophy in front of the fans",
         "broke the world record in the sprint", "signed a new contract with the club",
         "felt the heat in the last minutes"],
    ),
    "finance": (
        ["Shares of the bank", "The central bank", "Investors", "The bond market", "The company",
         "Analysts in the city"],
        ["fell four percent after the earnings report", "raised interest rates by a quarter point",
         "worried about inflation and rising debt", "expect quarterly profits to beat forecasts",
         "cut its dividend to shore up capital", "sold government bonds as yields climbed",
         "posted a record loss for the year"],
    ),
    "weather": (
        ["Heavy rain", "A cold front", "The storm", "Forecasters", "Strong winds", "A heatwave",
         "The city's weather service"],
        ["will bring snow to the mountains overnight", "flooded roads across the valley",
         "expect temperatures to drop below freezing", "knocked down trees and power lines",
         "is moving north with thunder and hail", "pushed temperatures to a record high",
         "warned that rates of rainfall will rise"],
    ),
    "cooking": (
        ["Simmer the sauce", "Knead the dough", "The chef", "This recipe", "Roast the vegetables",
         "Whisk the eggs"],
        ["with garlic, butter and fresh thyme", "until it is smooth and elastic",
         "seasons the soup with salt and pepper", "needs two cups of flour and a pinch of sugar",
         "in a hot oven for forty minutes", "and fold them gently into the batter",
         "over a low heat until golden"],
    ),
}  # fmt: skip
SPEC: dict[str, Any] = {
    "settings": {"classification": "single"},
    "classes": [{"name": name, "color": "#336699", "tools": ["classification"]} for name in sorted(TOPICS)],
}
ITEMS, LABELED = 260, 200
SPLITS = {"ratios": {"train": 0.7, "val": 0.1, "test": 0.2}, "stratify": True, "seed": "loop"}
# Simulated time an annotator spends on a text: reading and choosing a class, or confirming a
# suggestion that is right.
CHOOSE_MS, CONFIRM_MS = 3_000, 1_000


def topic_texts(count: int, seed: int) -> dict[str, tuple[str, str]]:
    """`count` distinct texts, topics taken in turn: item name → (text, topic)."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    texts: dict[str, str] = {}
    while len(texts) < count:
        topic = names[len(texts) % len(names)]
        subjects, predicates = TOPICS[topic]
        text = f"{rng.choice(subjects)} {rng.choice(predicates)}."
        if rng.random() < 1 / 7:  # noise: a clause about something else
            other_subjects, other_predicates = TOPICS[rng.choice([t for t in names if t != topic])]
            text += f" {rng.choice(other_subjects)} {rng.choice(other_predicates)}."
        if text not in texts:
            texts[text] = topic
    order = list(texts.items())
    rng.shuffle(order)
    return {f"texts/{n:04d}.txt": (text, topic) for n, (text, topic) in enumerate(order)}


def classification(label: str, region_id: str = "c") -> list[dict[str, Any]]:
    return [{"id": region_id, "type": "classification", "label": label, "attributes": {}, "geometry": {}}]


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.content[:2000])
    return response.json() if response.content else None


def test_a_model_trained_on_released_labels_prelabels_the_rest_and_annotators_keep_what_it_got_right(
    world: World, objects_dir: Path
) -> None:
    manager, ml_engineer = world.client("manager"), world.client("ml_engineer")
    annotators: list[APIClient] = [world.client("annotator"), another_annotator(world)[1]]
    project = f"{API}/projects/{world.project.pk}"
    ok(publish(world, SPEC), 201)
    ok(manager.patch(f"{project}/workflow", {"review": "none", "overlap": 1}, format="json"))

    # The texts are uploaded into a dataset linked to the project: ingest makes a task of each.
    corpus = topic_texts(ITEMS, seed=5)
    dataset = ok(
        manager.post(
            f"{API}/datasets",
            {"organization": world.org.pk, "name": "news", "projects": [world.project.pk]},
            format="json",
        ),
        201,
    )
    started = ok(upload(manager, dataset["id"], {n: t.encode() for n, (t, _) in corpus.items()}), 202)
    ingest = run(started["id"])
    assert ingest.state == "succeeded" and ingest.result["created"] == ITEMS, (ingest.failure, ingest.result)

    # Annotators label 200 texts through the queue, with no model to start from.
    def work(client: APIClient, decide: Any) -> bool:
        handed = client.post(f"{project}/next")
        if handed.status_code == 204:
            return False
        body = ok(handed)
        assert body["item"]["modality"] == "text"
        result, lead_time_ms, from_prediction = decide(body, corpus[body["item"]["name"]][1])
        ok(
            client.post(
                f"{project}/assignments/{body['assignment']['id']}/submit",
                {
                    "lease_id": body["assignment"]["lease_id"],
                    "result": result,
                    "lead_time_ms": lead_time_ms,
                    "from_prediction": from_prediction,
                },
                format="json",
            ),
            201,
        )
        return True

    def without_model(body: dict[str, Any], truth: str) -> tuple[list[dict[str, Any]], int, None]:
        assert body["predictions"] == []
        return classification(truth), CHOOSE_MS, None

    for n in range(LABELED):
        assert work(annotators[n % 2], without_model)
    done = ok(manager.get(f"{project}/tasks?state=done&page_size=500"))["results"]
    open_tasks = ok(manager.get(f"{project}/tasks?state=open&page_size=500"))["results"]
    assert (len(done), len(open_tasks)) == (LABELED, ITEMS - LABELED)

    # A manager cuts a release; an ML engineer trains on it with one request.
    made = ok(manager.post(f"{project}/releases", {"name": "first", "splits": SPLITS}, format="json"), 202)
    assert run(made["job"]["id"]).state == "succeeded"
    release = ok(ml_engineer.get(f"{API}/releases/{made['id']}"))
    assert release["state"] == "ready" and release["counts"]["items"] == LABELED
    started = ok(
        ml_engineer.post(
            f"{API}/releases/{release['id']}/trainings",
            {"recipe": "text-logreg", "name": "topics"},
            format="json",
        ),
        202,
    )
    assert run(started["job"]["id"]).state == "succeeded"
    training = ok(ml_engineer.get(f"{API}/trainings/{started['id']}"))
    version = training["model_version"]
    assert training["state"] == "succeeded" and version["kind"] == "trained"
    assert training["job"]["result"]["evaluation"] == "asked on test"
    trained_on = release["counts"]["by_split"]["train"] + release["counts"]["by_split"]["val"]
    assert training["card"]["data"]["items"]["used"] == trained_on

    # The evaluation the training asked for, on the held-out split the model never saw.
    (asked,) = ok(ml_engineer.get(f"{API}/releases/{release['id']}/evaluations?split=test"))["results"]
    assert asked["model_version"]["id"] == version["id"] and asked["state"] == "queued"
    assert run(asked["job"]["id"]).state == "succeeded"
    evaluation = ok(ml_engineer.get(f"{API}/evaluations/{asked['id']}"))
    assert evaluation["state"] == "succeeded" and evaluation["task_type"] == "classification"
    assert evaluation["counts"]["items"] == release["counts"]["by_split"]["test"] >= 30
    held_out_accuracy = evaluation["summary"]["classification"]["accuracy"]
    assert held_out_accuracy >= 0.6, evaluation["metrics"]  # 4 topics: a guess is right 1 time in 4

    # The trained version pre-labels the texts nobody labeled yet.
    prelabel = ok(
        manager.post(
            f"{project}/prelabel",
            {"model_version": version["id"], "filter": {"state": ["open"]}},
            format="json",
        ),
        202,
    )
    job = run(prelabel["id"])
    assert job.state == "succeeded" and job.result["predicted"] == ITEMS - LABELED, job.result

    # Annotators start from the predictions: a right one is confirmed as it is, a wrong one fixed.
    label = f"{version['name']}:{version['version']}"
    outcomes: list[bool] = []

    def from_model(body: dict[str, Any], truth: str) -> tuple[list[dict[str, Any]], int, int]:
        (offered,) = [p for p in body["predictions"] if p["model_version"] == label]
        (region,) = offered["result"]
        assert 0 < region["score"] <= 1
        right = region["label"] == truth
        outcomes.append(right)
        if right:
            return [{k: v for k, v in region.items() if k != "score"}], CONFIRM_MS, offered["id"]
        return classification(truth, region_id=region["id"]), CHOOSE_MS, offered["id"]

    n = 0
    while work(annotators[n % 2], from_model):
        n += 1
    assert len(outcomes) == ITEMS - LABELED

    # The report: how much of the model's work was kept, and the time it saved.
    report = ok(manager.get(f"{project}/prelabel/report?model_version={version['id']}"))
    kept = sum(outcomes)
    # The version's predictions in the project: the evaluation's, on the held-out texts, and the
    # pre-label job's, which annotators started from.
    assert report["predictions"] == evaluation["counts"]["items"] + ITEMS - LABELED
    assert report["annotations_from_predictions"] == ITEMS - LABELED
    assert report["annotations_without_predictions"] == LABELED  # nothing to accept without a model
    assert (report["regions_kept"], report["regions_edited"]) == (kept, len(outcomes) - kept)
    assert report["acceptance_rate"] == pytest.approx(kept / len(outcomes))
    assert report["acceptance_rate"] >= 0.7
    assert report["acceptance_rate"] >= held_out_accuracy - 0.15, (report, held_out_accuracy)
    # Most annotations started from a right prediction: the median one took the confirming time.
    assert report["median_lead_time_ms_with"] == CONFIRM_MS
    assert report["median_lead_time_ms_without"] == CHOOSE_MS
    assert report["time_saved_ratio"] == pytest.approx(1 - CONFIRM_MS / CHOOSE_MS)

    # The next release holds every text, each pre-labeled one traced to the model that proposed it.
    later = ok(manager.post(f"{project}/releases", {"name": "second", "splits": SPLITS}, format="json"), 202)
    assert run(later["job"]["id"]).state == "succeeded"
    second = ok(manager.get(f"{API}/releases/{later['id']}"))
    assert second["counts"]["items"] == ITEMS and second["parent"] == release["id"]
    item_id = int(open_tasks[0]["item"])
    lineage = ok(manager.get(f"{API}/releases/{second['id']}/items/{item_id}/lineage"))
    (annotation,) = lineage["annotations"]
    assert annotation["prelabel"]["registered_version"] == version["id"]
    assert annotation["prelabel"]["training_release"]["id"] == release["id"]
