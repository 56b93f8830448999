"""The model loop: how much annotator time a model trained in Loupe saves, round after round.

A text project of 8 topics in 4 pairs that share vocabulary (football / tennis, stocks / banking,
storm / heat, baking / stovetop): each text is two clauses, the first one's subject always of its
own topic, the rest drawn from its own topic, its sibling's, everyday filler or another topic, so a
model must learn which words tell siblings apart, and it learns that better with more labels.
The labels are known (the topic each text was written from). Simulated annotators always give
the true topic; a text costs them 3 units of time without a model, 1 unit to confirm a prediction
that is right and 3 to fix one that is wrong. They record it as the annotation's active time
(`lead_time_ms`, UNIT_MS per unit), and the figures are read back from what Loupe recorded.

The loop: annotators label a seed batch with no model (round 0); then, each round, a manager cuts a
release of every label so far (80/10/10 stratified splits), an ML engineer trains `text-logreg` on
it (MiniLM sentence embeddings + logistic regression, learning from train and val), the training
asks for its evaluation on the held-out test split, the new model pre-labels the round's batch, and
annotators work through that batch from the predictions. Everything goes through the services the
API calls: ingest of uploaded files (which makes the tasks), `task_next` / `assignment_submit` with
`from_prediction`, `release_create`, `training_start`, `prelabel_start` and the pre-label report.
Each job (ingest, release build, training, evaluation, pre-label) runs in this process as a worker
runs it (`job_execute` until done); its Celery message is not sent.

loop_round<N>_accuracy          the share of round N's batch whose predicted topic was the true
                                one: what annotators saw (N = 1, 2, 3…). Checked against the
                                pre-label report's acceptance rate (kept / predicted), which must
                                be the same number, or the scenario fails
loop_round<N>_heldout_accuracy  the same model on its release's held-out test split, from the
                                evaluation the training asked for (context: the promise vs the
                                batch the model actually met)
loop_round<N>_trained_on        the items the model learned from
loop_round<N>_units             annotator time on round N's batch, summed from the recorded
                                lead times (round 0: the seed batch, with no model)
loop_round<N>_saved_pct         1 - that time / the same batch with no model (3 units a text)
loop_round<N>_machine_s         wall seconds of the round's release build, training, evaluation
                                and pre-label jobs (context)
loop_time_saved_pct             round 3's saved_pct: the time a model saves once the loop has run
                                three times (goal ≥ 30 %)
loop_time_saved_goal_ratio      loop_time_saved_pct / 30, rounded down to the hundredth: ≥ 1 meets
                                the goal

With these costs a batch's saving is 2/3 of the model's accuracy on it (a right prediction saves 2
of 3 units, a wrong one saves nothing), so the 30 % goal needs an accuracy of 45 % at least.

Scales: small = a seed batch of 60, then rounds of 90, 150 and 200 texts (500; about 30 s);
full = 100, then 200, 400 and 800 (1,500; about a minute).

Runs against DATABASE_URL when set, in a fresh database (`loupe_bench_loop`, or the name in
LOUPE_BENCH_DB) dropped at the end, else against embedded PostgreSQL; REDIS_URL is used as set (no
message is sent to it). The object store is a local folder in a temporary directory.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import Figure
from bench.isolated import run_isolated

BENCH_DB = os.environ.get("LOUPE_BENCH_DB") or "loupe_bench_loop"
SEED = 7
UNIT_MS = 1_000  # one unit of annotator time, as recorded in lead_time_ms
LABEL_UNITS, CONFIRM_UNITS, FIX_UNITS = 3, 1, 3
TIME_SAVED_GOAL_PCT = 30.0
SPLITS = {"ratios": {"train": 0.8, "val": 0.1, "test": 0.1}, "stratify": True, "seed": "loop"}
ANNOTATORS = 3

# topic: (its sibling, subjects, predicates). Siblings share words on purpose ("rates", "oven",
# "the final", "temperatures"…); every topic has 8 subjects and 8 predicates.
TOPICS: dict[str, tuple[str, list[str], list[str]]] = {
    "football": ("tennis",
        ["The striker", "The goalkeeper", "The midfielder", "The referee", "Our captain", "The home side",
         "The young winger", "The manager"],
        ["scored a header in the second half", "saved a penalty in extra time",
         "was booked for a late tackle", "won the league on goal difference",
         "crossed the ball into the box", "signed for the club on a free transfer",
         "reached the final after a tense match", "was injured in the first minutes of the game"]),
    "tennis": ("football",
        ["The top seed", "The defending champion", "Her opponent", "The qualifier", "The doubles pair",
         "The umpire", "The young player", "His coach"],
        ["won the tiebreak after a long rally", "served three aces in the final set",
         "double faulted on match point", "reached the quarter-final on clay",
         "broke serve early in the second set", "called the ball out at the baseline",
         "reached the final after a tense match", "was injured in the first game of the match"]),
    "stocks": ("banking",
        ["Shares of the carmaker", "The index", "Traders", "Tech stocks", "The fund manager", "Investors",
         "Markets in Asia", "The chipmaker's stock"],
        ["fell four percent after the earnings report", "rallied to a record close",
         "sold off as bond yields climbed", "bought the dip before the open",
         "rose on strong quarterly profits", "dropped after a profit warning",
         "reacted to the decision on interest rates", "worried about rising debt and inflation"]),
    "banking": ("stocks",
        ["The central bank", "The lender", "Mortgage rates", "The regulator", "Savers",
         "The bank's chief executive", "Credit unions", "The finance ministry"],
        ["raised interest rates by a quarter point", "tightened rules on capital reserves",
         "approved fewer home loans this quarter", "cut the rate paid on deposits",
         "fined the lender for weak controls", "warned about rising household debt",
         "reacted to the decision on interest rates", "worried about rising debt and inflation"]),
    "storm": ("heat",
        ["Heavy rain", "The storm", "Gale-force winds", "A cold front", "Flood warnings", "Thunder and hail",
         "The blizzard", "Forecasters"],
        ["flooded roads across the valley", "knocked down trees and power lines",
         "will bring snow to the mountains overnight", "forced the ferry to stay in port",
         "swept across the coast after midnight", "closed schools in the north",
         "changed temperatures across the region", "kept people indoors for days"]),
    "heat": ("storm",
        ["A heatwave", "The drought", "Temperatures", "Wildfires", "Water restrictions", "The hot spell",
         "The dry season", "Weather officials"],
        ["pushed the thermometer above forty degrees", "dried up the reservoir by August",
         "spread quickly through the dry forest", "kept farmers watering crops at night",
         "broke the record for the hottest day", "left the river at its lowest level",
         "changed temperatures across the region", "kept people indoors for days"]),
    "baking": ("stovetop",
        ["Knead the dough", "The pastry chef", "This bread recipe", "Whisk the eggs", "The sourdough starter",
         "The sponge cake", "The baker", "Grandma's pie"],
        ["until it is smooth and elastic", "needs two cups of flour and a pinch of sugar",
         "rises overnight in a warm kitchen", "and fold them gently into the batter",
         "bakes in a hot oven for forty minutes", "cools on a wire rack before icing",
         "with a little butter and salt", "tastes better the next day"]),
    "stovetop": ("baking",
        ["Simmer the sauce", "The line cook", "This curry", "Fry the onions", "The stock", "Sear the steak",
         "The cook", "Grandma's stew"],
        ["with garlic, butter and fresh thyme", "until the onions turn golden",
         "seasons the soup with salt and pepper", "in a heavy pan over high heat",
         "for two hours on a low flame", "and finish it with a splash of cream",
         "with a little butter and salt", "tastes better the next day"]),
}  # fmt: skip
FILLER = (
    ["Everyone", "Local reporters", "People in town", "The newsletter", "A neighbour", "Our editor"],
    ["talked about it all week", "said it was a day to remember", "posted photos online",
     "expects more of the same next year", "was not surprised at all", "wrote a long piece about it"],
)  # fmt: skip
# Where each clause part other than the first subject comes from: the text's own topic, its
# sibling, filler, any other topic (the rest).
OWN, SIBLING, FILL = 0.45, 0.35, 0.12


@dataclass(frozen=True)
class Scale:
    batches: tuple[int, ...]  # the seed batch (no model), then one batch per round


SCALES = {"small": Scale(batches=(60, 90, 150, 200)), "full": Scale(batches=(100, 200, 400, 800))}


def texts(count: int, seed: int = SEED) -> list[tuple[str, str]]:
    """`count` distinct texts with their topics, topics in turn and then shuffled."""
    rng = random.Random(f"{seed}:texts")  # noqa: S311  (synthetic data, not secrets)
    names = sorted(TOPICS)
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    while len(out) < count:
        topic = names[len(out) % len(names)]
        text = _text(rng, topic)
        if text not in seen:
            seen.add(text)
            out.append((text, topic))
    rng.shuffle(out)
    return out


def _text(rng: random.Random, topic: str) -> str:
    sibling = TOPICS[topic][0]
    others = [t for t in TOPICS if t not in (topic, sibling)]

    def part(which: int) -> str:
        draw = rng.random()
        if draw < OWN:
            source = TOPICS[topic][1:]
        elif draw < OWN + SIBLING:
            source = TOPICS[sibling][1:]
        elif draw < OWN + SIBLING + FILL:
            source = FILLER
        else:
            source = TOPICS[rng.choice(others)][1:]
        return rng.choice(source[which])

    first = f"{rng.choice(TOPICS[topic][1])} {part(1)}."
    return f"{first} {part(0)} {part(1)}."


def saved_pct(units: float, items: int) -> float:
    """The share of a batch's no-model time (LABEL_UNITS a text) that was saved, in %."""
    return 100.0 * (1.0 - units / (LABEL_UNITS * items)) if items else 0.0


