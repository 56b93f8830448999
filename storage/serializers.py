from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import URLValidator
from rest_framework import serializers

from storage.models import BucketSource, Dataset, Item, Modality
from storage.objects import object_store


class DatasetCreateInput(serializers.Serializer):
    organization = serializers.IntegerField(min_value=1)
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(max_length=10_000, required=False, allow_blank=True, default="")
    projects = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, default=list, max_length=1000
    )


class DatasetUpdateInput(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    description = serializers.CharField(max_length=10_000, required=False, allow_blank=True)
    projects = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, max_length=1000
    )


class DatasetOutput(serializers.ModelSerializer):
    projects = serializers.ManyRelatedField(
        child_relation=serializers.PrimaryKeyRelatedField(read_only=True), read_only=True
    )

    class Meta:
        model = Dataset
        fields = ["id", "organization", "name", "description", "projects", "created_at"]


class ItemPartOutput(serializers.Serializer):
    role = serializers.CharField()
    name = serializers.CharField()
    sha256 = serializers.CharField(source="blob.sha256")
    size = serializers.IntegerField(source="blob.size")
    meta = serializers.DictField()
    content_url = serializers.SerializerMethodField()

    def get_content_url(self, part: Any) -> str:
        url = object_store().url(part.blob.key, expires_s=settings.LOUPE_URL_EXPIRES_S, filename=part.role)
        return _absolute(self, url)


class ItemOutput(serializers.ModelSerializer):
    sha256 = serializers.CharField(source="primary.sha256")
    parts = ItemPartOutput(many=True, read_only=True, help_text="Multi-sensor frames: every part by role.")
    content_url = serializers.SerializerMethodField(help_text="Short-lived URL of the item's bytes.")
    thumbnail_url = serializers.SerializerMethodField(
        help_text="Short-lived URL of a WebP thumbnail, if any."
    )

    class Meta:
        model = Item
        fields = [
            "id", "dataset", "name", "modality", "media_type", "size", "sha256", "meta",
            "content_url", "thumbnail_url", "parts", "created_at", "updated_at",
        ]  # fmt: skip

    def get_content_url(self, item: Item) -> str:
        return item_content_url(self.context.get("request"), item)

    def get_thumbnail_url(self, item: Item) -> str | None:
        if item.thumbnail is None:
            return None
        return _absolute(self, object_store().url(item.thumbnail.key, expires_s=settings.LOUPE_URL_EXPIRES_S))


def _absolute(serializer: serializers.Serializer, url: str) -> str:
    return _absolute_url(serializer.context.get("request"), url)


def _absolute_url(request: Any, url: str) -> str:
    return request.build_absolute_uri(url) if request is not None and url.startswith("/") else url


def item_content_url(request: Any, item: Item) -> str:
    """A short-lived URL of the item's bytes: presigned (S3) or a signed link served by Loupe."""
    url = object_store().url(
        item.primary.key, expires_s=settings.LOUPE_URL_EXPIRES_S, filename=item.name.rsplit("/", 1)[-1]
    )
    return _absolute_url(request, url)


class UploadMetaInput(serializers.Serializer):
    meta = serializers.JSONField(required=False, default=dict)


class UploadTargetRequest(serializers.Serializer):
    name = serializers.CharField(max_length=1024)
    size = serializers.IntegerField(min_value=1)
    content_type = serializers.CharField(max_length=255, default="application/octet-stream")


class UploadTargetsInput(serializers.Serializer):
    files = serializers.ListField(child=UploadTargetRequest(), min_length=1, max_length=1000)


class UploadedPartInput(serializers.Serializer):
    number = serializers.IntegerField(min_value=1, max_value=10_000)
    etag = serializers.CharField(max_length=200)


class UploadedInput(serializers.Serializer):
    upload_id = serializers.CharField(max_length=2000)
    parts = serializers.ListField(child=UploadedPartInput(), required=False, max_length=10_000)
    sha256 = serializers.RegexField(r"^[0-9a-fA-F]{64}$")
    meta = serializers.DictField(required=False, default=dict)


class UploadsCompleteInput(serializers.Serializer):
    uploads = serializers.ListField(child=UploadedInput(), min_length=1, max_length=10_000)


