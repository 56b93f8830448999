"""Work distribution and review through the API: queue, leases, drafts, assignment, review, rework."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from labeling.models import Annotation, Assignment, Task
from labeling.workflow import leases_expire
from projects.models import AuditEvent
from tests.conftest import World, assert_error, client_for
from tests.factories import DatasetFactory, ItemFactory, MembershipFactory, ProjectMemberFactory, UserFactory
from tests.labeling.conftest import API, SPEC, publish

pytestmark = pytest.mark.django_db

BOX = {"id": "b1", "type": "bbox", "label": "truck", "geometry": {"x": 5, "y": 5, "width": 20, "height": 10}}


class Floor:
    """A project with N image tasks, a schema, and helpers to act through the API."""

    def __init__(self, world: World, tasks: int) -> None:
        self.world = world
        self.dataset = DatasetFactory(organization=world.org)
        assert publish(world, SPEC).status_code == 201
        ItemFactory.create_batch(tasks, dataset=self.dataset)
        linked = world.client("owner").patch(
            f"{API}/datasets/{self.dataset.pk}", {"projects": [world.project.pk]}, format="json"
        )
        assert linked.status_code == 200, linked.content

    def url(self, path: str) -> str:
        return f"{API}/projects/{self.world.project.id}{path}"

    def workflow(self, **settings: Any) -> Any:
        return self.world.client("manager").patch(self.url("/workflow"), settings, format="json")

    def next(self, client: Any) -> Any:
        return client.post(self.url("/next"))

    def submit(
        self, client: Any, handed: dict[str, Any], result: list[dict[str, Any]] | None = None, **extra: Any
    ) -> Any:
        assignment = handed["assignment"]
        return client.post(
            self.url(f"/assignments/{assignment['id']}/submit"),
            {
                "lease_id": assignment["lease_id"],
                "result": result if result is not None else [BOX],
                "lead_time_ms": 900,
            },
            format="json",
            **extra,
        )


def _second_annotator(world: World) -> Any:
    user = UserFactory(username="annotator2")
    MembershipFactory(organization=world.org, user=user)
    ProjectMemberFactory(project=world.project, user=user, role="annotator")
    return client_for(user)


@pytest.fixture
def floor(world: World, objects_dir: Any) -> Floor:
    return Floor(world, tasks=20)


def test_linking_a_dataset_and_adding_items_create_tasks(floor: Floor) -> None:
    assert Task.objects.filter(project=floor.world.project).count() == 20
    ItemFactory(dataset=floor.dataset)  # rows made outside ingest get tasks on demand
    created = floor.world.client("manager").post(floor.url("/tasks"), {}, format="json")
    assert created.json() == {"created": 1}


def test_ingest_into_a_linked_dataset_creates_the_tasks_in_the_same_commit(floor: Floor) -> None:
    from tests.labeling.conftest import run
    from tests.storage.conftest import upload
    from tests.storage.test_ingest import jpeg

    files = {"new/a.jpg": jpeg(color=(1, 2, 3)), "new/b.jpg": jpeg(color=(9, 8, 7))}
    response = upload(floor.world.client("manager"), floor.dataset.pk, files)
    assert response.status_code == 202, response.content
    run(response.json()["id"])
    names = set(Task.objects.filter(project=floor.world.project).values_list("item__name", flat=True))
    assert {"new/a.jpg", "new/b.jpg"} <= names


def test_two_annotators_reviewer_and_rework_take_20_tasks_to_the_end(floor: Floor) -> None:
    world = floor.world
    settings = floor.workflow(overlap=2, review="sample", review_fraction=0.5, rejected_to="author", seed=3)
    assert settings.status_code == 200 and settings.json()["overlap"] == 2
    first, second = world.client("annotator"), _second_annotator(world)
    for client in (first, second):
        while (handed := floor.next(client)).status_code == 200:
            assert floor.submit(client, handed.json()).status_code == 201
        assert handed.status_code == 204
    tasks = Task.objects.filter(project=world.project)
    assert all(t.submitted == 2 and t.active == 0 for t in tasks)
    in_review = {t.pk for t in tasks if t.state == "in_review"}
    done = {t.pk for t in tasks if t.state == "done"}
    assert in_review and done and len(in_review) + len(done) == 20  # the sample is a fraction, stable

    reviewer = world.client("reviewer")
    rejected_once = False
    while (batch := reviewer.post(floor.url("/next-review"))).status_code == 200:
        body = batch.json()
        for annotation in body["annotations"]:
            verdict = {"verdict": "accept"}
            if not rejected_once:
                verdict, rejected_once = {"verdict": "reject", "comment": "The box misses the bumper."}, True
            answer = reviewer.post(
                floor.url(f"/annotations/{annotation['id']}/review"),
                verdict,
                format="json",
                HTTP_IF_MATCH=f'"{annotation["version"]}"',
            )
            assert answer.status_code == 200, answer.content
        if rejected_once and Task.objects.get(id=body["task"]["id"]).state == "rejected":
            # The author finds the rework first in their queue, with their work as the draft.
            rejected = Annotation.objects.get(task_id=body["task"]["id"], review_status="rejected")
            author = first if rejected.author.username == "annotator" else second
            rework = floor.next(author)
            assert rework.status_code == 200 and rework.json()["task"]["id"] == body["task"]["id"]
            assert rework.json()["assignment"]["rework"] is True
            assert rework.json()["draft"]["result"][0]["id"] == "b1"
            fixed = [{**BOX, "geometry": {"x": 4, "y": 4, "width": 24, "height": 12}}]
            assert floor.submit(author, rework.json(), fixed).status_code == 201
            assert Task.objects.get(id=body["task"]["id"]).state == "in_review"
    assert batch.status_code == 204
    final = dict(Task.objects.filter(project=world.project).values_list("id", "state"))
    assert {final[t] for t in in_review} == {"accepted"} and {final[t] for t in done} == {"done"}
    comments = world.client("annotator").get(floor.url(f"/tasks/{next(iter(in_review))}/comments"))
    assert comments.status_code == 200
    assert AuditEvent.objects.filter(verb="task.state", changes__state=["rejected", "in_progress"]).exists()
    progress = world.client("annotator").get(floor.url("/progress")).json()
    assert progress["tasks_by_state"]["accepted"] == len(in_review) and progress["tasks_by_state"][
        "done"
    ] == len(done)
    assert progress["annotations_per_day"][0]["submitted"] == 40
    stats = {
        row["user"]["username"]: row
        for row in world.client("manager").get(floor.url("/annotators")).json()["results"]
    }
    assert stats["annotator"]["submitted"] + stats["annotator2"]["submitted"] == 40
    assert stats["annotator"]["median_lead_time_ms"] >= 900
    assert_error(world.client("annotator").get(floor.url("/annotators")), 403)


def test_next_hands_the_same_lease_again_and_autosave_keeps_the_draft(floor: Floor) -> None:
    client = floor.world.client("annotator")
    first = floor.next(client).json()
    again = floor.next(client).json()
    assert again["assignment"]["id"] == first["assignment"]["id"]  # a retried next takes no second slot
    assignment = first["assignment"]
    saved = client.post(
        floor.url(f"/assignments/{assignment['id']}/draft"),
        {"lease_id": assignment["lease_id"], "result": [{"half": "done"}]},
        format="json",
    )
    assert saved.status_code == 200 and saved.json()["state"] == "draft"
    resumed = floor.next(client).json()
    assert resumed["draft"]["result"] == [{"half": "done"}]
    assert_error(floor.submit(client, first, [{"half": "done"}]), 422, "schema_violation")
    submitted = floor.submit(client, first)
    assert (
        submitted.status_code == 201 and submitted.json()["id"] == saved.json()["id"]
    )  # the draft became it
    assert Annotation.objects.filter(author__username="annotator").count() == 1


def test_next_reads_the_callers_waiting_work_and_pulls_a_task_in_one_statement(floor: Floor) -> None:
    """Below max_active the caller's held lease and the next free task come from one read; at
    max_active the held lease is handed again and no new task is taken."""
    assert floor.workflow(max_active=2).status_code == 200
    client = floor.world.client("annotator")
    first = floor.next(client).json()
    reads: list[str] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if str(sql).lstrip().startswith(("SELECT", "WITH w AS")) and "labeling_" in str(sql):
            reads.append(str(sql))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        second = floor.next(client).json()
    assert second["task"]["id"] != first["task"]["id"]
    assert len(reads) == 1, reads  # waiting work and the pull together
    third = floor.next(client).json()  # two held: the first is handed again
    assert third["assignment"]["id"] == first["assignment"]["id"]
    assert Assignment.objects.filter(user=floor.world.users["annotator"], state="active").count() == 2


def test_a_submit_without_a_valid_lease_is_a_409_and_other_peoples_work_a_404(floor: Floor) -> None:
    client = floor.world.client("annotator")
    handed = floor.next(client).json()
    wrong = {
        **handed,
        "assignment": {**handed["assignment"], "lease_id": "00000000-0000-0000-0000-000000000000"},
    }
    assert_error(floor.submit(client, wrong), 409, "lease_invalid")
    assert_error(floor.submit(floor.world.client("reviewer"), handed), 404)
    other = f"{API}/projects/{floor.world.other_project.id}/assignments/{handed['assignment']['id']}/submit"
    body = {"lease_id": handed["assignment"]["lease_id"], "result": [BOX]}
    assert_error(floor.world.client("outsider").post(other, body, format="json"), 404)


def test_a_skipped_task_never_comes_back_to_its_annotator(floor: Floor) -> None:
    floor.workflow(overlap=1)
    client = floor.world.client("annotator")
    handed = floor.next(client).json()
    assignment = handed["assignment"]
    skipped = client.post(
        floor.url(f"/assignments/{assignment['id']}/skip"),
        {"lease_id": assignment["lease_id"], "reason": "blurry"},
        format="json",
    )
    assert skipped.status_code == 200 and skipped.json()["skip_reason"] == "blurry"
    seen = set()
    while (nxt := floor.next(client)).status_code == 200:
        seen.add(nxt.json()["task"]["id"])
        assert floor.submit(client, nxt.json()).status_code == 201
    assert handed["task"]["id"] not in seen and len(seen) == 19
    # The skipped slot is open to somebody else.
    other = floor.next(_second_annotator(floor.world))
    assert other.json()["task"]["id"] == handed["task"]["id"]


def test_a_late_submit_is_honoured_while_the_slot_is_free(floor: Floor) -> None:
    client = floor.world.client("annotator")
    handed = floor.next(client).json()
    Assignment.objects.filter(id=handed["assignment"]["id"]).update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    assert leases_expire() == 1
    task = Task.objects.get(id=handed["task"]["id"])
    assert task.active == 0 and task.open_slots == 1 and task.state == "open"
    late = floor.submit(client, handed)
    assert late.status_code == 201
    task.refresh_from_db()
    assert (task.active, task.submitted, task.state) == (0, 1, "done")


def test_managers_assign_by_filter_with_quotas_and_annotators_get_those_first(floor: Floor) -> None:
    world = floor.world
    floor.workflow(assignment="manual")
    tasks = list(Task.objects.filter(project=world.project).order_by("id"))
    Task.objects.filter(id__in=[t.pk for t in tasks[10:]]).update(priority=9)
    annotator = world.users["annotator"]
    assigned = world.client("manager").post(
        floor.url("/assignments/bulk"),
        {"filter": {"priority_min": 9}, "users": [{"user": annotator.pk, "quota": 3}]},
        format="json",
    )
    assert assigned.json() == {"assigned": {str(annotator.pk): 3}}
    client = world.client("annotator")
    got = []
    while (handed := floor.next(client)).status_code == 200:
        got.append(handed.json()["task"]["id"])
        floor.submit(client, handed.json())
    assert len(got) == 3 and all(Task.objects.get(id=t).priority == 9 for t in got)
    assert_error(
        world.client("annotator").post(
            floor.url("/assignments/bulk"), {"users": [{"user": annotator.pk, "quota": 1}]}, format="json"
        ),
        403,
    )


def test_reassign_moves_the_slot_and_unassign_frees_it(floor: Floor) -> None:
    world = floor.world
    floor.workflow(overlap=1)
    manager = world.client("manager")
    second = _second_annotator(world)
    first_user = world.users["annotator"]
    manager.post(
        floor.url("/assignments/bulk"),
        {"filter": {}, "users": [{"user": first_user.pk, "quota": 2}]},
        format="json",
    )
    pending = list(Assignment.objects.filter(user=first_user).order_by("id"))
    second_user_id = User.objects.get(username="annotator2").pk
    moved = manager.post(
        floor.url(f"/assignments/{pending[0].pk}/reassign"), {"user": second_user_id}, format="json"
    )
    assert moved.status_code == 200 and moved.json()["state"] == "pending"
    assert floor.next(second).json()["task"]["id"] == pending[0].task_id
    gone = manager.delete(floor.url(f"/assignments/{pending[1].pk}"))
    assert gone.status_code == 204
    task = Task.objects.get(id=pending[1].task_id)
    assert (task.active, task.open_slots) == (0, 1)


def test_reviewers_never_review_their_own_annotation_and_reviews_need_if_match(floor: Floor) -> None:
    world = floor.world
    floor.workflow(review="all", overlap=1)
    reviewer = world.client("reviewer")
    handed = floor.next(reviewer).json()  # reviewers may annotate too
    own = floor.submit(reviewer, handed).json()
    assert reviewer.post(floor.url("/next-review")).status_code == 204  # nothing of someone else's yet
    assert_error(
        reviewer.post(
            floor.url(f"/annotations/{own['id']}/review"),
            {"verdict": "accept"},
            format="json",
            HTTP_IF_MATCH=f'"{own["version"]}"',
        ),
        403,
        "own_annotation",
    )
    theirs = floor.submit(world.client("annotator"), floor.next(world.client("annotator")).json()).json()
    assert_error(
        reviewer.post(floor.url(f"/annotations/{theirs['id']}/review"), {"verdict": "accept"}, format="json"),
        428,
    )
    assert_error(
        reviewer.post(
            floor.url(f"/annotations/{theirs['id']}/review"),
            {"verdict": "accept"},
            format="json",
            HTTP_IF_MATCH='"99"',
        ),
        412,
        "stale_version",
    )
    assert_error(
        reviewer.post(
            floor.url(f"/annotations/{theirs['id']}/review"),
            {"verdict": "reject"},
            format="json",
            HTTP_IF_MATCH=f'"{theirs["version"]}"',
        ),
        400,
    )  # a rejection says why
    fixed = [{**BOX, "geometry": {"x": 1, "y": 1, "width": 3, "height": 3}}]
    fix = reviewer.post(
        floor.url(f"/annotations/{theirs['id']}/review"),
        {"verdict": "fix", "result": fixed},
        format="json",
        HTTP_IF_MATCH=f'"{theirs["version"]}"',
    )
    assert fix.status_code == 200 and fix.json()["result"][0]["geometry"]["width"] == 3
    assert Task.objects.get(id=theirs["task"]).state == "accepted"
    revisions = reviewer.get(floor.url(f"/annotations/{theirs['id']}/revisions")).json()["results"]
    assert revisions[0]["author"]["username"] == "reviewer"
    assert_error(world.client("annotator").post(floor.url("/next-review")), 403)


def test_comments_thread_and_resolve_and_blind_mode_hides_others(floor: Floor) -> None:
    world = floor.world
    floor.workflow(overlap=2)
    first, second = world.client("annotator"), _second_annotator(world)
    handed = floor.next(first).json()
    mine = floor.submit(first, handed).json()
    task_id = handed["task"]["id"]
    manager = world.client("manager")
    note = manager.post(
        floor.url(f"/tasks/{task_id}/comments"),
        {"body": "Check the left edge.", "annotation": mine["id"], "region": "b1"},
        format="json",
    )
    assert note.status_code == 201
    reply = first.post(
        floor.url(f"/tasks/{task_id}/comments"),
        {"body": "Fixed.", "reply_to": note.json()["id"]},
        format="json",
    )
    assert reply.status_code == 201 and reply.json()["parent"] == note.json()["id"]
    resolved = manager.post(floor.url(f"/comments/{note.json()['id']}/resolve"))
    assert resolved.json()["resolved_at"] is not None
    # The second annotator on the task sees task-level comments, not what was said of someone else's work.
    visible = second.get(floor.url(f"/tasks/{task_id}/comments")).json()["results"]
    assert [c["body"] for c in visible] == ["Fixed."]


def test_workflow_settings_are_validated_and_overlap_applies_to_open_tasks(floor: Floor) -> None:
    assert_error(floor.workflow(overlap=0), 400)
    assert_error(floor.workflow(review="sometimes"), 400)
    assert_error(
        floor.world.client("annotator").patch(floor.url("/workflow"), {"overlap": 3}, format="json"), 403
    )
    assert floor.workflow(overlap=3).status_code == 200
    assert set(Task.objects.filter(project=floor.world.project).values_list("open_slots", flat=True)) == {3}
    assert floor.world.client("annotator").get(floor.url("/workflow")).json()["overlap"] == 3
    assert AuditEvent.objects.filter(verb="workflow.update").exists()


def test_project_settings_written_by_a_client_keep_the_workflow_and_quality(floor: Floor) -> None:
    world, owner = floor.world, floor.world.client("owner")
    project_url = f"{API}/projects/{world.project.pk}"
    assert floor.workflow(overlap=3, review="none").status_code == 200
    rules = {"agreement": {"min_agreement": 0.4}}
    assert owner.put(f"{project_url}/quality/settings", rules, format="json").status_code == 200
    kept = owner.get(project_url).json()["settings"]
    # Free-form settings replace the client's own keys, and leave the ones Loupe keeps alone.
    patched = owner.patch(project_url, {"settings": {"color": "teal"}}, format="json")
    assert patched.status_code == 200, patched.content
    settings = patched.json()["settings"]
    assert settings["color"] == "teal" and settings["workflow"] == kept["workflow"]
    assert settings["quality"] == kept["quality"]
    assert owner.get(floor.url("/workflow")).json()["overlap"] == 3
    assert set(Task.objects.filter(project=world.project).values_list("open_slots", flat=True)) == {3}
    # A read, edited and written back whole, is accepted.
    settings["color"] = "navy"
    assert owner.patch(project_url, {"settings": settings}, format="json").json()["settings"] == settings
    # Changing a kept key here is refused, naming where it is changed; nothing is written.
    changed = {**settings, "color": "red", "workflow": {**settings["workflow"], "overlap": 1}}
    error = assert_error(owner.patch(project_url, {"settings": changed}, format="json"), 422)
    assert error["code"] == "settings_key_managed" and error["details"]["field"] == "settings.workflow"
    assert "/workflow" in error["message"]
    assert owner.get(project_url).json()["settings"]["color"] == "navy"
    created = owner.post(
        f"{API}/projects",
        {"organization": world.org.pk, "name": "Copy", "settings": {"quality": {"rules": []}}},
        format="json",
    )
    assert assert_error(created, 422)["details"]["field"] == "settings.quality"


def test_uncertainty_first_hands_out_what_the_model_is_least_sure_of(floor: Floor) -> None:
    world = floor.world
    floor.workflow(ordering="uncertainty", overlap=1)
    tasks = list(Task.objects.filter(project=world.project).order_by("id"))
    scores = {tasks[3].pk: 0.9, tasks[7].pk: 0.2, tasks[12].pk: 0.55}
    rows = [{"task": task_id, "result": [{**BOX, "score": score}]} for task_id, score in scores.items()]
    posted = world.client("ml_engineer").post(
        floor.url("/predictions"), {"model_version": "det", "predictions": rows}, format="json"
    )
    assert posted.status_code == 201
    client = world.client("annotator")
    order = []
    for _ in range(3):
        handed = floor.next(client).json()
        order.append(handed["task"]["id"])
        floor.submit(client, handed)
    assert order == [tasks[7].pk, tasks[12].pk, tasks[3].pk]


def test_outside_blind_mode_annotators_see_the_others_work_on_their_tasks(floor: Floor) -> None:
    world = floor.world
    floor.workflow(overlap=2)
    first, second = world.client("annotator"), _second_annotator(world)
    handed = floor.next(first).json()
    theirs = floor.submit(first, handed).json()
    mine = floor.next(second).json()
    assert mine["task"]["id"] == handed["task"]["id"]
    assert_error(second.get(floor.url(f"/annotations/{theirs['id']}")), 404)  # blind by default
    floor.workflow(blind=False)
    assert second.get(floor.url(f"/annotations/{theirs['id']}")).status_code == 200
    listed = second.get(floor.url(f"/annotations?task={handed['task']['id']}")).json()["results"]
    assert [a["id"] for a in listed] == [theirs["id"]]


def test_assignment_lists_filter_by_user_state_and_task_and_refuse_bad_values(floor: Floor) -> None:
    client = floor.world.client("annotator")
    handed = floor.next(client).json()
    manager = floor.world.client("manager")
    annotator_id = floor.world.users["annotator"].pk
    mine = manager.get(floor.url(f"/assignments?user={annotator_id}&state=active")).json()["results"]
    assert [a["id"] for a in mine] == [handed["assignment"]["id"]]
    assert manager.get(floor.url("/assignments?state=submitted")).json()["results"] == []
    assert_error(manager.get(floor.url("/assignments?user=somebody")), 400)
    assert_error(manager.get(floor.url("/assignments?state=lost")), 400)
