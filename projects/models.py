"""The base of Loupe: accounts' API tokens, organizations, projects, roles, jobs and the audit log.

Every other app builds on these. Business rules live in services.py; models hold data, choices,
constraints and indexes only.
"""

from __future__ import annotations

from django.conf import settings as django_settings
from django.db import models
from django.db.models import Q


class OrgRole(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


class ProjectRole(models.TextChoices):
    MANAGER = "manager", "Manager"
    REVIEWER = "reviewer", "Reviewer"
    ANNOTATOR = "annotator", "Annotator"
    ML_ENGINEER = "ml_engineer", "ML engineer"


class ApiToken(models.Model):
    """A personal API token. Only its SHA-256 is stored; the token itself is shown once."""

    user = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, db_index=False, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    # The first characters of the token, shown in listings so a user can tell tokens apart.
    prefix = models.CharField(max_length=16)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "-id"])]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"


class Organization(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(
        django_settings.AUTH_USER_MODEL, through="Membership", related_name="organizations"
    )

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    organization = models.ForeignKey(
        Organization, db_index=False, on_delete=models.CASCADE, related_name="memberships"
    )
    user = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, db_index=False, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=OrgRole.choices, default=OrgRole.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "user"], name="membership_unique")]
        indexes = [models.Index(fields=["user", "organization"])]

    def __str__(self) -> str:
        return f"{self.user_id}@{self.organization_id} ({self.role})"


class Project(models.Model):
    organization = models.ForeignKey(
        Organization, db_index=False, on_delete=models.CASCADE, related_name="projects"
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    # Workflow settings (overlap, review policy, …) owned by later capabilities; validated by them.
    settings = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="project_name_unique")]

    def __str__(self) -> str:
        return self.name


class ProjectMember(models.Model):
    project = models.ForeignKey(Project, db_index=False, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(
        django_settings.AUTH_USER_MODEL,
        db_index=False,
        on_delete=models.CASCADE,
        related_name="project_roles",
    )
    role = models.CharField(max_length=16, choices=ProjectRole.choices)
    # Set while the member may not take new tasks (quality pauses an annotator whose accuracy on
    # gold tasks fell below the project's threshold; a manager resumes them).
    paused_at = models.DateTimeField(null=True, blank=True)
    paused_reason = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="project_member_unique")]
        indexes = [models.Index(fields=["user", "project"])]

    def __str__(self) -> str:
        return f"{self.user_id}@project {self.project_id} ({self.role})"


class JobState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class Job(models.Model):
    """A unit of background work that users watch: progress, errors, result, cancel.

    Work is split into chunks planned when the job first runs; each finished chunk is recorded
    in JobChunk in the same transaction as its effect, so a job taken over after a worker dies
    does only the chunks that are missing. ``run_token`` is the lease of the worker running it.
    """

    ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING)

    kind = models.CharField(max_length=64)
    organization = models.ForeignKey(
        Organization, db_index=False, on_delete=models.CASCADE, related_name="jobs"
    )
    project = models.ForeignKey(
        Project, db_index=False, on_delete=models.CASCADE, null=True, blank=True, related_name="jobs"
    )
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.QUEUED)
    params = models.JSONField(default=dict, blank=True)
    # Progress in the job's own unit (items, files, annotations…) and in chunks.
    done = models.BigIntegerField(default=0)
    total = models.BigIntegerField(null=True, blank=True)
    chunks_done = models.IntegerField(default=0)
    chunks_total = models.IntegerField(null=True, blank=True)
    error_count = models.IntegerField(default=0)
    result = models.JSONField(default=dict, blank=True)
    failure = models.TextField(blank=True, default="")
    cancel_requested = models.BooleanField(default=False)
    run_token = models.CharField(max_length=32, blank=True, default="")
    attempts = models.IntegerField(default=0)
    celery_task_ids = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["project", "-id"]),
            models.Index(fields=["organization", "-id"]),
            models.Index(
                fields=["state", "heartbeat_at"], name="job_active_idx", condition=Q(state="running")
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind}#{self.pk} ({self.state})"

    @property
    def is_finished(self) -> bool:
        return self.state not in self.ACTIVE_STATES


class ChunkState(models.TextChoices):
    LEASED = "leased", "Leased"
    DONE = "done", "Done"


class JobChunk(models.Model):
    """One chunk of a job: leased by the runner working on it, then done.

    The unique (job, index) makes exactly one runner win a chunk; the lease token fences a runner
    presumed dead (its lease expired and was taken over) out of recording it.
    """

    job = models.ForeignKey(Job, db_index=False, on_delete=models.CASCADE, related_name="chunks")
    index = models.IntegerField()
    items = models.IntegerField(default=0)
    state = models.CharField(max_length=8, choices=ChunkState.choices, default=ChunkState.DONE)
    token = models.CharField(max_length=32, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "index"], name="job_chunk_once")]

    def __str__(self) -> str:
        return f"job {self.job_id} chunk {self.index}"


class JobError(models.Model):
    """A per-item error: the item was skipped with this reason, the rest of the job went on."""

    job = models.ForeignKey(Job, db_index=False, on_delete=models.CASCADE, related_name="errors")
    chunk_index = models.IntegerField(null=True, blank=True)
    item = models.CharField(max_length=500, blank=True, default="")
    code = models.CharField(max_length=64)
    message = models.TextField()
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["job", "id"])]

    def __str__(self) -> str:
        return f"{self.code}: {self.item}"


class AuditEvent(models.Model):
    """Who changed what, when, from which request. Written in the same transaction as the change."""

    at = models.DateTimeField(auto_now_add=True)
    actor = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    organization = models.ForeignKey(
        Organization,
        db_index=False,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="audit_events",
    )
    project = models.ForeignKey(
        Project, db_index=False, on_delete=models.CASCADE, null=True, blank=True, related_name="audit_events"
    )
    verb = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    # {"field": [before, after]} for updates; the created/deleted object's fields otherwise.
    changes = models.JSONField(default=dict, blank=True)
    request_id = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        indexes = [
            models.Index(fields=["project", "-id"]),
            models.Index(fields=["organization", "-id"]),
            models.Index(fields=["object_type", "object_id"]),
        ]

    def __str__(self) -> str:
        return f"{self.verb} {self.object_type}:{self.object_id}"


class IdempotencyRecord(models.Model):
    """The answer to a retried write: same caller + same Idempotency-Key → same response, once.

    Claimed (status 0) before the write runs, so a concurrent retry cannot start it twice; filled
    with the response after; released when the write failed, so the client may try again.
    """

    user = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, db_index=False, on_delete=models.CASCADE, related_name="+"
    )
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)  # method and path the key was first used for
    status = models.IntegerField(default=0)  # 0 while the first request is still running
    body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotency_key_once")]
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.key}"
