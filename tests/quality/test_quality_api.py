"""Quality through the API: settings, rules at submit and over the project, agreement routing,
gold tasks and annotator scores, findings triage, and the report."""

from __future__ import annotations

import io
import random
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from PIL import Image

from labeling.models import Annotation, Assignment, Task
from projects import jobs
from projects.models import Job
from quality.metrics.agreement import krippendorff_alpha
from quality.models import Finding, GoldAnswer, TaskQuality
from tests.conftest import World, assert_error, client_for
from tests.factories import MembershipFactory, ProjectMemberFactory, UserFactory
from tests.labeling.conftest import run
from tests.labeling.test_workflow_api import Floor

pytestmark = pytest.mark.django_db


def box(
    rid: str, label: str, x: float, y: float, w: float = 20, h: float = 10, **attributes: Any
) -> dict[str, Any]:
    return {
        "id": rid,
        "type": "bbox",
        "label": label,
        "attributes": attributes,
        "geometry": {"x": x, "y": y, "width": w, "height": h},
    }


def annotator(world: World, name: str) -> Any:
    user = UserFactory(username=name)
    MembershipFactory(organization=world.org, user=user)
    ProjectMemberFactory(project=world.project, user=user, role="annotator")
    return client_for(user)


@pytest.fixture
def floor(world: World, objects_dir: Any) -> Floor:
    return Floor(world, tasks=6)


def settings(floor: Floor, body: dict[str, Any], who: str = "manager") -> Any:
    return floor.world.client(who).put(floor.url("/quality/settings"), body, format="json")


def start(floor: Floor, kind: str, **params: Any) -> Job:
    made = floor.world.client("manager").post(
        floor.url("/quality/jobs"), {"kind": kind, **params}, format="json"
    )
    assert made.status_code == 202, made.content
    return run(made.json()["id"])


def findings(floor: Floor, **query: Any) -> list[dict[str, Any]]:
    listed = floor.world.client("reviewer").get(floor.url("/quality/findings"), query)
    assert listed.status_code == 200, listed.content
    return listed.json()["results"]


MIN_AREA = {"rule": "size", "severity": "blocking", "classes": ["truck"], "min_area": 150}
WIDE = {"rule": "size", "severity": "warning", "classes": ["truck"], "max_aspect": 1.5}


# --- Settings --------------------------------------------------------------------------------------


def test_settings_are_checked_as_a_whole_and_every_problem_is_located(floor: Floor) -> None:
    refused = settings(
        floor,
        {
            "rules": [{"rule": "size", "severity": "fatal", "min_area": -1}, {"rule": "nope"}],
            "agreement": {"min_agreement": 2},
            "gold": {"action": "fire", "window": 0},
            "colour": "red",
        },
    )
    assert_error(refused, 422, "quality_settings_invalid")
    paths = {e["path"] for e in refused.json()["error"]["details"]["errors"]}
    assert {
        "rules[0].severity",
        "rules[1].rule",
        "agreement.min_agreement",
        "gold.action",
        "gold.window",
        "colour",
    } <= paths
    assert floor.world.client("manager").get(floor.url("/quality/settings")).json()["rules"] == []


def test_a_manager_sets_the_rules_reviewers_read_them_annotators_may_not(floor: Floor) -> None:
    saved = settings(floor, {"rules": [MIN_AREA], "agreement": {"min_agreement": 0.7}})
    assert saved.status_code == 200, saved.content
    assert saved.json()["agreement"]["min_agreement"] == 0.7
    assert saved.json()["gold"]["action"] == "flag"  # defaults filled in
    assert floor.world.client("reviewer").get(floor.url("/quality/settings")).json()["rules"] == [MIN_AREA]
    assert_error(settings(floor, {"rules": []}, who="reviewer"), 403, "permission_denied")
    assert_error(
        floor.world.client("annotator").get(floor.url("/quality/settings")), 403, "permission_denied"
    )
    assert_error(floor.world.client("outsider").get(floor.url("/quality/settings")), 404, "not_found")


