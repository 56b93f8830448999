"""Label schemas, tasks, annotations with their revisions, and predictions.

Rows are changed only through labeling.services (never signals); this module declares fields,
constraints and indexes only. Region lists (`result`) are in the one region format of
docs/annotations.md and are validated before they are written.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from projects.models import Job, Organization, Project
from storage.models import Item


class RegionsField(models.JSONField):
    """A JSONB list of regions.

    Declaring get_placeholder keeps Django 5.2's bulk_create off its UNNEST strategy for these
    models: that strategy sends every JSON document inside a text-quoted array, escaped character
    by character, which made bulk predictions ~10x slower than plain parameters (one `%s` each).
    """

    def get_placeholder(self, value: Any, compiler: Any, connection: Any) -> str:
        return "%s"


class LabelSchema(models.Model):
    """One immutable version of a project's label schema (ontology).

    `operations` are the migration a version carried (rename, merge, split, delete, restore,
    attribute changes), applied to the existing annotations and predictions by `migration_job`.
    """

    project = models.ForeignKey(
        Project, db_index=False, on_delete=models.CASCADE, related_name="label_schemas"
    )
    version = models.IntegerField()
    spec = models.JSONField()
    operations = models.JSONField(default=list, blank=True)
    notes = models.TextField(blank=True, default="")
    migration_job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "version"], name="label_schema_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.project_id} v{self.version}"


class TaskState(models.TextChoices):
    OPEN = "open"
    IN_PROGRESS = "in_progress"
    SUBMITTED = "submitted"
    IN_REVIEW = "in_review"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DONE = "done"


class Task(models.Model):
    """An item inside a project: what annotators work on and annotations attach to.

    `active`, `submitted` and `open_slots` are kept by labeling.workflow in the transaction that
    changes an assignment: `open_slots = overlap - active - submitted`, and the queue reads only
    tasks with a free slot through a partial index.
    """

    project = models.ForeignKey(Project, db_index=False, on_delete=models.CASCADE, related_name="tasks")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="tasks")
    state = models.CharField(max_length=16, choices=TaskState.choices, default=TaskState.OPEN)
    priority = models.IntegerField(default=0)
    overlap = models.IntegerField(default=1)
    is_gold = models.BooleanField(default=False)
    qc_status = models.CharField(max_length=16, blank=True, default="")
    active = models.IntegerField(default=0)
    submitted = models.IntegerField(default=0)
    open_slots = models.IntegerField(default=1)
    # Ordering keys: a stable pseudo-random rank (ordering "random") and the lowest prediction
    # score (ordering "uncertainty"; null when no prediction).
    random_key = models.IntegerField(default=0)
    uncertainty = models.FloatField(null=True, blank=True)
    # The reviewer working on the task, until their review lease runs out.
    review_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    review_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "item"], name="task_item_unique"),
            models.CheckConstraint(
                condition=models.Q(active__gte=0, submitted__gte=0), name="task_counters_positive"
            ),
        ]
        indexes = [
            models.Index(fields=["project", "state", "-priority", "id"]),
            models.Index(
                fields=["project", "-priority", "id"],
                name="task_queue_priority",
                condition=models.Q(open_slots__gt=0),
            ),
            models.Index(
                fields=["project", "random_key", "id"],
                name="task_queue_random",
                condition=models.Q(open_slots__gt=0),
            ),
            models.Index(
                fields=["project", "uncertainty", "-priority", "id"],
                name="task_queue_uncertainty",
                condition=models.Q(open_slots__gt=0),
            ),
        ]

    def __str__(self) -> str:
        return f"task {self.pk}"


class AssignmentState(models.TextChoices):
    PENDING = "pending"  # assigned by a manager, not started
    ACTIVE = "active"  # holds a lease
    SUBMITTED = "submitted"
    SKIPPED = "skipped"
    RELEASED = "released"
    EXPIRED = "expired"
    UNASSIGNED = "unassigned"
    REJECTED = "rejected"  # its annotation was rejected and the slot went back to the pool


class Assignment(models.Model):
    """One annotator's slot on a task: pulled from the queue or assigned by a manager.

    One row per (task, user): a user never gets the same task twice. A rework reopens the same
    row with a new lease.
    """

    task = models.ForeignKey(Task, db_index=False, on_delete=models.CASCADE, related_name="assignments")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, db_index=False, on_delete=models.CASCADE, related_name="assignments"
    )
    state = models.CharField(max_length=16, choices=AssignmentState.choices)
    assigned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    lease_id = models.UUIDField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    annotation = models.ForeignKey(
        "Annotation", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    skip_reason = models.CharField(max_length=500, blank=True, default="")
    rework = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["task", "user"], name="assignment_task_user_unique")]
        indexes = [
            models.Index(fields=["user", "state"]),
            models.Index(
                fields=["lease_until"], name="assignment_active_lease", condition=models.Q(state="active")
            ),
        ]

    def __str__(self) -> str:
        return f"assignment {self.pk}"


class AnnotationState(models.TextChoices):
    DRAFT = "draft"
    SUBMITTED = "submitted"


class Annotation(models.Model):
    """One person's (or an import's) labels for a task, versioned: each write bumps `version`."""

    task = models.ForeignKey(Task, db_index=False, on_delete=models.CASCADE, related_name="annotations")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, db_index=False, on_delete=models.PROTECT, related_name="annotations"
    )
    schema_version = models.IntegerField()
    state = models.CharField(max_length=16, choices=AnnotationState.choices, default=AnnotationState.DRAFT)
    result = RegionsField(default=list)
    # Regions of classes a schema migration deleted: kept, never destroyed; restore brings them back.
    archived = RegionsField(default=list, blank=True)
    version = models.IntegerField(default=1)
    lead_time_ms = models.BigIntegerField(default=0)
    ground_truth = models.BooleanField(default=False)
    # The last review's verdict on this annotation ("" until reviewed): accepted or rejected.
    review_status = models.CharField(max_length=16, blank=True, default="")
    from_prediction = models.ForeignKey(
        "Prediction", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # When it started from a prediction: what became of each predicted region at submit
    # (labeling/regions/compare.py), the raw material of the pre-label effectiveness report.
    prediction_outcome = models.JSONField(null=True, blank=True)
    import_job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["task", "author"]),
            models.Index(fields=["author", "-id"]),
        ]

    def __str__(self) -> str:
        return f"annotation {self.pk} v{self.version}"


class RevisionAction(models.TextChoices):
    CREATE = "create"
    UPDATE = "update"
    SUBMIT = "submit"
    DELETE = "delete"
    MIGRATE = "migrate"
    IMPORT = "import"


class AnnotationRevision(models.Model):
    """Every version an annotation had: who made it, when, how, and what changed."""

    annotation = models.ForeignKey(
        Annotation, db_index=False, on_delete=models.CASCADE, related_name="revisions"
    )
    version = models.IntegerField()
    action = models.CharField(max_length=16, choices=RevisionAction.choices)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    state = models.CharField(max_length=16, choices=AnnotationState.choices)
    schema_version = models.IntegerField()
    result = RegionsField(default=list)
    # Region ids added, removed and changed relative to the previous revision.
    changes = models.JSONField(default=dict, blank=True)
    job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["annotation", "version"], name="annotation_revision_unique")
        ]

    def __str__(self) -> str:
        return f"annotation {self.annotation_id} r{self.version}"


class ModelKind(models.TextChoices):
    BUILTIN = "builtin"  # code in Loupe (labeling/inference/builtin), runs in the worker
    HTTP = "http"  # a model server speaking Loupe's protocol (docs/model-servers.md)
    LABELSTUDIO = "labelstudio"  # a Label Studio ML backend, used unchanged
    TRAINED = "trained"  # trained in Loupe on a release


class MLModel(models.Model):
    """A model an organization registered for pre-labeling; what it does is per version."""

    organization = models.ForeignKey(
        Organization, db_index=False, on_delete=models.CASCADE, related_name="ml_models"
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="ml_model_name_unique")]

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    """One immutable version of a model: how to run it, what it reads and says, its defaults.

    `labels` are the model's own vocabulary; `label_map` maps them onto schema class names (a
    pre-label job may override it per project); labels it leaves out are dropped and counted.
    """

    model = models.ForeignKey(MLModel, db_index=False, on_delete=models.CASCADE, related_name="versions")
    version = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=ModelKind.choices)
    builtin = models.CharField(max_length=100, blank=True, default="")  # registry name (builtin)
    endpoint = models.URLField(max_length=2000, blank=True, default="")  # http / labelstudio
    task_type = models.CharField(max_length=50)
    modalities = models.JSONField(default=list)
    outputs = models.JSONField(default=list)  # region types
    labels = models.JSONField(default=list)
    params = models.JSONField(default=dict, blank=True)
    label_map = models.JSONField(default=dict, blank=True)
    # Trained versions (kind "trained"): the release they learned from (the card keeps its id,
    # version and manifest checksum should the release go), the model card shown to users, and
    # the files in object storage with their SHA-256, checked before a worker loads them.
    release = models.ForeignKey(
        "Release", on_delete=models.SET_NULL, null=True, blank=True, related_name="model_versions"
    )
    card = models.JSONField(default=dict, blank=True)
    artifacts = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "version"], name="model_version_unique")]

    def __str__(self) -> str:
        return f"{self.model_id}:{self.version}"


class Prediction(models.Model):
    """A model's regions for a task, with per-region scores (in `result`) and an overall score.

    `source` is the registered model version that made it (pre-label jobs): at most one per task
    and version, so a re-run or a worker killed mid-batch never duplicates. `model_version` is the
    name shown and exported (free text for predictions imported or posted by clients).
    """

    task = models.ForeignKey(Task, db_index=False, on_delete=models.CASCADE, related_name="predictions")
    source = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="predictions"
    )
    model_version = models.CharField(max_length=200)
    schema_version = models.IntegerField()
    result = RegionsField(default=list)
    archived = RegionsField(default=list, blank=True)
    score = models.FloatField(null=True, blank=True)
    job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["task", "model_version"]), models.Index(fields=["model_version"])]
        # NULL sources (posted or imported predictions) are distinct, so only versions are unique.
        constraints = [models.UniqueConstraint(fields=["task", "source"], name="prediction_once_per_source")]

    def __str__(self) -> str:
        return f"prediction {self.pk}"


class Verdict(models.TextChoices):
    ACCEPT = "accept"
    REJECT = "reject"
    FIX = "fix"


class Review(models.Model):
    annotation = models.ForeignKey(Annotation, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, db_index=False, on_delete=models.PROTECT, related_name="+"
    )
    verdict = models.CharField(max_length=8, choices=Verdict.choices)
    comment = models.TextField(blank=True, default="")
    annotation_version = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["reviewer", "-id"])]

    def __str__(self) -> str:
        return f"review {self.pk}"


class Comment(models.Model):
    """A note on a task, optionally on one annotation or one region; threads through `parent`."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="comments")
    annotation = models.ForeignKey(
        Annotation, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    region = models.CharField(max_length=64, blank=True, default="")
    parent = models.ForeignKey(
        "self", on_delete=models.CASCADE, null=True, blank=True, related_name="replies"
    )
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    body = models.TextField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"comment {self.pk}"


# --- Releases ------------------------------------------------------------------------------------


class ReleaseState(models.TextChoices):
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"


class Release(models.Model):
    """An immutable, numbered version of a project's approved labels (docs/releases.md).

    Built by a job (labeling.release_build) that freezes one `ReleaseItem` per selected task and
    writes the manifest to object storage; once `ready`, nothing about it changes. `parent` is the
    release it follows (the project's previous ready release unless the caller names another):
    splits stay where the parent put them, and diffs default to it.
    """

    project = models.ForeignKey(Project, db_index=False, on_delete=models.CASCADE, related_name="releases")
    version = models.IntegerField()
    name = models.CharField(max_length=200)
    notes = models.TextField(blank=True, default="")
    filter = models.JSONField(default=dict, blank=True)  # normalized selection (labeling.releases.select)
    splits = models.JSONField(default=dict, blank=True)  # {"ratios": {...}, "stratify": bool, "seed": str}
    parent = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    schema_version = models.IntegerField()
    state = models.CharField(max_length=16, choices=ReleaseState.choices, default=ReleaseState.BUILDING)
    job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    manifest_key = models.CharField(max_length=512, blank=True, default="")
    manifest_sha256 = models.CharField(max_length=64, blank=True, default="")
    manifest_size = models.BigIntegerField(default=0)
    counts = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "version"], name="release_version_unique")]

    def __str__(self) -> str:
        return f"{self.project_id} release {self.version}"