def _ratio(value: float, goal: float) -> float:
    """value / goal rounded down to the hundredth printed, so 1.00 shows only when the goal is met."""
    return math.floor(100 * value / goal) / 100 if goal > 0 else 100.0


def run(scale: str) -> list[Figure]:
    chosen = SCALES[scale]
    return run_isolated(BENCH_DB, "lbloop", lambda home: measure(chosen, home / "upload"))


# --- The loop ----------------------------------------------------------------------------------------


@dataclass
class Round:
    number: int
    items: int
    units: float
    accuracy: float | None = None  # of the predictions annotators started from
    heldout_accuracy: float | None = None
    trained_on: int = 0
    machine_s: float = 0.0

    def describe(self) -> str:
        said = f"round {self.number}: {self.items} texts, {self.units:.0f} units"
        if self.accuracy is None:
            return said + " (no model)"
        heldout = "none" if self.heldout_accuracy is None else f"{100 * self.heldout_accuracy:.1f} %"
        return (
            f"{said}; model trained on {self.trained_on} texts, {100 * self.accuracy:.1f} % right "
            f"(held-out {heldout}); release, training, evaluation and pre-label {self.machine_s:.1f} s"
        )


def measure(scale: Scale, folder: Path) -> list[Figure]:
    if len(scale.batches) < 4:
        raise ValueError("the loop needs a seed batch and three rounds")
    corpus = texts(sum(scale.batches))
    world = _world()
    truth = _ingest(world, corpus, folder)
    rounds = [Round(0, scale.batches[0], _annotate(world, truth, _next_batch(world, scale.batches[0]), None))]
    for number, size in enumerate(scale.batches[1:], start=1):
        rounds.append(_round(world, truth, number, size))
    for done in rounds:
        print(f"# {done.describe()}", file=sys.stderr)
    saved = saved_pct(rounds[3].units, rounds[3].items)
    figures = [Figure("loop_round0_units", rounds[0].units, "units")]
    for done in rounds[1:]:
        n = done.number
        figures += [
            Figure(f"loop_round{n}_accuracy", 100 * (done.accuracy or 0.0), "%"),
            *(
                [Figure(f"loop_round{n}_heldout_accuracy", 100 * done.heldout_accuracy, "%")]
                if done.heldout_accuracy is not None
                else []
            ),
            Figure(f"loop_round{n}_trained_on", done.trained_on, "items"),
            Figure(f"loop_round{n}_units", done.units, "units"),
            Figure(f"loop_round{n}_saved_pct", saved_pct(done.units, done.items), "%"),
            Figure(f"loop_round{n}_machine_s", done.machine_s, "s"),
        ]
    return [
        *figures,
        Figure("loop_time_saved_pct", saved, "%"),
        Figure("loop_time_saved_goal_ratio", _ratio(saved, TIME_SAVED_GOAL_PCT), "x"),
    ]