# --- Rules at submit ------------------------------------------------------------------------------


def test_a_blocking_rule_refuses_the_submit_naming_rule_and_region_and_writes_nothing(floor: Floor) -> None:
    settings(floor, {"rules": [MIN_AREA, WIDE]})
    client = floor.world.client("annotator")
    handed = floor.next(client).json()
    small = box("tiny", "truck", 5, 5, 5, 5)
    refused = floor.submit(client, handed, [small, box("ok", "truck", 100, 100, 20, 20)])
    assert_error(refused, 422, "quality_rule_violation")
    named = refused.json()["error"]["details"]["findings"]
    assert [(f["rule"], f["region_id"], f["severity"]) for f in named] == [("size", "tiny", "blocking")]
    assert not Annotation.objects.filter(task_id=handed["task"]["id"]).exists()
    assert Assignment.objects.get(id=handed["assignment"]["id"]).state == "active"
    # The warning rule does not refuse: the annotation goes in and the finding waits for a reviewer.
    wide = box("wide", "truck", 100, 100, 40, 10)
    assert floor.submit(client, handed, [wide]).status_code == 201
    found = findings(floor)
    assert [(f["source"], f["kind"], f["region_id"], f["label"], f["severity"]) for f in found] == [
        ("rule", "size", "wide", "truck", "warning")
    ]
    assert found[0]["annotator"]["username"] == "annotator"


# --- Rules over the project -----------------------------------------------------------------------


def _annotate_all(floor: Floor, client: Any, regions: list[dict[str, Any]]) -> int:
    done = 0
    while (handed := floor.next(client)).status_code == 200:
        assert floor.submit(client, handed.json(), regions).status_code == 201
        done += 1
    return done


def test_the_qc_job_rechecks_every_annotation_after_the_rules_change_and_never_duplicates(
    floor: Floor,
) -> None:
    assert _annotate_all(floor, floor.world.client("annotator"), [box("w", "truck", 10, 10, 40, 10)]) == 6
    settings(floor, {"rules": [WIDE]})
    job = start(floor, "rules")
    assert job.state == "succeeded", job.failure
    assert job.result["annotations"] == 6 and job.result["findings"] == 6 and job.result["passed"] == 0
    assert len(findings(floor)) == 6
    one = findings(floor)[0]
    dismissed = floor.world.client("reviewer").post(
        floor.url(f"/quality/findings/{one['id']}/status"),
        {"status": "dismissed", "note": "wide trucks exist"},
    )
    assert dismissed.status_code == 200 and dismissed.json()["status"] == "dismissed"
    again = start(floor, "rules")
    assert again.result["findings"] == 6
    assert Finding.objects.filter(project=floor.world.project).count() == 6  # refreshed, not duplicated
    assert len(findings(floor, status="open")) == 5  # the dismissed one stays dismissed
    # A blocking rule found after the fact sends the tasks to review, whatever the policy.
    settings(floor, {"rules": [{**WIDE, "severity": "blocking"}]})
    blocking = start(floor, "rules")
    assert blocking.result["tasks_to_review"] == 6
    assert set(Task.objects.filter(project=floor.world.project).values_list("state", "qc_status")) == {
        ("in_review", "flagged")
    }
    # Rules relaxed: what is no longer found is resolved.
    settings(floor, {"rules": [{**WIDE, "max_aspect": 10}]})
    relaxed = start(floor, "rules")
    assert relaxed.result["findings"] == 0 and relaxed.result["resolved"] == 5
    assert findings(floor, status="open") == []


