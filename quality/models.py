"""Quality's own records: findings, per-task agreement and consensus, and gold answers.

A project's quality settings (rules, agreement threshold, gold policy) live in
`Project.settings["quality"]`, read with the project on every request at no extra cost (the
submit path checks blocking rules). Verdicts on labeling's rows (a task's QC status, review
routing, pausing an annotator) are written through `labeling.verdicts`, never here.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from labeling.models import Annotation, ModelVersion, Release, Task
from projects.models import Job, Project


class FindingSource(models.TextChoices):
    RULE = "rule"  # a configured rule check (quality/rules.py)
    AGREEMENT = "agreement"  # annotators of a task disagree
    GOLD = "gold"  # an answer to a gold task far from its ground truth
    LABEL_ERROR = "label_error"  # confident learning over a classifier's out-of-sample probabilities
    DETECTION = "detection"  # a detector's predictions disagree with the annotation


class FindingStatus(models.TextChoices):
    OPEN = "open"
    RESOLVED = "resolved"
    DISMISSED = "dismissed"


class Finding(models.Model):
    """Something quality found about a task, an annotation or one of its regions.

    `key` identifies what was found (source, check, annotation, region, code): recording the same
    finding again updates it instead of adding a second one, so a QC job that re-runs a chunk or
    the whole project never duplicates, and a finding a reviewer dismissed stays dismissed.
    """

    project = models.ForeignKey(Project, db_index=False, on_delete=models.CASCADE, related_name="+")
    task = models.ForeignKey(Task, db_index=False, on_delete=models.CASCADE, related_name="+")
    annotation = models.ForeignKey(
        Annotation, db_index=False, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    region_id = models.CharField(max_length=64, blank=True, default="")
    label = models.CharField(max_length=200, blank=True, default="")  # the class concerned, if one
    source = models.CharField(max_length=16, choices=FindingSource.choices)
    kind = models.CharField(max_length=64)  # the rule kind, or what the detector found
    code = models.CharField(max_length=64)
    severity = models.CharField(max_length=16)  # blocking | warning
    score = models.FloatField(null=True, blank=True)  # detectors: higher = more likely wrong
    message = models.TextField()
    details = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=FindingStatus.choices, default=FindingStatus.OPEN)
    status_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    status_at = models.DateTimeField(null=True, blank=True)
    job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    key = models.CharField(max_length=300)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "key"], name="finding_key_unique")]
        indexes = [
            models.Index(fields=["project", "status", "-id"]),
            models.Index(fields=["project", "source", "kind"]),
            models.Index(fields=["task"]),
            models.Index(fields=["annotation"]),
        ]

    def __str__(self) -> str:
        return f"finding {self.pk} ({self.source}:{self.kind})"


class TaskQuality(models.Model):
    """Agreement between a task's annotators and their consensus, as the last assessment found.

    `pairs` holds each annotator pair's agreement ({"a": user, "b": user, "agreement": x});
    `consensus` the regions the annotations agree on (majority / Dawid-Skene label for
    classifications, fused geometry for the rest), `support` how many annotators back each.
    """

    task = models.OneToOneField(Task, on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey(Project, db_index=False, on_delete=models.CASCADE, related_name="+")
    annotators = models.IntegerField()
    agreement = models.FloatField(null=True, blank=True)
    pairs = models.JSONField(default=list, blank=True)
    consensus = models.JSONField(default=list, blank=True)
    method = models.CharField(max_length=32, blank=True, default="")
    annotation_ids = models.JSONField(default=list, blank=True)
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["project", "agreement"])]

    def __str__(self) -> str:
        return f"task {self.task_id} agreement {self.agreement}"


class GoldAnswer(models.Model):
    """One annotator's answer to a gold task, scored against the task's ground truth (0..1)."""

    project = models.ForeignKey(Project, db_index=False, on_delete=models.CASCADE, related_name="+")
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="+")
    annotation = models.OneToOneField(Annotation, on_delete=models.CASCADE, related_name="+")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    score = models.FloatField()
    at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["project", "annotator", "at"])]

    def __str__(self) -> str:
        return f"gold answer {self.annotation_id}: {self.score:.2f}"


class Evaluation(models.Model):
    """A model version measured against a release's approved labels (quality.evaluation).

    One per (model version, release, split): asking again returns it, a rerun recomputes it in
    place. `split` "" means every item of the release. `metrics` holds one block per family of
    regions measured (quality.metrics.evaluation), `plots` the object keys of the PNGs drawn from
    them (name → key), `counts` how the items were covered (reused predictions, model runs,
    failures). Filled by the job's last step; empty while it runs.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    release = models.ForeignKey(Release, db_index=False, on_delete=models.CASCADE, related_name="+")
    model_version = models.ForeignKey(
        ModelVersion, db_index=False, on_delete=models.CASCADE, related_name="+"
    )
    split = models.CharField(max_length=16, blank=True, default="")
    threshold = models.FloatField(default=0.5)
    job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    task_type = models.CharField(max_length=32, blank=True, default="")
    metrics = models.JSONField(default=dict, blank=True)
    plots = models.JSONField(default=dict, blank=True)
    counts = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model_version", "release", "split"], name="evaluation_once")
        ]
        indexes = [models.Index(fields=["release", "-id"])]

    def __str__(self) -> str:
        return f"evaluation {self.pk} of {self.model_version_id} on release {self.release_id}"
