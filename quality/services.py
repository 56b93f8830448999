"""Quality's writes: settings, findings, what happens at submit (rules, gold answers) and when a
task's last annotation arrives (agreement, consensus).

The submit path runs in the annotator's request: rules are parsed once per settings text and
checked in memory, and the findings of one annotation are written with one statement.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Avg
from django.utils import timezone

from labeling import hooks, verdicts
from labeling.hooks import Recorder, Submitted
from labeling.models import Annotation, Task
from labeling.services import parsed_schema, schema_current
from labeling.workflow import QC_FLAGGED, QC_PASSED
from projects.access import ProjectAccess, ProjectAction
from projects.audit import audit_record
from projects.bulk import insert_on_conflict
from projects.exceptions import DomainError, InvalidInput, NotFound, SchemaViolation
from projects.models import Job, Project
from quality import rules as qr
from quality.config import QualitySettings, parse_settings, rules_of, settings_of
from quality.metrics.consensus import fuse_regions
from quality.metrics.matching import match_regions, task_agreement
from quality.models import Finding, FindingSource, FindingStatus, GoldAnswer, TaskQuality


class SettingsRefused(SchemaViolation):
    code = "quality_settings_invalid"
    default_message = "The quality settings are not valid; details.errors lists every problem."


class RuleViolation(DomainError):
    code, status_code = "quality_rule_violation", 422
    default_message = "The annotation breaks the project's blocking quality rules."


# --- Settings ------------------------------------------------------------------------------------


def quality_settings(project: Project) -> QualitySettings:
    return settings_of(project.settings)


@transaction.atomic
def quality_settings_update(*, actor: User, access: ProjectAccess, raw: Any) -> QualitySettings:
    """Replace the project's quality settings, checked as a whole against the current schema."""
    access.require(ProjectAction.QUALITY_MANAGE)
    schema = schema_current(access.project.pk)
    try:
        parsed = parse_settings(raw, schema=parsed_schema(schema) if schema is not None else None)
    except qr.RulesInvalid as exc:
        raise SettingsRefused(errors=exc.errors) from None
    project = Project.objects.select_for_update().get(id=access.project.pk)
    before = settings_of(project.settings)
    project.settings = {**(project.settings or {}), "quality": parsed.as_json()}
    project.save(update_fields=["settings", "updated_at"])
    audit_record(
        actor=actor,
        verb="quality.settings",
        obj=project,
        organization=access.project.organization,
        project=project,
        changes={"before": before.as_json(), "after": parsed.as_json()},
    )
    return parsed


# --- Findings ------------------------------------------------------------------------------------


@dataclass(slots=True)  # not frozen: a QC job builds tens of thousands, and frozen ones cost 3x
class NewFinding:
    task_id: int
    annotation_id: int | None
    annotator_id: int | None
    source: str
    kind: str
    code: str
    severity: str
    message: str
    region_id: str = ""
    label: str = ""
    score: float | None = None
    details: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        subject = f"a{self.annotation_id}" if self.annotation_id is not None else f"t{self.task_id}"
        return f"{self.source}:{self.kind}:{subject}:{self.region_id}:{self.code}"[:300]


_FINDING_COLUMNS = (
    "project_id", "task_id", "annotation_id", "annotator_id", "region_id", "label", "source", "kind",
    "code", "severity", "score", "message", "details", "status", "job_id", "key", "created_at",
    "updated_at",
)  # fmt: skip
# Found again: the text and score are the new ones; a dismissed finding stays dismissed, anything
# else is open again.
_REFOUND = (
    "message = EXCLUDED.message",
    "score = EXCLUDED.score",
    "details = EXCLUDED.details",
    "severity = EXCLUDED.severity",
    "label = EXCLUDED.label",
    "job_id = EXCLUDED.job_id",
    "updated_at = EXCLUDED.updated_at",
    "status = CASE WHEN quality_finding.status = 'dismissed' THEN 'dismissed' ELSE 'open' END",
)


