"""Datasets, items and ingest endpoints; signed object links of the local store."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any

import django_filters
from django.conf import settings
from django.core import signing
from django.core.files.uploadedfile import UploadedFile
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.utils.cache import get_conditional_response
from django.utils.http import http_date
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from config.api import error_body
from projects.exceptions import InvalidInput, TooLarge
from projects.idempotency import idempotency_parameter, idempotent
from projects.serializers import JobOutput
from projects.views import ListView, caller, parse
from storage import selectors, services
from storage.access import dataset_access, dataset_list_for_user
from storage.manifests import manifest_parse
from storage.models import BucketSource, Dataset, Item, Modality
from storage.objects import ObjectMissing, object_store, safe_key, signed_token_payload
from storage.serializers import (
    BucketSourceInput,
    BucketSourceOutput,
    DatasetCreateInput,
    DatasetOutput,
    DatasetUpdateInput,
    DuplicatesOutput,
    ItemOutput,
    ManifestRow,
    UploadsCompleteInput,
    UploadTargetsInput,
    UploadTargetsOutput,
)

MAX_MANIFEST_ROWS = 1_000_000


class ItemFilter(django_filters.FilterSet):
    modality = django_filters.MultipleChoiceFilter(choices=Modality.choices)
    name = django_filters.CharFilter(field_name="name", lookup_expr="startswith")
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    meta = django_filters.CharFilter(
        method="filter_meta", help_text='JSON object the metadata contains, e.g. {"width": 640}'
    )

    class Meta:
        model = Item
        fields = ["modality", "name", "created_after", "created_before", "meta"]

    def filter_meta(self, queryset: Any, name: str, value: str) -> Any:
        try:
            wanted = json.loads(value)
        except ValueError:
            raise serializers.ValidationError({"meta": "must be a JSON object"}) from None
        if not isinstance(wanted, dict):
            raise serializers.ValidationError({"meta": "must be a JSON object"})
        return queryset.filter(meta__contains=wanted)


class DatasetListView(ListView):
    queryset = Dataset.objects.none()
    output_class = DatasetOutput

    @extend_schema(responses=DatasetOutput(many=True), tags=["datasets"])
    def get(self, request: Request) -> Response:
        return self.list_response(dataset_list_for_user(user=caller(request)).prefetch_related("projects"))

    @extend_schema(request=DatasetCreateInput, responses={201: DatasetOutput}, tags=["datasets"])
    def post(self, request: Request) -> Response:
        fields = parse(DatasetCreateInput, request)
        dataset = services.dataset_create(
            actor=caller(request), organization_id=fields.pop("organization"), **fields
        )
        return Response(DatasetOutput(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailView(generics.GenericAPIView):
    @extend_schema(responses=DatasetOutput, tags=["datasets"])
    def get(self, request: Request, dataset_id: int) -> Response:
        return Response(
            DatasetOutput(dataset_access(user=caller(request), dataset_id=dataset_id).dataset).data
        )

    @extend_schema(request=DatasetUpdateInput, responses=DatasetOutput, tags=["datasets"])
    def patch(self, request: Request, dataset_id: int) -> Response:
        access = dataset_access(user=caller(request), dataset_id=dataset_id).require_manage()
        dataset = services.dataset_update(
            actor=caller(request), access=access, **parse(DatasetUpdateInput, request)
        )
        return Response(DatasetOutput(dataset).data)


class ItemListView(ListView):
    queryset = Item.objects.none()
    output_class = ItemOutput
    filterset_class = ItemFilter

    @extend_schema(responses=ItemOutput(many=True), tags=["datasets"])
    def get(self, request: Request, dataset_id: int) -> Response:
        items = selectors.item_list_for_user(user=caller(request), dataset_id=dataset_id)
        return self.list_response(items, request=request)


class ItemDetailView(generics.GenericAPIView):
    @extend_schema(responses=ItemOutput, tags=["datasets"])
    def get(self, request: Request, item_id: int) -> Response:
        item = selectors.item_get_for_user(user=caller(request), item_id=item_id)
        return Response(ItemOutput(item, context={"request": request}).data)


class DuplicateListView(generics.GenericAPIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("kind", str, enum=["exact", "near"]),
            OpenApiParameter("distance", int, description="near: largest Hamming distance (0-16), default 6"),
        ],
        responses=DuplicatesOutput,
        tags=["datasets"],
    )
    def get(self, request: Request, dataset_id: int) -> Response:
        kind = request.query_params.get("kind", "exact")
        if kind not in ("exact", "near"):
            raise InvalidInput("kind is exact or near.", field="kind")
        try:
            distance = int(request.query_params.get("distance", 6))
        except ValueError:
            raise InvalidInput("distance must be an integer.", field="distance") from None
        if not 0 <= distance <= 16:
            raise InvalidInput("distance must be from 0 to 16.", field="distance")
        groups = selectors.duplicate_groups_for_user(
            user=caller(request), dataset_id=dataset_id, kind=kind, distance=distance
        )
        return Response({"kind": kind, "groups": groups})


# --- Ingest --------------------------------------------------------------------------------------


def require_body_at_most(request: Request, limit: int) -> None:
    """Refuse an upload by its declared length before a byte of it is parsed or stored."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise InvalidInput("Invalid Content-Length.") from None
    if declared > limit:
        raise TooLarge(f"This request may carry at most {limit} bytes.", max_bytes=limit)


