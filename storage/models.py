"""Where data lives: content-addressed blobs, datasets, items, and the bookkeeping of ingest."""

from __future__ import annotations

from django.conf import settings as django_settings
from django.contrib.postgres.indexes import GinIndex
from django.db import models

from projects.models import Job, Organization, Project


class Blob(models.Model):
    """Bytes stored once per content: the same sha256 is the same object, whoever brought it.

    Written after its object exists in the store; the sweeper flags rows whose object vanished
    (``missing_since``) and deletes objects no row references.
    """

    sha256 = models.CharField(max_length=64, unique=True)
    size = models.BigIntegerField()
    media_type = models.CharField(max_length=255)
    key = models.CharField(max_length=512, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    missing_since = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.sha256[:12]} ({self.size} B)"


class Modality(models.TextChoices):
    IMAGE = "image", "Image"
    TEXT = "text", "Text"
    AUDIO = "audio", "Audio"
    VIDEO = "video", "Video"
    POINTCLOUD = "pointcloud", "Point cloud"
    DICOM = "dicom", "DICOM"
    PDF = "pdf", "PDF / document"
    MULTISENSOR = "multisensor", "Multi-sensor frame"


class Dataset(models.Model):
    """Data of an organization; linkable to several projects, which then label its items."""

    organization = models.ForeignKey(
        Organization, db_index=False, on_delete=models.CASCADE, related_name="datasets"
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    projects = models.ManyToManyField(Project, blank=True, related_name="datasets")
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="dataset_name_unique")]

    def __str__(self) -> str:
        return self.name


class Item(models.Model):
    """One unit to label: one or more blobs (a frame's LiDAR sweep and its camera images) + metadata.

    ``name`` is the item's identity inside its dataset (a relative path, a bucket key, a manifest
    key): bringing the same name in again updates or skips the item instead of duplicating it.
    """

    dataset = models.ForeignKey(Dataset, db_index=False, on_delete=models.CASCADE, related_name="items")
    name = models.CharField(max_length=1024)
    modality = models.CharField(max_length=16, choices=Modality.choices)
    media_type = models.CharField(max_length=255)
    size = models.BigIntegerField(default=0)
    # Probed facts (width/height, duration, points…) plus what the importer supplied under "user".
    meta = models.JSONField(default=dict, blank=True)
    primary = models.ForeignKey(Blob, on_delete=models.PROTECT, related_name="primary_of")
    thumbnail = models.ForeignKey(
        Blob, on_delete=models.PROTECT, null=True, blank=True, related_name="thumb_of"
    )
    # 64-bit perceptual hash of images (signed, to fit bigint), for near-duplicate search.
    phash = models.BigIntegerField(null=True, blank=True)
    ingest_job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["dataset", "name"], name="item_name_unique")]
        indexes = [
            models.Index(fields=["dataset", "-id"]),
            models.Index(fields=["dataset", "modality", "-id"]),
            models.Index(fields=["dataset", "primary"]),
            models.Index(
                fields=["dataset", "phash"], condition=models.Q(phash__isnull=False), name="item_phash_idx"
            ),
            GinIndex(fields=["meta"], name="item_meta_gin", opclasses=["jsonb_path_ops"]),
        ]

    def __str__(self) -> str:
        return self.name


class ItemBlob(models.Model):
    """The further parts of a multi-part item (a multi-sensor frame's images, a calibration file)."""

    item = models.ForeignKey(Item, db_index=False, on_delete=models.CASCADE, related_name="parts")
    blob = models.ForeignKey(Blob, on_delete=models.PROTECT, related_name="+")
    role = models.CharField(max_length=64)
    name = models.CharField(max_length=1024)
    meta = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["item", "role"], name="item_part_role_unique")]

    def __str__(self) -> str:
        return f"{self.item_id}:{self.role}"


class BucketSource(models.Model):
    """An external bucket/prefix a dataset syncs from. Credentials are write-only."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="bucket_sources")
    bucket = models.CharField(max_length=255)
    prefix = models.CharField(max_length=1024, blank=True, default="")
    endpoint_url = models.CharField(max_length=500, blank=True, default="")
    region = models.CharField(max_length=64, blank=True, default="")
    addressing = models.CharField(max_length=16, default="auto")
    # Never returned by the API. Empty: the workers' own credential chain is used.
    access_key_id = models.CharField(max_length=256, blank=True, default="")
    secret_access_key = models.CharField(max_length=512, blank=True, default="")
    last_synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


class BucketObject(models.Model):
    """What a sync has seen of an external key, so the next sync adds only new or changed ones."""

    source = models.ForeignKey(
        BucketSource, db_index=False, on_delete=models.CASCADE, related_name="seen_objects"
    )
    key = models.CharField(max_length=1024)
    etag = models.CharField(max_length=128)
    size = models.BigIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "key"], name="bucket_object_unique")]

    def __str__(self) -> str:
        return self.key


class EntryState(models.TextChoices):
    PENDING = "pending", "Pending"
    CREATED = "created", "Created"
    UPDATED = "updated", "Updated"
    UNCHANGED = "unchanged", "Unchanged"
    REJECTED = "rejected", "Rejected"


class IngestEntry(models.Model):
    """One file an ingest job brings in, and what became of it.

    ``source`` says where the bytes are: ``{"kind": "staged", "key": …}``, ``{"kind": "url", "url":
    …}``, ``{"kind": "bucket", "source": id, "key": …, "etag": …}``, ``{"kind": "archive", "key":
    …, "member": …}``; ``expect`` optional size/sha256 the bytes must match.
    """

    job = models.ForeignKey(Job, db_index=False, on_delete=models.CASCADE, related_name="ingest_entries")
    seq = models.IntegerField()
    name = models.CharField(max_length=1024)
    source = models.JSONField()
    expect = models.JSONField(default=dict, blank=True)
    user_meta = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=16, choices=EntryState.choices, default=EntryState.PENDING)
    item = models.ForeignKey(Item, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="ingest_entry_seq_unique")]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.seq} {self.name}"