def findings_record(project_id: int, found: Sequence[NewFinding], *, job: Job | None = None) -> None:
    """Insert findings, or refresh the ones already recorded (same key); inside
    `rows.together()` with the block's other writes."""
    now = timezone.now()
    rows = [
        (
            project_id,
            f.task_id,
            f.annotation_id,
            f.annotator_id,
            f.region_id or "",
            f.label or "",
            f.source,
            f.kind,
            f.code,
            f.severity,
            f.score,
            f.message,
            f.details or {},
            FindingStatus.OPEN,
            job.pk if job is not None else None,
            f.key,
            now,
            now,
        )
        for f in {f.key: f for f in found}.values()
    ]
    insert_on_conflict(
        Finding, _FINDING_COLUMNS, rows, conflict=("project_id", "key"), update_sql=_REFOUND, counted=False
    )


def findings_resolve_stale(
    *, project_id: int, source: str, annotations: Iterable[int] | range, keep: Iterable[str] | Job
) -> int:
    """Open findings of `source` on these annotations that were not found again are resolved:
    the annotation was fixed, or the rule that found them changed. `keep` names what was found
    again: its keys, or the job that has just recorded it (a chunk of a job: every finding it
    recorded carries its id, and an id range stands for the chunk's annotations)."""
    found = Finding.objects.filter(project_id=project_id, source=source, status=FindingStatus.OPEN)
    if isinstance(annotations, range):
        found = found.filter(annotation_id__gte=annotations.start, annotation_id__lt=annotations.stop)
    else:
        found = found.filter(annotation_id__in=list(annotations))
    found = found.exclude(job_id=keep.pk) if isinstance(keep, Job) else found.exclude(key__in=list(keep))
    return found.update(status=FindingStatus.RESOLVED, status_at=timezone.now(), status_by=None)


def finding_set_status(
    *, actor: User, access: ProjectAccess, finding_id: int, status: str, note: str = ""
) -> Finding:
    """A reviewer resolves (fixed) or dismisses (not a problem) a finding, or reopens it."""
    access.require(ProjectAction.QUALITY_TRIAGE)
    if status not in FindingStatus.values:
        raise InvalidInput("status is open, resolved or dismissed.", field="status")
    with transaction.atomic():
        finding = (
            Finding.objects.select_for_update().filter(id=finding_id, project_id=access.project.pk).first()
        )
        if finding is None:
            raise NotFound("Finding not found.", finding_id=finding_id)
        if finding.status != status:
            before = finding.status
            finding.status, finding.status_by, finding.status_at = status, actor, timezone.now()
            if note:
                finding.details = {**finding.details, "note": note}
            finding.save(update_fields=["status", "status_by", "status_at", "details", "updated_at"])
            audit_record(
                actor=actor,
                verb="finding.status",
                obj=finding,
                organization=access.project.organization,
                project=access.project,
                changes={"status": [before, status], "note": note},
            )
    return finding


def rule_findings(
    found: Sequence[qr.Finding], *, task_id: int, annotation_id: int | None, annotator_id: int | None,
    labels: dict[str, str],
) -> list[NewFinding]:  # fmt: skip
    """Rule-check results as findings (labels: each region id's class, for the report by class)."""
    return [
        NewFinding(
            task_id=task_id,
            annotation_id=annotation_id,
            annotator_id=annotator_id,
            source=FindingSource.RULE,
            kind=f.rule,
            code=f.code,
            severity=f.severity,
            message=f.message,
            region_id=f.region_id or "",
            label=labels.get(f.region_id or "", ""),
            details={"rule_index": f.rule_index},
        )
        for f in found
    ]


def region_labels(regions: Iterable[dict[str, Any]]) -> dict[str, str]:
    return {str(r.get("id")): str(r.get("label") or "") for r in regions if r.get("id") is not None}


# --- At submit -----------------------------------------------------------------------------------


def item_text(task: Task, rules: Sequence[qr.Rule]) -> str | None:
    """The item's text, read only when a token-edge rule will look at spans of a text item."""
    if task.item.modality != "text" or not any(r.kind == "token_edges" for r in rules):
        return None
    from labeling.jobs import read_text
    from storage.objects import object_store

    return read_text(object_store(), task.item.primary.key, task.item.meta)