def _upload_path(upload: UploadedFile) -> Path:
    """Django streamed the upload to a temporary file (FILE_UPLOAD_HANDLERS): use it in place."""
    return Path(upload.temporary_file_path())  # type: ignore[attr-defined]


def _managed_upload(request: Request, dataset_id: int, field: str) -> tuple[Any, UploadedFile]:
    """Authorize an import, refuse it by size before parsing, and take its one file."""
    access = dataset_access(user=caller(request), dataset_id=dataset_id).require_manage()
    require_body_at_most(request, settings.LOUPE_UPLOAD_MAX_REQUEST_BYTES)
    upload = request.FILES.get(field)
    if upload is None:
        raise InvalidInput(f"Send the file as '{field}'.", field=field)
    return access, upload


def _job_accepted(job: Any) -> Response:
    return Response(JobOutput(job).data, status=status.HTTP_202_ACCEPTED)


class UploadView(generics.GenericAPIView):
    """Many files in one multipart request; each streamed to a temporary file, then to storage."""

    parser_classes = [MultiPartParser]

    @extend_schema(
        parameters=[idempotency_parameter()],
        request={"multipart/form-data": {"type": "object", "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "paths": {"type": "string", "description": "optional JSON list: the relative name of each file"},
            "meta": {"type": "string", "description": "optional JSON object: file name → metadata"}}}},
        responses={202: JobOutput},
        tags=["ingest"],
    )  # fmt: skip
    @idempotent
    def post(self, request: Request, dataset_id: int) -> Response:
        access = dataset_access(user=caller(request), dataset_id=dataset_id).require_manage()
        require_body_at_most(request, settings.LOUPE_UPLOAD_MAX_REQUEST_BYTES)
        uploads: list[UploadedFile] = request.FILES.getlist("files")
        names = _parse_paths_field(request.POST.get("paths"), uploads)
        meta_by_name = _parse_meta_field(request.POST.get("meta"))
        staged = [
            services.StagedFile(
                name=names[index], path=_upload_path(upload), content_type=upload.content_type or "",
                meta=meta_by_name.get(names[index], {}),
            )
            for index, upload in enumerate(uploads)
        ]  # fmt: skip
        job = services.ingest_upload(actor=caller(request), access=access, files=staged)
        return _job_accepted(job)