@dataclass(frozen=True)
class World:
    manager: Any  # also the organization's owner
    ml_engineer: Any
    annotators: list[Any]
    project_id: int
    dataset_id: int


def _world() -> World:
    from django.contrib.auth.models import User

    from labeling.services import schema_publish
    from labeling.workflow import workflow_update
    from projects import services as project_services
    from projects.access import org_access, project_access
    from storage.services import dataset_create

    manager = User.objects.create_user(username="manager")
    org = project_services.organization_create(actor=manager, name="Bench", slug="bench")
    project = project_services.project_create(
        actor=manager, access=org_access(user=manager, organization_id=org.pk), name="Topics"
    )
    access = project_access(user=manager, project_id=project.pk)
    spec = {
        "settings": {"classification": "single"},
        "classes": [
            {"name": name, "color": "#336699", "tools": ["classification"]} for name in sorted(TOPICS)
        ],
    }
    schema_publish(actor=manager, access=access, spec=spec)
    workflow_update(actor=manager, access=access, changes={"overlap": 1, "review": "none"})
    members: dict[str, Any] = {}
    for name, role in [("ml", "ml_engineer"), *((f"annotator{n}", "annotator") for n in range(ANNOTATORS))]:
        members[name] = User.objects.create_user(username=name)
        project_services.membership_add(
            actor=manager, access=org_access(user=manager, organization_id=org.pk), username=name,
            role="member",
        )  # fmt: skip
        project_services.project_member_add(actor=manager, access=access, username=name, role=role)
    dataset = dataset_create(actor=manager, organization_id=org.pk, name="news", projects=[project.pk])
    return World(
        manager=manager,
        ml_engineer=members["ml"],
        annotators=[members[f"annotator{n}"] for n in range(ANNOTATORS)],
        project_id=int(project.pk),
        dataset_id=int(dataset.pk),
    )