def submit_check(work: Submitted) -> Recorder | None:
    """Blocking rules refuse the submit (422, every blocking finding named); warnings are kept as
    findings in the submit's transaction; answers to gold tasks are scored there too."""
    settings = quality_settings(work.project)
    rules = rules_of(settings)
    found: list[qr.Finding] = []
    if rules:
        text = item_text(work.task, rules)
        found = qr.check(rules, work.regions, schema=work.schema, facts=work.facts, text=text)
        refused = qr.blocking(found)
        if refused:
            raise RuleViolation(findings=[f.as_dict() for f in refused])
    gold = work.task.is_gold
    if not rules and not gold:
        return None
    labels = region_labels(work.regions)

    def record(annotation: Annotation) -> None:
        new = rule_findings(
            found,
            task_id=work.task.pk,
            annotation_id=annotation.pk,
            annotator_id=work.author_id,
            labels=labels,
        )
        findings_record(work.project.pk, new)
        findings_resolve_stale(
            project_id=work.project.pk,
            source=FindingSource.RULE,
            annotations=[annotation.pk],
            keep=[f.key for f in new],
        )
        if gold:
            gold_answer_record(work.project, annotation, settings)

    return record


# --- Gold ----------------------------------------------------------------------------------------


def gold_score(
    truth: Sequence[dict[str, Any]], answer: Sequence[dict[str, Any]], *, match_at: float
) -> float:
    """How close an answer is to the ground truth, in [0, 1], with the agreement matchers
    (label-aware: a right box of the wrong class is wrong)."""
    return match_regions(truth, answer, threshold=match_at, label_aware=True).agreement


def gold_answer_record(
    project: Project, annotation: Annotation, settings: QualitySettings
) -> GoldAnswer | None:
    """Score an answer to a gold task, record it, and act when the annotator's recent gold
    accuracy fell below the project's threshold (flag: a finding; pause: no new tasks)."""
    truth = verdicts.ground_truth_of([annotation.task_id]).get(annotation.task_id)
    if truth is None or annotation.ground_truth:
        return None
    score = gold_score(truth, annotation.result, match_at=settings.agreement.match_at)
    answer, _ = GoldAnswer.objects.update_or_create(
        annotation=annotation,
        defaults={
            "project": project,
            "task_id": annotation.task_id,
            "annotator_id": annotation.author_id,
            "score": score,
            "at": annotation.submitted_at or timezone.now(),
        },
    )
    policy = settings.gold
    recent = list(
        GoldAnswer.objects.filter(project=project, annotator_id=annotation.author_id)
        .order_by("-at", "-id")
        .values_list("score", flat=True)[: policy.window]
    )
    if len(recent) < policy.min_answers:
        return answer
    accuracy = sum(recent) / len(recent)
    if accuracy >= policy.min_accuracy:
        return answer
    findings_record(
        project.pk,
        [
            NewFinding(
                task_id=annotation.task_id,
                annotation_id=annotation.pk,
                annotator_id=annotation.author_id,
                source=FindingSource.GOLD,
                kind="annotator_accuracy",
                code="below_threshold",
                severity="warning",
                score=1 - accuracy,
                message=(
                    f"The annotator's accuracy on their last {len(recent)} gold tasks is {accuracy:.0%}, "
                    f"below the project's {policy.min_accuracy:.0%}."
                ),
                details={"accuracy": accuracy, "answers": len(recent), "action": policy.action},
            )
        ],
    )
    if policy.action == "pause":
        verdicts.annotator_pause(
            project_id=project.pk,
            user_id=annotation.author_id,
            reason=f"gold accuracy {accuracy:.0%} below {policy.min_accuracy:.0%}",
        )
    return answer


def gold_accuracy(project_id: int) -> dict[int, float]:
    """Each annotator's mean gold score over all their answers."""
    return dict(
        GoldAnswer.objects.filter(project_id=project_id)
        .values_list("annotator_id")
        .annotate(mean=Avg("score"))
        .order_by()
    )


# --- When a task's last annotation arrives -------------------------------------------------------