def test_a_qc_job_killed_mid_way_resumes_without_duplicating_findings(floor: Floor, monkeypatch: Any) -> None:
    from quality import jobs as quality_jobs

    monkeypatch.setattr(quality_jobs, "RULES_CHUNK_IDS", 2)
    assert _annotate_all(floor, floor.world.client("annotator"), [box("w", "truck", 10, 10, 40, 10)]) == 6
    settings(floor, {"rules": [WIDE]})
    made = floor.world.client("manager").post(floor.url("/quality/jobs"), {"kind": "rules"}, format="json")
    job_id = made.json()["id"]

    class Killed(BaseException):
        """Like SIGKILL: no handler of the engine runs, nothing is cleaned up."""

    def killed_after_the_first_chunk(_job: Job, index: int) -> None:
        if index == 0:
            raise Killed

    with pytest.raises(Killed):
        jobs.job_execute(job_id=job_id, on_chunk=killed_after_the_first_chunk)
    assert Finding.objects.filter(project=floor.world.project).count() == 2
    stale = timezone.now() - timedelta(hours=1)
    Job.objects.filter(id=job_id).update(heartbeat_at=stale)  # its worker is gone
    redone: list[int] = []
    assert jobs.job_execute(job_id=job_id, on_chunk=lambda _, i: redone.append(i)) == "succeeded"
    assert 0 not in redone
    finished = Job.objects.get(id=job_id)
    assert finished.state == "succeeded", finished.failure
    assert finished.result["findings"] == 6 and finished.done == 6
    assert Finding.objects.filter(project=floor.world.project).count() == 6


# --- Agreement and consensus ----------------------------------------------------------------------


def test_annotators_who_disagree_send_the_task_to_review_and_those_who_agree_finish_it(floor: Floor) -> None:
    floor.workflow(overlap=2, review="none")
    settings(floor, {"agreement": {"min_agreement": 0.6}})
    first, second = floor.world.client("annotator"), annotator(floor.world, "annotator2")
    for index in range(6):
        a, b = floor.next(first).json(), floor.next(second).json()
        assert a["task"]["id"] == b["task"]["id"]
        agree = index % 2 == 0
        floor.submit(first, a, [box("x", "truck", 10, 10)])
        theirs = box("y", "truck", 11, 10) if agree else box("y", "car", 300, 200, occluded=False)
        sent: list[str] = []

        def record(execute: Any, sql: str, *rest: Any, sent: list[str] = sent) -> Any:
            sent.append(sql)
            return execute(sql, *rest)

        with connection.execute_wrapper(record):
            assert floor.submit(second, b, [theirs]).status_code == 201
        # What quality records goes in the statement that saves the task, not in its own.
        writes = [sql for sql in sent if "quality_taskquality" in sql or "quality_finding" in sql]
        assert len(writes) == 1 and "UPDATE labeling_task" in writes[0]
        assert ('"quality_finding"' in writes[0]) is not agree
    states = dict(Task.objects.filter(project=floor.world.project).values_list("id", "state"))
    quality = {q.task_id: q for q in TaskQuality.objects.filter(project=floor.world.project)}
    assert len(quality) == 6
    flagged = {t for t, q in quality.items() if q.agreement < 0.6}
    assert len(flagged) == 3
    assert {states[t] for t in flagged} == {"in_review"}
    assert {states[t] for t in set(states) - flagged} == {"done"}
    agreeing = quality[min(set(states) - flagged)]
    assert agreeing.agreement == pytest.approx(190 / 210)  # IoU of two 20x10 boxes 1 px apart
    assert [r["label"] for r in agreeing.consensus] == ["truck"]
    assert agreeing.consensus[0]["geometry"]["x"] == pytest.approx(10.5)
    low = findings(floor, source="agreement")
    assert len(low) == 3 and {f["task"] for f in low} == flagged
    shown = floor.world.client("reviewer").get(floor.url(f"/quality/tasks/{min(flagged)}")).json()
    assert shown["annotators"] == 2 and shown["agreement"] == 0.0