def _run_job(job_id: int) -> Any:
    """Run a job to the end as a worker does; it must succeed."""
    from projects import jobs
    from projects.models import Job

    while jobs.job_execute(job_id=job_id) == "sliced":
        pass
    job = Job.objects.get(id=job_id)
    if job.state != "succeeded":
        raise RuntimeError(f"the {job.kind} job ended {job.state}: {job.failure}")
    return job


def _ingest(world: World, corpus: list[tuple[str, str]], folder: Path) -> dict[int, str]:
    """The texts uploaded as files (the ingest makes a task of each); returns {task id: topic}."""
    from labeling.models import Task
    from storage.access import dataset_access
    from storage.services import StagedFile, ingest_upload

    folder.mkdir(parents=True, exist_ok=True)
    staged = []
    topic_of: dict[str, str] = {}
    for n, (text, topic) in enumerate(corpus):
        name = f"news/{n:05d}.txt"
        path = folder / f"{n:05d}.txt"
        path.write_text(text, encoding="utf-8")
        staged.append(StagedFile(name=name, path=path, content_type="text/plain", meta={}))
        topic_of[name] = topic
    access = dataset_access(user=world.manager, dataset_id=world.dataset_id)
    job = _run_job(ingest_upload(actor=world.manager, access=access, files=staged).pk)
    if job.result.get("created") != len(corpus):
        raise RuntimeError(f"the ingest made {job.result.get('created')} items of {len(corpus)}")
    return {
        task_id: topic_of[name]
        for task_id, name in Task.objects.filter(project_id=world.project_id).values_list("id", "item__name")
    }


def _next_batch(world: World, size: int) -> list[int]:
    """The open tasks the queue hands out next (priority, then id: the project's ordering)."""
    from labeling.models import Task

    return list(
        Task.objects.filter(project_id=world.project_id, state="open")
        .order_by("-priority", "id")
        .values_list("id", flat=True)[:size]
    )