# The submitted annotations in the tasks' slots, in one hand-written statement: the completing
# submit of every multi-annotated task reads them, and building this query through the ORM cost
# several times what PostgreSQL spends answering it.
_SUBMITTED_SQL = """
    SELECT a.task_id, a.author_id, a.id, a.result
    FROM labeling_assignment s JOIN labeling_annotation a ON a.id = s.annotation_id
    WHERE s.task_id = ANY(%s) AND s.state = 'submitted'
      AND a.state = 'submitted' AND a.deleted_at IS NULL AND NOT a.ground_truth
    ORDER BY a.task_id, a.author_id, a.id
"""


def submitted_results(task_ids: Sequence[int]) -> dict[int, dict[int, tuple[int, list[dict[str, Any]]]]]:
    """{task: {annotator: (annotation id, regions)}} of the submitted annotations in the tasks' slots."""
    with connection.cursor() as cursor:
        cursor.execute(_SUBMITTED_SQL, [list(task_ids)])
        rows = cursor.fetchall()
    out: dict[int, dict[int, tuple[int, list[dict[str, Any]]]]] = {}
    for task_id, author_id, annotation_id, result in rows:
        regions = json.loads(result) if isinstance(result, str) else result
        out.setdefault(task_id, {})[author_id] = (annotation_id, regions)
    return out


@dataclass(frozen=True)
class Assessment:
    task_id: int
    annotators: int
    agreement: float | None
    pairs: list[dict[str, Any]]
    consensus: list[dict[str, Any]]
    annotation_ids: list[int]
    flagged: bool
    # What each annotator said of each object of the task, for chance-corrected agreement: one
    # unit (a class per annotator) for single-label classifications, else one unit per group of
    # regions the fusion formed, NOTHING for an annotator who drew nothing there.
    units: list[list[str]] = field(default_factory=list)


NOTHING = "\u2205"  # ∅: an annotator left this object out


def single_class(regions: Sequence[dict[str, Any]]) -> str | None:
    """The one class of an annotation that is a single classification (else None)."""
    classes = [r.get("label") for r in regions if r.get("type") == "classification"]
    return str(classes[0]) if len(classes) == 1 and len(regions) == 1 else None


def assess(
    task_id: int,
    by_annotator: dict[int, tuple[int, list[dict[str, Any]]]],
    settings: QualitySettings,
    weights: dict[int, float] | None = None,
) -> Assessment:
    """Agreement of a task's annotators and their fused consensus (weights: annotator reliability)."""
    results = {a: regions for a, (_, regions) in by_annotator.items()}
    policy = settings.agreement
    agreement = task_agreement(results, threshold=policy.match_at)
    pairs = [
        {"a": agreement.annotators[i], "b": agreement.annotators[j], "agreement": agreement.matrix[i][j]}
        for i in range(len(agreement.annotators))
        for j in range(i + 1, len(agreement.annotators))
    ]
    consensus: list[dict[str, Any]] = []
    units: list[list[str]] = []
    classes = {a: single_class(regions) for a, regions in results.items()}
    if len(results) >= 2 and all(c is not None for c in classes.values()):
        units = [[str(c) for c in classes.values()]]
    if len(results) >= 2:
        usable = {a: w for a, w in (weights or {}).items() if a in results and w > 0}
        fusion = fuse_regions(
            results,
            {a: usable.get(a, 1.0) for a in results} if usable else None,
            threshold=policy.match_at,
        )
        consensus = fusion.regions
        if not units:
            label = {
                (a, str(r.get("id"))): str(r.get("label") or "") for a, rs in results.items() for r in rs
            }
            for support in [*fusion.support.values(), *fusion.dropped]:
                said = {a: label.get((a, rid), NOTHING) for a, rid in support.members}
                units.append([said.get(a, NOTHING) for a in results])
    flagged = agreement.score is not None and agreement.score < policy.min_agreement
    return Assessment(
        task_id=task_id,
        annotators=len(results),
        agreement=agreement.score,
        pairs=pairs,
        consensus=consensus,
        annotation_ids=sorted(i for i, _ in by_annotator.values()),
        flagged=flagged,
        units=units,
    )