class ReleaseItem(models.Model):
    """One item of a release, frozen: its blob, the labels chosen for it and its split.

    Everything a consumer reads is copied here, so a release stays byte-identical when the
    annotation, the item or its task later change or go away (the references carry no database
    constraint for that reason). `source` says where `regions` came from: the task's ground truth,
    its accepted annotation, the annotators' consensus, or its (only) submitted annotation.
    """

    release = models.ForeignKey(Release, db_index=False, on_delete=models.CASCADE, related_name="entries")
    item = models.ForeignKey(Item, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    task = models.ForeignKey(Task, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    dataset_id = models.IntegerField()
    name = models.CharField(max_length=1024)
    modality = models.CharField(max_length=16)
    media_type = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64)
    blob_key = models.CharField(max_length=512)
    size = models.BigIntegerField(default=0)
    meta = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=16)
    annotation_id = models.IntegerField(null=True, blank=True)
    annotation_version = models.IntegerField(null=True, blank=True)
    annotations = models.JSONField(default=list, blank=True)  # every annotation the labels rest on
    schema_version = models.IntegerField()
    regions = RegionsField(default=list)
    regions_sha256 = models.CharField(max_length=64)
    split = models.CharField(max_length=16)
    stratum = models.CharField(max_length=200, blank=True, default="")  # the class stratified on

    class Meta:
        constraints = [models.UniqueConstraint(fields=["release", "item"], name="release_item_unique")]
        indexes = [models.Index(fields=["release", "split", "item"], name="release_item_split")]

    def __str__(self) -> str:
        return f"release {self.release_id} item {self.item_id}"