def _annotate(world: World, truth: dict[int, str], batch: list[int], version_id: int | None) -> float:
    """The annotators take turns at `next` until the batch is done, each submitting the true
    topic, from the model's prediction when there is one; returns the batch's recorded time in
    units."""
    from django.db.models import Sum

    from labeling.models import Annotation
    from labeling.workflow import assignment_submit, task_next
    from projects.access import project_access

    wanted = set(batch)
    for n in range(len(batch)):
        user = world.annotators[n % len(world.annotators)]
        access = project_access(user=user, project_id=world.project_id)
        handed = task_next(actor=user, access=access)
        if handed is None or handed.task.pk not in wanted:
            raise RuntimeError(f"the queue handed {handed and handed.task.pk}, not a task of the batch")
        right = truth[handed.task.pk]
        offered = next((p for p in handed.predictions if p.source_id == version_id), None)
        if version_id is not None and offered is None:
            raise RuntimeError(f"task {handed.task.pk} was handed without the model's prediction")
        result = _classification(right)
        units = LABEL_UNITS
        if offered is not None:
            (region,) = offered.result
            if region["label"] == right:
                result, units = [{k: v for k, v in region.items() if k != "score"}], CONFIRM_UNITS
            else:
                result, units = _classification(right, str(region["id"])), FIX_UNITS
        assignment_submit(
            actor=user,
            access=access,
            assignment_id=handed.assignment.pk,
            lease_id=handed.assignment.lease_id,
            result=result,
            lead_time_ms=units * UNIT_MS,
            from_prediction_id=offered.pk if offered is not None else None,
        )
    recorded = Annotation.objects.filter(task_id__in=batch, state="submitted").aggregate(
        t=Sum("lead_time_ms")
    )
    return float(recorded["t"] or 0) / UNIT_MS


def _classification(label: str, region_id: str = "c") -> list[dict[str, Any]]:
    return [{"id": region_id, "type": "classification", "label": label, "attributes": {}, "geometry": {}}]


def _round(world: World, truth: dict[int, str], number: int, size: int) -> Round:
    """Release what is labeled, train on it, evaluate, pre-label the next batch, annotate it."""
    from labeling.models import Prediction, Training
    from labeling.prelabel import prelabel_start
    from labeling.releases.services import release_create, release_get
    from labeling.selectors import prelabel_effectiveness
    from labeling.training.services import training_start
    from projects.access import project_access
    from quality.models import Evaluation

    started = time.perf_counter()
    manager = project_access(user=world.manager, project_id=world.project_id)
    release = release_create(actor=world.manager, access=manager, name=f"round {number}", splits=SPLITS)
    _run_job(release.job.pk if release.job else 0)
    release, access = release_get(user=world.ml_engineer, release_id=release.pk)
    training = training_start(
        actor=world.ml_engineer,
        access=access,
        release=release,
        recipe="text-logreg",
        params={},
        name="topics",
    )
    _run_job(training.job.pk if training.job else 0)
    training = Training.objects.select_related("model_version").get(id=training.pk)
    version = training.model_version
    if version is None:
        raise RuntimeError(f"training {training.pk} registered no model version")
    # The evaluation the training asked for (none when the test split came out empty).
    heldout = None
    evaluation = Evaluation.objects.filter(model_version=version, release=release, split="test").first()
    if evaluation is not None and evaluation.job_id is not None:
        _run_job(evaluation.job_id)
        evaluation.refresh_from_db()
        heldout = (evaluation.metrics.get("classification") or {}).get("accuracy")
    batch = _next_batch(world, size)
    job = prelabel_start(
        actor=world.manager, access=manager, model_version_id=version.pk, task_filter={"tasks": batch},
        overwrite=False, label_map=None,
    )  # fmt: skip
    done = _run_job(job.pk)
    if done.result.get("predicted") != len(batch):
        raise RuntimeError(f"the pre-label job predicted {done.result} for {len(batch)} tasks")
    machine_s = time.perf_counter() - started

    predicted = {
        task_id: result[0]["label"] if result else None
        for task_id, result in Prediction.objects.filter(source=version, task_id__in=batch).values_list(
            "task_id", "result"
        )
    }
    accuracy = sum(predicted.get(t) == truth[t] for t in batch) / len(batch)
    units = _annotate(world, truth, batch, version.pk)
    report = prelabel_effectiveness(access=manager, model_version_id=version.pk)
    if report["annotations_from_predictions"] != len(batch) or report["acceptance_rate"] is None:
        raise RuntimeError(f"the pre-label report misses annotations: {report}")
    if abs(report["acceptance_rate"] - accuracy) > 1e-9:
        raise RuntimeError(f"the report's acceptance rate {report['acceptance_rate']} is not {accuracy}")
    return Round(
        number=number,
        items=len(batch),
        units=units,
        accuracy=accuracy,
        heldout_accuracy=heldout,
        trained_on=int(version.card["data"]["items"]["used"]),
        machine_s=machine_s,
    )
