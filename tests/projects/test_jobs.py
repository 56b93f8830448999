"""The job engine in-process: claims, chunks at most once, cancel, slices and stalled recovery."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import Count
from django.utils import timezone

from projects import jobs
from projects.jobkinds import ProjectStatsRecount
from projects.models import AuditEvent, Job, JobChunk, JobState
from tests.conftest import World, assert_error

pytestmark = pytest.mark.django_db


def make_events(world: World, n: int) -> None:
    verbs = ["task.submit", "task.review", "project.update"]
    actors = [world.users["annotator"], world.users["reviewer"], None]
    AuditEvent.objects.bulk_create(
        AuditEvent(
            project=world.project,
            organization=world.org,
            verb=verbs[i % 3],
            actor=actors[i % 3],
            object_type="task",
            object_id=str(i),
        )
        for i in range(n)
    )


def start_recount(world: World, chunk_size: int = 10) -> Job:
    return jobs.job_start(
        kind="project.stats_recount",
        actor=world.users["manager"],
        organization=world.org,
        project=world.project,
        params={"chunk_size": chunk_size},
    )


def expected_by_verb(world: World, up_to_id: int) -> dict[str, int]:
    rows = AuditEvent.objects.filter(project=world.project, id__lte=up_to_id).values_list("verb")
    return dict(rows.annotate(n=Count("id")).order_by())


def test_a_recount_counts_every_event_exactly_once(world: World) -> None:
    make_events(world, 95)
    job = start_recount(world)
    assert jobs.job_execute(job_id=job.id) == "succeeded"
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED
    assert job.done == job.total == job.result["events"]
    assert job.chunks_done == job.chunks_total == JobChunk.objects.filter(job=job).count()
    assert job.result["events_by_verb"] == expected_by_verb(world, job.params["last_id"])
    assert job.result["members_by_role"]["annotator"] == 1
    assert job.finished_at is not None and job.run_token == ""


def test_a_second_run_of_a_finished_job_does_nothing(world: World) -> None:
    make_events(world, 30)
    job = start_recount(world)
    jobs.job_execute(job_id=job.id)
    before = Job.objects.get(id=job.id).result
    assert jobs.job_execute(job_id=job.id) == "not_claimed"
    assert Job.objects.get(id=job.id).result == before


def test_only_one_worker_wins_a_claim(world: World) -> None:
    job = start_recount(world)
    assert jobs._claim(job.id, "a" * 32) is True
    assert jobs._claim(job.id, "b" * 32) is False
    assert Job.objects.get(id=job.id).run_token == "a" * 32


def test_a_worker_taking_over_a_stalled_job_does_only_the_missing_chunks(world: World) -> None:
    make_events(world, 100)
    job = start_recount(world)
    seen: list[int] = []

    class Crash(BaseException):
        """Like SIGKILL: no handler of the engine runs, nothing is cleaned up."""

    def crash_after_four(_: Job, index: int) -> None:
        seen.append(index)
        if len(seen) == 4:
            raise Crash  # as if the worker died right after committing its 4th chunk

    with pytest.raises(Crash):
        jobs.job_execute(job_id=job.id, on_chunk=crash_after_four)
    # The dead worker's lease is still there: nobody else may take the job until it is stale.
    assert Job.objects.get(id=job.id).state == JobState.RUNNING
    assert jobs.job_execute(job_id=job.id) == "not_claimed"
    Job.objects.filter(id=job.id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    redone: list[int] = []
    assert jobs.job_execute(job_id=job.id, on_chunk=lambda _, i: redone.append(i)) == "succeeded"
    assert set(redone).isdisjoint(seen)
    job.refresh_from_db()
    assert sorted(seen + redone) == list(range(job.chunks_total))
    assert job.attempts == 2
    assert job.result["events_by_verb"] == expected_by_verb(world, job.params["last_id"])


def test_a_running_job_stops_at_the_next_chunk_when_cancelled(world: World) -> None:
    make_events(world, 100)
    job = start_recount(world)

    def cancel_after_three(current: Job, index: int) -> None:
        if index == 2:
            jobs.job_cancel(actor=world.users["manager"], job=current, access=None)

    assert jobs.job_execute(job_id=job.id, on_chunk=cancel_after_three) == "cancelled"
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED
    assert job.chunks_done == 3 and job.done == 30 < job.total
    assert JobChunk.objects.filter(job=job).count() == 3


def test_a_queued_job_is_cancelled_at_once_and_never_runs(world: World) -> None:
    job = start_recount(world)
    jobs.job_cancel(actor=world.users["manager"], job=job, access=None)
    assert Job.objects.get(id=job.id).state == JobState.CANCELLED
    assert jobs.job_execute(job_id=job.id) == "not_claimed"
    assert JobChunk.objects.filter(job=job).count() == 0


def test_a_long_job_hands_itself_back_to_the_queue_after_its_slice(
    world: World, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    make_events(world, 50)
    job = start_recount(world)
    settings.LOUPE_JOB_SLICE_SECONDS = 0
    with django_capture_on_commit_callbacks() as callbacks:
        assert jobs.job_execute(job_id=job.id) == "sliced"
    job.refresh_from_db()
    assert job.state == JobState.RUNNING and job.run_token == ""  # handed back, helpers go on
    assert len(callbacks) == 1  # the follow-up message, sent once this commits
    assert jobs._claim(job.id, "next-slice")  # the next message takes the lead again
    assert len(job.celery_task_ids) == 2


def test_recovery_requeues_stalled_jobs_and_fences_off_their_old_worker(
    world: World, django_capture_on_commit_callbacks: Any
) -> None:
    make_events(world, 30)
    job = start_recount(world)
    assert jobs._claim(job.id, "old-worker")
    Job.objects.filter(id=job.id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    with django_capture_on_commit_callbacks() as callbacks:
        assert jobs.job_recover_stalled() == [job.id]
    assert len(callbacks) == 1
    assert Job.objects.get(id=job.id).state == JobState.QUEUED
    with pytest.raises(jobs._LeaseLost):
        jobs._lock_owned(job.id, "old-worker")


def test_recovery_finishes_a_cancelled_job_whose_worker_died(world: World) -> None:
    job = start_recount(world)
    assert jobs._claim(job.id, "dead-worker")
    jobs.job_cancel(actor=world.users["manager"], job=Job.objects.get(id=job.id), access=None)
    Job.objects.filter(id=job.id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    jobs.job_recover_stalled()
    assert Job.objects.get(id=job.id).state == JobState.CANCELLED


def test_an_unexpected_error_fails_the_job_with_its_reason(world: World, monkeypatch: Any) -> None:
    make_events(world, 20)
    job = start_recount(world)

    def broken(self: Any, job: Job, index: int, prepared: Any) -> Any:
        raise ValueError("disk on fire")

    monkeypatch.setattr(ProjectStatsRecount, "apply_chunk", broken)
    with pytest.raises(ValueError):
        jobs.job_execute(job_id=job.id)
    job.refresh_from_db()
    assert job.state == JobState.FAILED
    assert job.failure == "ValueError: disk on fire"
    assert JobChunk.objects.filter(job=job).count() == 0


def test_merging_chunk_counts_adds_them() -> None:
    kind = ProjectStatsRecount()
    merged = kind.merge_result(
        {"events": 3, "events_by_verb": {"a": 2, "b": 1}, "events_by_day": {}, "events_by_actor": {"1": 3}},
        {
            "events": 2,
            "events_by_verb": {"b": 1, "c": 1},
            "events_by_day": {"2026-11-22": 2},
            "events_by_actor": {},
        },
    )
    assert merged["events"] == 5
    assert Counter(merged["events_by_verb"]) == Counter({"a": 2, "b": 2, "c": 1})
    assert merged["events_by_day"] == {"2026-11-22": 2}


@pytest.mark.parametrize("chunk_size", [0, 9, 100_001, "ten", True, None])
def test_recount_refuses_bad_chunk_sizes(world: World, chunk_size: Any) -> None:
    response = world.client("manager").post(
        f"/api/v1/projects/{world.project.id}/stats/recount", {"chunk_size": chunk_size}, format="json"
    )
    assert_error(response, 400)
    assert not Job.objects.exists()


def test_a_recount_started_through_the_api_is_queued_with_a_job_to_watch(
    world: World, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        response = world.client("manager").post(
            f"/api/v1/projects/{world.project.id}/stats/recount", {"chunk_size": 50}, format="json"
        )
    assert response.status_code == 202
    body = response.json()
    assert body["state"] == "queued" and body["kind"] == "project.stats_recount"
    assert body["progress"] is None
    assert len(callbacks) == 1
    watched = world.client("manager").get(f"/api/v1/jobs/{body['id']}").json()
    assert watched["id"] == body["id"]
    again = world.client("manager").post(
        f"/api/v1/projects/{world.project.id}/stats/recount", {}, format="json"
    )
    assert_error(again, 409, "job_already_running")


# --- Several runners on one job --------------------------------------------------------------------


@pytest.fixture
def two_runners(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ProjectStatsRecount, "runners", lambda self, job: 2)


def test_two_runners_share_a_job_and_every_chunk_is_done_once(
    world: World, two_runners: None, django_capture_on_commit_callbacks: Any
) -> None:
    make_events(world, 200)
    job = start_recount(world)
    by_lead: list[int] = []
    by_helper: list[int] = []

    def helper_joins_after_the_first_chunk(_: Job, index: int) -> None:
        by_lead.append(index)
        if len(by_lead) == 1:  # a second worker picks up the helper message now
            jobs.job_execute(job_id=job.id, helper=True, on_chunk=lambda _j, i: by_helper.append(i))

    with django_capture_on_commit_callbacks() as callbacks:
        outcome = jobs.job_execute(job_id=job.id, on_chunk=helper_joins_after_the_first_chunk)
    assert len(callbacks) == 1  # the lead asked for one helper
    assert outcome == "finished"  # the helper committed the last chunk and closed the job
    job.refresh_from_db()
    assert job.state == JobState.SUCCEEDED
    assert by_lead == [0] and by_helper and set(by_helper).isdisjoint(by_lead)
    assert sorted(by_lead + by_helper) == list(range(job.chunks_total or 0))
    assert job.result["events_by_verb"] == expected_by_verb(world, job.params["last_id"])


def test_a_helper_does_not_join_a_job_that_is_not_running(world: World) -> None:
    job = start_recount(world)
    assert jobs.job_execute(job_id=job.id, helper=True) == "not_joined"
    assert Job.objects.get(id=job.id).state == JobState.QUEUED


def test_a_chunk_whose_runner_died_is_leased_again_once_its_lease_expires(world: World) -> None:
    make_events(world, 50)
    job = start_recount(world)
    jobs._claim(job.id, "lead")
    job = jobs._plan_and_call_helpers(Job.objects.get(id=job.id), ProjectStatsRecount(), "lead")
    JobChunk.objects.create(
        job=job, index=0, state="leased", token="dead", lease_until=timezone.now() + timedelta(hours=1)
    )
    Job.objects.filter(id=job.id).update(run_token="")  # the lead handed back
    assert jobs.job_execute(job_id=job.id) == "waiting"  # chunk 0 is still someone's
    assert JobChunk.objects.get(job=job, index=0).token == "dead"
    JobChunk.objects.filter(job=job, index=0).update(lease_until=timezone.now() - timedelta(seconds=1))
    Job.objects.filter(id=job.id).update(run_token="")
    assert jobs.job_execute(job_id=job.id) == "succeeded"
    job.refresh_from_db()
    assert job.result["events_by_verb"] == expected_by_verb(world, job.params["last_id"])
    assert JobChunk.objects.filter(job=job, state="done").count() == job.chunks_total


def test_a_runner_whose_lease_was_taken_over_records_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_events(world, 30)
    job = start_recount(world)
    real_prepare = ProjectStatsRecount.prepare_chunk

    def slow_prepare(self: Any, job: Job, index: int) -> Any:
        if index == 0:  # while this runner works, its lease expires and another takes chunk 0
            JobChunk.objects.filter(job=job, index=0).update(token="someone-else")
        return real_prepare(self, job, index)

    monkeypatch.setattr(ProjectStatsRecount, "prepare_chunk", slow_prepare)
    assert jobs.job_execute(job_id=job.id) == "lease_lost"
    job.refresh_from_db()
    assert (job.done, job.chunks_done, job.result) == (0, 0, {})
    assert JobChunk.objects.get(job=job, index=0).token == "someone-else"


def test_the_helper_message_asks_for_a_helper(
    world: World, two_runners: None, django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from projects.tasks import job_run

    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(job_run, "apply_async", lambda **options: sent.append(options["kwargs"]))
    make_events(world, 30)
    job = start_recount(world)
    with django_capture_on_commit_callbacks(execute=True):
        jobs.job_execute(job_id=job.id)
    assert sent == [{"job_id": job.id, "helper": True}]


@pytest.mark.django_db(transaction=True)
def test_a_chunk_slower_than_the_stall_limit_keeps_its_lease_and_finishes(
    world: World, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    settings.LOUPE_JOB_STALL_SECONDS = 1
    make_events(world, 20)
    job = start_recount(world, chunk_size=100)  # one chunk
    real_prepare = ProjectStatsRecount.prepare_chunk
    swept: list[list[int]] = []

    def slow_prepare(self: Any, job: Job, index: int) -> Any:
        time.sleep(2.5)  # longer than the stall limit: the lease keeper must renew
        swept.append(jobs.job_recover_stalled())  # beat runs meanwhile
        return real_prepare(self, job, index)

    monkeypatch.setattr(ProjectStatsRecount, "prepare_chunk", slow_prepare)
    assert jobs.job_execute(job_id=job.id) == "succeeded"
    assert swept == [[]]  # the job never looked stalled
    assert Job.objects.get(id=job.id).attempts == 1


def test_an_ordered_kind_never_overtakes_a_chunk_a_dead_runner_holds(world: World) -> None:
    """Ordered kinds (a release build, whose last chunks count and publish) wait for a chunk whose
    runner died until its lease runs out; then the next runner does it, and only then the rest."""
    make_events(world, 100)
    job = start_recount(world)
    kind = jobs.kind_for(job.kind)
    type(kind).ordered = True
    try:
        JobChunk.objects.create(
            job=job, index=0, state="leased", token="dead", lease_until=timezone.now() + timedelta(minutes=5)
        )
        Job.objects.filter(id=job.id).update(state=JobState.RUNNING, chunks_total=None)
        Job.objects.filter(id=job.id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
        assert jobs.job_execute(job_id=job.id) == "waiting"
        assert list(JobChunk.objects.filter(job=job).values_list("index", flat=True)) == [0]
        JobChunk.objects.filter(job=job, index=0).update(lease_until=timezone.now() - timedelta(seconds=1))
        Job.objects.filter(id=job.id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
        order: list[int] = []
        assert jobs.job_execute(job_id=job.id, on_chunk=lambda _, i: order.append(i)) == "succeeded"
    finally:
        type(kind).ordered = False
    job.refresh_from_db()
    assert order == list(range(job.chunks_total or 0))
    assert job.result["events_by_verb"] == expected_by_verb(world, job.params["last_id"])