def _parse_paths_field(raw: Any, uploads: list[UploadedFile]) -> list[str]:
    """Item names: multipart keeps only base names, so relative paths come as a JSON list."""
    if not raw:
        return [upload.name or f"file-{index}" for index, upload in enumerate(uploads)]
    try:
        paths = json.loads(raw)
    except ValueError:
        raise InvalidInput("paths must be a JSON list of names, one per file.", field="paths") from None
    if (
        not isinstance(paths, list)
        or len(paths) != len(uploads)
        or not all(isinstance(p, str) for p in paths)
    ):
        raise InvalidInput("paths must be a JSON list of names, one per file.", field="paths")
    return paths


def _parse_meta_field(raw: Any) -> dict[str, dict[str, Any]]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidInput("meta must be a JSON object of file name → object.", field="meta") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise InvalidInput("meta must be a JSON object of file name → object.", field="meta")
    return value


class UploadTargetsView(generics.GenericAPIView):
    @extend_schema(request=UploadTargetsInput, responses={201: UploadTargetsOutput}, tags=["ingest"])
    def post(self, request: Request, dataset_id: int) -> Response:
        access = dataset_access(user=caller(request), dataset_id=dataset_id).require_manage()
        files = parse(UploadTargetsInput, request)["files"]
        targets = services.upload_targets_issue(actor=caller(request), access=access, files=files)
        for target in targets:
            target["url"] = (
                request.build_absolute_uri(target["url"]) if target["url"].startswith("/") else target["url"]
            )
        return Response({"uploads": targets}, status=status.HTTP_201_CREATED)


class UploadsCompleteView(generics.GenericAPIView):
    @extend_schema(
        parameters=[idempotency_parameter()],
        request=UploadsCompleteInput,
        responses={202: JobOutput},
        tags=["ingest"],
    )
    @idempotent
    def post(self, request: Request, dataset_id: int) -> Response:
        access = dataset_access(user=caller(request), dataset_id=dataset_id).require_manage()
        uploads = parse(UploadsCompleteInput, request)["uploads"]
        return _job_accepted(services.ingest_uploaded(actor=caller(request), access=access, uploads=uploads))


class ManifestImportView(generics.GenericAPIView):
    """A manifest as JSON lines or CSV (columns key|url, name, and meta as a JSON column)."""

    parser_classes = [MultiPartParser]

    @extend_schema(
        parameters=[idempotency_parameter()],
        request={"multipart/form-data": {"type": "object", "properties": {
            "manifest": {"type": "string", "format": "binary"},
            "bucket_source": {"type": "integer"}}}},
        responses={202: JobOutput},
        tags=["ingest"],
    )  # fmt: skip
    @idempotent
    def post(self, request: Request, dataset_id: int) -> Response:
        access, manifest = _managed_upload(request, dataset_id, "manifest")
        records = manifest_parse(manifest, name=manifest.name or "", max_rows=MAX_MANIFEST_ROWS)
        rows = []
        errors: dict[str, Any] = {}
        for number, record in enumerate(records, start=1):
            row = ManifestRow(data=record)
            if row.is_valid():
                rows.append(dict(row.validated_data))
            elif len(errors) < 100:
                errors[f"line {number}"] = row.errors
        if errors:
            raise InvalidInput("The manifest has invalid rows; nothing was imported.", rows=errors)
        if not rows:
            raise InvalidInput("The manifest is empty.", field="manifest")
        bucket_source = request.POST.get("bucket_source")
        try:
            source_id = int(bucket_source) if bucket_source else None
        except ValueError:
            raise InvalidInput("bucket_source must be an id.", field="bucket_source") from None
        job = services.ingest_manifest(
            actor=caller(request), access=access, records=rows, bucket_source_id=source_id
        )
        return _job_accepted(job)


class ArchiveImportView(generics.GenericAPIView):
    """A zip or tar archive (.tar.gz, .tar.bz2, .tar.xz too), checked before anything is written."""

    parser_classes = [MultiPartParser]

    @extend_schema(
        parameters=[idempotency_parameter()],
        request={"multipart/form-data": {"type": "object", "properties": {
            "archive": {"type": "string", "format": "binary"}}}},
        responses={202: JobOutput},
        tags=["ingest"],
    )  # fmt: skip
    @idempotent
    def post(self, request: Request, dataset_id: int) -> Response:
        access, archive = _managed_upload(request, dataset_id, "archive")
        job = services.ingest_archive(
            actor=caller(request), access=access, path=_upload_path(archive), filename=archive.name or ""
        )
        return _job_accepted(job)