class ReleaseExport(models.Model):
    """A release written in one format (optionally with its media), once: a release never changes,
    so asking again returns the same file."""

    release = models.ForeignKey(Release, db_index=False, on_delete=models.CASCADE, related_name="exports")
    format = models.CharField(max_length=32)
    include_media = models.BooleanField(default=False)
    job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    key = models.CharField(max_length=512, blank=True, default="")
    filename = models.CharField(max_length=300, blank=True, default="")
    media_type = models.CharField(max_length=100, blank=True, default="")
    size = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["release", "format", "include_media"], name="release_export_unique"
            )
        ]

    def __str__(self) -> str:
        return f"release {self.release_id} {self.format}"


class Training(models.Model):
    """One training of a model on a release (labeling.training, docs/training.md): the recipe and
    its parameters, the job that runs it, and the model version it registered once it succeeded.

    The version is created in the transaction of the job's last chunk and the one-to-one link
    makes that registration happen once per training, whatever the workers did meanwhile.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="trainings")
    release = models.ForeignKey(Release, db_index=False, on_delete=models.CASCADE, related_name="trainings")
    recipe = models.CharField(max_length=50)
    params = models.JSONField(default=dict, blank=True)  # normalized, defaults filled in
    model_name = models.CharField(max_length=200)
    job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    model_version = models.OneToOneField(
        ModelVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="training"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["release", "-id"])]

    def __str__(self) -> str:
        return f"training {self.pk} ({self.recipe})"


from labeling.webhooks.models import *  # noqa: E402,F403  (the webhook models belong to this app)