class PartRef(serializers.Serializer):
    key = serializers.CharField(max_length=1024, required=False)
    url = serializers.URLField(
        max_length=4096, required=False, validators=[URLValidator(schemes=["http", "https"])]
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("key" in attrs) == ("url" in attrs):
            raise serializers.ValidationError("Each part names exactly one of key or url.")
        return attrs


class ManifestRow(serializers.Serializer):
    """One item: a key or a URL, or a multi-sensor frame's ``parts`` (role → key or URL)."""

    key = serializers.CharField(max_length=1024, required=False)
    url = serializers.URLField(
        max_length=4096, required=False, validators=[URLValidator(schemes=["http", "https"])]
    )
    parts = serializers.DictField(child=PartRef(), required=False, allow_empty=False)
    primary = serializers.RegexField(r"^[A-Za-z0-9_.-]{1,64}$", required=False)
    name = serializers.CharField(max_length=1024, required=False)
    meta = serializers.DictField(required=False, default=dict)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        given = [field for field in ("key", "url", "parts") if field in attrs]
        if len(given) != 1:
            raise serializers.ValidationError("Each row names exactly one of key, url or parts.")
        if "parts" in attrs:
            if "name" not in attrs:
                raise serializers.ValidationError({"name": "A multi-sensor frame needs a name."})
            roles = list(attrs["parts"])
            if len(roles) > 64:
                raise serializers.ValidationError({"parts": "At most 64 parts."})
            if any(not role or "/" in role or len(role) > 64 for role in roles):
                raise serializers.ValidationError({"parts": "Roles are short names without '/'."})
            attrs.setdefault("primary", roles[0])
            if attrs["primary"] not in attrs["parts"]:
                raise serializers.ValidationError({"primary": "Must be one of the parts' roles."})
        elif "primary" in attrs:
            raise serializers.ValidationError({"primary": "Only a row with parts has a primary part."})
        return attrs


class BucketSourceInput(serializers.ModelSerializer):
    access_key_id = serializers.CharField(max_length=256, required=False, allow_blank=True, write_only=True)
    secret_access_key = serializers.CharField(
        max_length=512, required=False, allow_blank=True, write_only=True
    )
    addressing = serializers.ChoiceField(choices=["auto", "path", "virtual"], default="auto")

    class Meta:
        model = BucketSource
        fields = [
            "bucket",
            "prefix",
            "endpoint_url",
            "region",
            "addressing",
            "access_key_id",
            "secret_access_key",
        ]


class BucketSourceOutput(serializers.ModelSerializer):
    has_credentials = serializers.SerializerMethodField()

    class Meta:
        model = BucketSource
        fields = ["id", "dataset", "bucket", "prefix", "endpoint_url", "region", "addressing",
                  "has_credentials", "last_synced_at", "created_at"]  # fmt: skip

    def get_has_credentials(self, source: BucketSource) -> bool:
        return bool(source.access_key_id)


class DuplicateItemOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class DuplicateGroupOutput(serializers.Serializer):
    sha256 = serializers.CharField(required=False, help_text="exact: the shared content hash")
    distance = serializers.IntegerField(required=False, help_text="near: Hamming distance of the pair")
    items = DuplicateItemOutput(many=True)


class DuplicatesOutput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["exact", "near"])
    groups = DuplicateGroupOutput(many=True)


class UploadTargetOutput(serializers.Serializer):
    name = serializers.CharField()
    upload_id = serializers.CharField(help_text="Send back to uploads/complete with the file's sha256.")
    method = serializers.ChoiceField(
        choices=["POST", "PUT", "MULTIPART"],
        help_text="POST: a form with form_fields; PUT: the raw body; MULTIPART: PUT each part to part_urls",
    )
    part_size = serializers.IntegerField(
        required=False, help_text="MULTIPART: bytes per part (the last is smaller)"
    )
    part_urls = serializers.ListField(child=serializers.CharField(), required=False)
    url = serializers.CharField()
    form_fields = serializers.DictField(
        child=serializers.CharField(),
        source="fields",
        help_text="POST: the form fields to send with the file",
    )
    expires_at = serializers.FloatField()


class UploadTargetsOutput(serializers.Serializer):
    uploads = UploadTargetOutput(many=True)


MODALITY_CHOICES = Modality.choices