def test_the_agreement_job_measures_alpha_over_the_objects_annotators_drew(floor: Floor) -> None:
    floor.workflow(overlap=2, review="none")
    first, second = floor.world.client("annotator"), annotator(floor.world, "annotator2")
    for index in range(6):
        a, b = floor.next(first).json(), floor.next(second).json()
        floor.submit(first, a, [box("x", "truck", 10, 10)])
        theirs = box("y", "truck", 11, 10) if index % 2 == 0 else box("y", "car", 300, 200, occluded=False)
        floor.submit(second, b, [theirs])
    job = start(floor, "agreement")
    assert job.state == "succeeded", job.failure
    # Agreeing tasks are one object both called a truck; the others two objects each annotator
    # alone drew (the other one's value: nothing).
    nothing = "\u2205"
    units = [["truck", "truck"]] * 3 + [["truck", nothing]] * 3 + [[nothing, "car"]] * 3
    assert job.result["units"] == 9
    assert job.result["alpha"] == pytest.approx(krippendorff_alpha(units))
    truck = [[v == "truck" for v in unit] for unit in units]
    assert job.result["alpha_by_class"]["truck"] == pytest.approx(krippendorff_alpha(truck))
    assert set(job.result["alpha_by_class"]) == {"truck", "car"}
    assert job.result["low_agreement"] == 3 and job.result["fleiss_kappa"] is None


def test_the_agreement_job_measures_chance_corrected_agreement_and_dawid_skene_consensus(
    floor: Floor,
) -> None:
    floor.workflow(overlap=3, review="none")
    settings(floor, {"agreement": {"min_agreement": 0.5, "consensus": "dawid_skene"}})
    clients = [floor.world.client("annotator"), annotator(floor.world, "a2"), annotator(floor.world, "a3")]
    truth = ["sunny", "sunny", "sunny", "sunny", "sunny", "sunny"]
    sunny = {"id": "c", "type": "classification", "label": "sunny", "attributes": {}, "geometry": {}}
    for _ in truth:
        handed = [floor.next(c).json() for c in clients]
        for client, h in zip(clients, handed, strict=True):
            submitted = floor.submit(client, h, [sunny])
            assert submitted.status_code == 201, submitted.content
    job = start(floor, "agreement")
    assert job.state == "succeeded", job.failure
    assert job.result["tasks"] == 6 and job.result["low_agreement"] == 0
    assert job.result["mean_task_agreement"] == 1.0
    assert job.result["units"] == 6
    report = floor.world.client("manager").get(floor.url("/quality/report")).json()
    assert report["agreement"]["project"]["job"] == job.pk
    assert {(p["tasks"], p["agreement"]) for p in report["agreement"]["pairwise"]} == {(6, 1.0)}
    assert {q.method for q in TaskQuality.objects.filter(project=floor.world.project)} == {"dawid_skene"}


# --- Gold tasks -----------------------------------------------------------------------------------


def _truth(floor: Floor, task_id: int, regions: list[dict[str, Any]]) -> None:
    made = floor.world.client("manager").post(
        floor.url(f"/tasks/{task_id}/annotations"),
        {"result": regions, "state": "submitted", "ground_truth": True},
        format="json",
    )
    assert made.status_code == 201, made.content


@pytest.fixture
def seeded(monkeypatch: Any) -> None:
    """The queue's choice of when to hand a gold task, made repeatable."""
    from labeling import workflow

    monkeypatch.setattr(workflow, "_random", random.Random(7))


