"""Job kinds of the projects app.

``project.stats_recount`` rebuilds a project's activity statistics from its audit trail: events
by verb, by day and by actor, and its members by role. It walks the events in id ranges, one
chunk per range, adding each chunk's counts to the job's result in the chunk's transaction. The
counts are additive, so a chunk applied twice or missed would show in the totals: the job
machinery's at-most-once guarantee is visible in its numbers.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from django.db.models import Count, Max, Min
from django.db.models.functions import TruncDate

from projects.exceptions import InvalidInput
from projects.jobs import ChunkOutcome, JobKind, Plan, register
from projects.models import AuditEvent, Job, JobState, ProjectMember


def _add_counts(into: dict[str, int], delta: dict[str, int]) -> dict[str, int]:
    merged = Counter(into)
    merged.update(delta)
    return dict(merged)


@register
class ProjectStatsRecount(JobKind):
    name = "project.stats_recount"
    queue = "default"
    exclusive_per_project = True
    default_chunk_size = 5000

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        chunk_size = params.get("chunk_size", self.default_chunk_size)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 10 <= chunk_size <= 100_000:
            raise InvalidInput("chunk_size must be an integer from 10 to 100000.", field="chunk_size")
        return {"chunk_size": chunk_size}

    @staticmethod
    def _project_id(job: Job) -> int:
        if job.project_id is None:
            raise ValueError(f"job {job.pk}: a statistics recount belongs to a project")
        return job.project_id

    def _events(self, job: Job) -> Any:
        return AuditEvent.objects.filter(project_id=self._project_id(job))

    def plan(self, job: Job) -> Plan:
        # The id range is fixed at planning time: events recorded while the job runs belong to
        # the next recount.
        bounds = self._events(job).aggregate(low=Min("id"), high=Max("id"), n=Count("id"))
        if bounds["n"] == 0:
            job.params = {**job.params, "first_id": 0, "last_id": -1}
            Job.objects.filter(id=job.pk).update(params=job.params)
            return Plan(total=0, chunks=0)
        size = job.params["chunk_size"]
        job.params = {**job.params, "first_id": bounds["low"], "last_id": bounds["high"]}
        Job.objects.filter(id=job.pk).update(params=job.params)
        return Plan(total=bounds["n"], chunks=math.ceil((bounds["high"] - bounds["low"] + 1) / size))

    def apply_chunk(self, job: Job, index: int, prepared: Any) -> ChunkOutcome:
        size, first, last = job.params["chunk_size"], job.params["first_id"], job.params["last_id"]
        low = first + index * size
        high = min(low + size - 1, last)
        events = self._events(job).filter(id__gte=low, id__lte=high)
        by_verb = dict(events.values_list("verb").annotate(n=Count("id")).order_by())
        by_day = {
            day.isoformat(): n
            for day, n in events.annotate(day=TruncDate("at"))
            .values_list("day")
            .annotate(n=Count("id"))
            .order_by()
        }
        by_actor = {
            str(actor_id or "system"): n
            for actor_id, n in events.values_list("actor_id").annotate(n=Count("id")).order_by()
        }
        items = sum(by_verb.values())
        return ChunkOutcome(
            items=items,
            result={
                "events": items,
                "events_by_verb": by_verb,
                "events_by_day": by_day,
                "events_by_actor": by_actor,
            },
        )

    def merge_result(self, result: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
        merged = dict(result)
        merged["events"] = result.get("events", 0) + delta.get("events", 0)
        for key in ("events_by_verb", "events_by_day", "events_by_actor"):
            merged[key] = _add_counts(result.get(key, {}), delta.get(key, {}))
        return merged

    def finish(self, job: Job) -> dict[str, Any]:
        members: dict[str, int] = dict(
            ProjectMember.objects.filter(project_id=self._project_id(job))
            .values_list("role")
            .annotate(n=Count("id"))
            .order_by()
        )
        jobs: dict[str, int] = dict(
            Job.objects.filter(project_id=self._project_id(job))
            .exclude(id=job.pk)
            .values_list("state")
            .annotate(n=Count("id"))
            .order_by()
        )
        return {
            "events": 0,
            "events_by_verb": {},
            "events_by_day": {},
            "events_by_actor": {},
            **job.result,
            "members_by_role": members,
            "jobs_by_state": {state: jobs.get(state, 0) for state in JobState.values},
        }