class BucketSourceListView(ListView):
    queryset = BucketSource.objects.none()
    output_class = BucketSourceOutput

    @extend_schema(responses=BucketSourceOutput(many=True), tags=["ingest"])
    def get(self, request: Request, dataset_id: int) -> Response:
        dataset = dataset_access(user=caller(request), dataset_id=dataset_id).dataset
        return self.list_response(BucketSource.objects.filter(dataset=dataset))

    @extend_schema(request=BucketSourceInput, responses={201: BucketSourceOutput}, tags=["ingest"])
    def post(self, request: Request, dataset_id: int) -> Response:
        access = dataset_access(user=caller(request), dataset_id=dataset_id).require_manage()
        source = services.bucket_source_create(
            actor=caller(request), access=access, **parse(BucketSourceInput, request)
        )
        return Response(BucketSourceOutput(source).data, status=status.HTTP_201_CREATED)


class BucketSyncView(generics.GenericAPIView):
    @extend_schema(
        parameters=[idempotency_parameter()], request=None, responses={202: JobOutput}, tags=["ingest"]
    )
    @idempotent
    def post(self, request: Request, dataset_id: int, source_id: int) -> Response:
        access = dataset_access(user=caller(request), dataset_id=dataset_id).require_manage()
        return _job_accepted(
            services.bucket_sync_start(actor=caller(request), access=access, source_id=source_id)
        )


# --- Signed links of the local object store (S3 serves its own presigned URLs) ----------------


def _link_error(code: str, message: str, status_code: int) -> JsonResponse:
    return JsonResponse(error_body(code, message), status=status_code)


# One range, as resuming downloaders send it. Longer numbers than this are no real file's offsets.
_BYTE_RANGE = re.compile(r"bytes=(\d{0,20})-(\d{0,20})", re.ASCII | re.IGNORECASE)
DOWNLOAD_BLOCK_BYTES = 256 * 1024


class RangeNotSatisfiable(Exception):
    """The Range header is valid but selects no byte of the object."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte a ``Range`` header selects in an object of ``size`` bytes.

    None means "send the whole object": no header, a header that is not one valid byte range
    (RFC 9110 says to ignore those), or several ranges, which this server answers whole rather
    than as multipart/byteranges. Raises RangeNotSatisfiable when the range starts past the end.
    """
    match = _BYTE_RANGE.fullmatch((header or "").strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # bytes=-n: the last n bytes
        if int(last) == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - int(last)), size - 1
    if last != "" and int(last) < int(first):
        return None
    if int(first) >= size:
        raise RangeNotSatisfiable
    return int(first), size - 1 if last == "" else min(int(last), size - 1)


class _ByteSlice:
    """Reads ``length`` bytes of an open file from its current position, then reports the end.

    It has no ``fileno``: a WSGI server's sendfile path would send to the end of the file."""

    def __init__(self, handle: IO[bytes], length: int) -> None:
        self.name = getattr(handle, "name", "")  # FileResponse guesses Content-Type from it
        self._handle = handle
        self._left = length

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._handle.read(size) if size else b""
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._handle.close()