def test_gold_tasks_are_mixed_in_unseen_scored_and_pause_an_annotator_below_the_threshold(
    world: World, objects_dir: Any, seeded: None
) -> None:
    floor = Floor(world, tasks=30)
    tasks = list(Task.objects.filter(project=floor.world.project).order_by("id").values_list("id", flat=True))
    gold = tasks[:3]
    manager = floor.world.client("manager")
    refused = manager.post(floor.url("/quality/gold"), {"tasks": gold}, format="json")
    assert_error(refused, 409, "gold_needs_ground_truth")
    for task_id in gold:
        _truth(floor, task_id, [box("t", "truck", 10, 10)])
    assert manager.post(floor.url("/quality/gold"), {"tasks": gold}, format="json").json() == {"changed": 3}
    floor.workflow(gold_rate=0.5)
    settings(floor, {"gold": {"min_accuracy": 0.8, "min_answers": 3, "window": 10, "action": "pause"}})
    careless = floor.world.client("annotator")
    handed_gold = 0
    while (handed := floor.next(careless)).status_code == 200:
        body = handed.json()
        assert "is_gold" not in body["task"] and "overlap" not in body["task"]  # nothing gives gold away
        handed_gold += body["task"]["id"] in gold
        assert floor.submit(careless, body, [box("z", "truck", 300, 300)]).status_code == 201
        if handed_gold == 3:
            break
    assert handed_gold == 3
    answers = GoldAnswer.objects.filter(project=floor.world.project)
    assert answers.count() == 3 and {a.score for a in answers} == {0.0}
    assert_error(floor.next(careless), 403, "annotator_paused")
    report = manager.get(
        floor.url("/quality/report"), {"annotator": floor.world.users["annotator"].pk}
    ).json()
    (row,) = report["annotators"]
    assert row["gold_accuracy"] == 0.0 and row["paused"] and row["gold_answers"] == 3
    assert [p["accuracy"] for p in row["gold_series"]] == [0.0, 0.0, 0.0]
    assert findings(floor, source="gold")[0]["kind"] == "annotator_accuracy"
    # Gold tasks never move: every annotator may still answer them.
    assert set(Task.objects.filter(id__in=gold).values_list("state", flat=True)) == {"open"}
    resumed = manager.post(
        floor.url(f"/quality/annotators/{floor.world.users['annotator'].pk}/pause"),
        {"paused": False},
        format="json",
    )
    assert resumed.json()["changed"] is True
    assert floor.next(careless).status_code in (200, 204)


def test_a_careful_annotator_scores_on_gold_like_the_truth(floor: Floor, seeded: None) -> None:
    (task_id,) = (
        Task.objects.filter(project=floor.world.project).order_by("id").values_list("id", flat=True)[:1]
    )
    _truth(floor, task_id, [box("t", "truck", 10, 10)])
    floor.world.client("manager").post(floor.url("/quality/gold"), {"tasks": [task_id]}, format="json")
    floor.workflow(gold_rate=0.5)
    client = floor.world.client("annotator")
    while (handed := floor.next(client)).status_code == 200:
        if handed.json()["task"]["id"] == task_id:
            floor.submit(client, handed.json(), [box("mine", "truck", 10, 10)])
            break
        floor.submit(client, handed.json())
    assert GoldAnswer.objects.get(task_id=task_id).score == 1.0


# --- Report ---------------------------------------------------------------------------------------


def test_the_report_is_json_and_a_png_chart_for_managers_and_refused_to_annotators(floor: Floor) -> None:
    settings(floor, {"rules": [WIDE]})
    _annotate_all(floor, floor.world.client("annotator"), [box("w", "truck", 10, 10, 40, 10)])
    manager = floor.world.client("manager")
    report = manager.get(floor.url("/quality/report")).json()
    assert report["annotations"] == 6 and report["pass_rate"] == 0.0
    assert report["findings"]["by_rule"] == {"size": 6} and report["findings"]["by_class"] == {"truck": 6}
    chart = manager.get(floor.url("/quality/report.png"))
    assert chart.status_code == 200 and chart["Content-Type"] == "image/png"
    picture = Image.open(io.BytesIO(chart.content))
    assert picture.size == (1200, 800)
    assert_error(floor.world.client("annotator").get(floor.url("/quality/report")), 403, "permission_denied")
    assert_error(
        floor.world.client("annotator").get(floor.url("/quality/findings")), 403, "permission_denied"
    )
    assert_error(manager.get(floor.url("/quality/report"), {"annotator": "x"}), 400, "invalid")