def agreement_finding(a: Assessment, settings: QualitySettings) -> NewFinding:
    return NewFinding(
        task_id=a.task_id,
        annotation_id=None,
        annotator_id=None,
        source=FindingSource.AGREEMENT,
        kind="low_agreement",
        code="low_agreement",
        severity="warning",
        score=None if a.agreement is None else 1 - a.agreement,
        message=(
            f"The task's {a.annotators} annotators agree {a.agreement:.0%}, below the project's "
            f"{settings.agreement.min_agreement:.0%}."
        ),
        details={"agreement": a.agreement, "pairs": a.pairs},
    )


_QUALITY_COLUMNS = ("task_id", "project_id", "annotators", "agreement", "pairs", "consensus", "method",
                    "annotation_ids", "computed_at")  # fmt: skip


def assessments_record(project_id: int, found: Sequence[Assessment], method: str) -> None:
    now = timezone.now()
    rows = [
        (
            a.task_id,
            project_id,
            a.annotators,
            a.agreement,
            a.pairs,
            a.consensus,
            method,
            a.annotation_ids,
            now,
        )
        for a in found
    ]
    insert_on_conflict(
        TaskQuality, _QUALITY_COLUMNS, rows, conflict=("task_id",), update=_QUALITY_COLUMNS[2:], counted=False
    )


def task_complete(task: Task) -> None:
    """A task's last slot was submitted (its row locked by the submit): with two or more
    annotators, measure their agreement, keep their consensus, and flag the task when they
    disagree too much (the workflow then sends it to review)."""
    if task.overlap < 2:
        return
    settings = settings_of(task.project.settings)
    by_annotator = submitted_results([task.pk]).get(task.pk, {})
    if len(by_annotator) < 2:
        return
    found = assess(task.pk, by_annotator, settings)
    assessments_record(task.project_id, [found], "vote")
    if found.flagged:
        findings_record(task.project_id, [agreement_finding(found, settings)])
    task.qc_status = QC_FLAGGED if found.flagged else (task.qc_status or QC_PASSED)


# --- What releases read (labeling.hooks) -------------------------------------------------------


def consensus_for_release(task_ids: list[int]) -> dict[int, hooks.Consensus]:
    """The last assessed consensus of each task that has one."""
    rows = (
        TaskQuality.objects.filter(task_id__in=task_ids)
        .exclude(method="")
        .values_list("task_id", "consensus", "annotation_ids", "method", "agreement")
    )
    return {
        task_id: hooks.Consensus(
            regions=list(consensus), annotation_ids=list(ids), method=method, agreement=agreement
        )
        for task_id, consensus, ids, method, agreement in rows
    }


def quality_facts(task_ids: list[int]) -> dict[int, dict[str, Any]]:
    """For a release's lineage: the task's agreement, the rules its annotations were checked
    against and which of them found something, and every finding with its status."""
    facts: dict[int, dict[str, Any]] = {}
    tasks = dict(Task.objects.filter(id__in=task_ids).values_list("id", "project_id"))
    rules_by_project: dict[int, list[str]] = {}
    for project in Project.objects.filter(id__in=set(tasks.values())):
        rules_by_project[project.pk] = sorted({rule.kind for rule in rules_of(settings_of(project.settings))})
    for task_id, project_id in tasks.items():
        facts[task_id] = {"rules_checked": rules_by_project.get(project_id, []), "findings": []}
    for row in TaskQuality.objects.filter(task_id__in=task_ids).values(
        "task_id", "annotators", "agreement", "method", "annotation_ids"
    ):
        shown: dict[str, Any] = dict(row)
        facts[int(shown.pop("task_id"))]["agreement"] = shown
    for finding in (
        Finding.objects.filter(task_id__in=task_ids)
        .order_by("id")
        .values(
            "task_id",
            "id",
            "source",
            "kind",
            "code",
            "severity",
            "status",
            "annotation_id",
            "region_id",
            "message",
        )
    ):
        found: dict[str, Any] = dict(finding)
        facts[int(found.pop("task_id"))]["findings"].append(found)
    for task_facts in facts.values():
        failed = {
            f["kind"]
            for f in task_facts["findings"]
            if f["source"] == FindingSource.RULE and f["status"] == FindingStatus.OPEN
        }
        task_facts["rules_passed"] = [kind for kind in task_facts["rules_checked"] if kind not in failed]
    return facts