@require_http_methods(["GET", "HEAD"])
def object_download(request: HttpRequest, token: str) -> HttpResponseBase:
    """A signed link of the local store: the object, or one byte range of it (206) to resume.

    ``Accept-Ranges: bytes``; a single range ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n``; a range
    past the end is 416 with ``Content-Range: bytes */size``. Several ranges, or a Range with an
    ``If-Range`` other than the current ETag, get the whole object (200). HEAD gets the headers of
    the whole object (range handling is defined for GET only). The body streams from the file.
    """
    try:
        payload = signed_token_payload(token)
    except signing.SignatureExpired:
        return _link_error("link_expired", "This link has expired.", 403)
    except signing.BadSignature:
        return _link_error("bad_signature", "This link is not valid.", 403)
    try:
        handle = object_store().open(payload["k"])
    except ObjectMissing:
        return _link_error("not_found", "Not found.", 404)
    filename = payload.get("f") or ""
    try:
        stat = os.fstat(handle.fileno())
    except (AttributeError, OSError, ValueError):  # not a local file: no validators, no ranges
        return FileResponse(handle, as_attachment=False, filename=filename)
    size = stat.st_size
    # Objects are replaced by rename, never rewritten in place: inode, mtime and size identify
    # one version of the bytes, which is what a resumed download must still be reading.
    etag = f'"{stat.st_ino:x}-{stat.st_mtime_ns:x}-{size:x}"'
    last_modified = http_date(stat.st_mtime)
    unchanged = get_conditional_response(request, etag=etag, last_modified=int(stat.st_mtime))
    if unchanged is not None:  # 304 Not Modified or 412 Precondition Failed
        handle.close()
        return unchanged
    selected: tuple[int, int] | None = None
    # A resumed download names the version it holds part of; if that is gone, it gets all of the
    # new one. Only the ETag counts: a date cannot tell two versions written in one second apart.
    if request.method == "GET" and request.headers.get("If-Range", etag) == etag:
        try:
            selected = byte_range(request.headers.get("Range"), size)
        except RangeNotSatisfiable:
            handle.close()
            refused = _link_error("range_not_satisfiable", f"The object has {size} bytes.", 416)
            refused["Content-Range"] = f"bytes */{size}"
            return refused
    if selected is None:
        response = FileResponse(handle, as_attachment=False, filename=filename)
    else:
        first, last = selected
        handle.seek(first)
        response = FileResponse(
            _ByteSlice(handle, last - first + 1), as_attachment=False, filename=filename, status=206
        )
        response["Content-Range"] = f"bytes {first}-{last}/{size}"
        response["Content-Length"] = str(last - first + 1)
    response.block_size = DOWNLOAD_BLOCK_BYTES
    response["Accept-Ranges"] = "bytes"
    response["ETag"] = etag
    response["Last-Modified"] = last_modified
    if request.method == "HEAD":  # the same headers, no body, and the file closed now
        headers_only = HttpResponse(status=response.status_code)
        for header, value in response.items():
            headers_only[header] = value
        response.close()
        return headers_only
    return response


@csrf_exempt  # authenticated by the signed, expiring token in the URL, not by a session
@require_http_methods(["PUT"])
def object_upload(request: HttpRequest, token: str) -> HttpResponse:
    """The local store's equivalent of an S3 presigned POST: size- and type-limited, expiring."""
    try:
        payload = signed_token_payload(token, upload=True)
    except signing.SignatureExpired:
        return _link_error("link_expired", "This upload link has expired.", 403)
    except signing.BadSignature:
        return _link_error("bad_signature", "This upload link is not valid.", 403)
    if request.content_type != payload["t"]:
        return _link_error("content_type_mismatch", f"Content-Type must be {payload['t']}.", 403)
    declared = int(request.META.get("CONTENT_LENGTH") or 0)
    if declared > payload["m"]:
        return _link_error("too_large", f"At most {payload['m']} bytes.", 413)
    with tempfile.NamedTemporaryFile(prefix="loupe-put-") as spool:
        # Read the raw stream: the signed link, not DATA_UPLOAD_MAX_MEMORY_SIZE, bounds the size.
        received = 0
        while chunk := request.read(1024 * 1024):  # type: ignore[attr-defined]
            received += len(chunk)
            if received > payload["m"]:
                return _link_error("too_large", f"At most {payload['m']} bytes.", 413)
            spool.write(chunk)
        if received == 0:
            return _link_error("empty", "The body is empty.", 400)
        spool.flush()
        object_store().put_file(safe_key(payload["k"]), Path(spool.name), content_type=payload["t"])
    return HttpResponse(status=204)
