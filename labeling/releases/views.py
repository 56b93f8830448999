"""Releases' API: cut and list releases; read one, its manifest, items, diff and lineage; exports."""

from __future__ import annotations

from collections.abc import Iterator

from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response

from labeling.models import Release, ReleaseExport
from labeling.releases import services
from labeling.releases.diff import diff_json
from labeling.releases.lineage import item_lineage
from labeling.releases.serializers import ReleaseExportInput, ReleaseExportOutput, ReleaseInput, ReleaseOutput
from projects.access import ProjectAction, project_access
from projects.exceptions import InvalidInput, NotFound
from projects.idempotency import idempotency_parameter, idempotent
from projects.views import ListView, caller, parse

_TAGS = ["releases"]


class ReleaseListView(ListView):
    queryset = Release.objects.none()
    output_class = ReleaseOutput

    @extend_schema(responses=ReleaseOutput(many=True), tags=_TAGS)
    def get(self, request: Request, project_id: int) -> Response:
        access = project_access(user=caller(request), project_id=project_id)
        return self.list_response(services.releases_of(access))

    @extend_schema(
        request=ReleaseInput, responses={202: ReleaseOutput}, tags=_TAGS, parameters=[idempotency_parameter()]
    )
    @idempotent
    def post(self, request: Request, project_id: int) -> Response:
        access = project_access(user=caller(request), project_id=project_id)
        fields = parse(ReleaseInput, request)
        if "parent" not in request.data:
            fields["parent"] = "latest"
        release = services.release_create(actor=caller(request), access=access, **fields)
        return Response(ReleaseOutput(release).data, status=status.HTTP_202_ACCEPTED)


class ReleaseDetailView(generics.GenericAPIView):
    @extend_schema(responses=ReleaseOutput, tags=_TAGS)
    def get(self, request: Request, release_id: int) -> Response:
        release, _ = services.release_get(user=caller(request), release_id=release_id)
        return Response(ReleaseOutput(release).data)


class ManifestView(generics.GenericAPIView):
    @extend_schema(responses={200: dict}, tags=_TAGS)
    def get(self, request: Request, release_id: int) -> Response:
        release, _ = services.release_get(user=caller(request), release_id=release_id)
        return Response(services.manifest_download(release))


_SPLIT = OpenApiParameter("split", str, description="Only the items of this split.")


def _split(request: Request) -> str | None:
    split = request.query_params.get("split") or None
    if split is not None and len(split) > 16:
        raise InvalidInput("No such split.", field="split")
    return split


class ItemsJsonlView(generics.GenericAPIView):
    @extend_schema(
        parameters=[_SPLIT],
        responses={(200, "application/x-ndjson"): OpenApiResponse(description="One item per line.")},
        tags=_TAGS,
    )
    def get(self, request: Request, release_id: int) -> StreamingHttpResponse:
        release, _ = services.release_get(user=caller(request), release_id=release_id)
        lines = services.items_lines(release, split=_split(request))
        first = next(lines, b"")  # errors (a release not ready) surface before the 200 is sent
        response = StreamingHttpResponse(_chain(first, lines), content_type="application/x-ndjson")
        response["Content-Disposition"] = f'inline; filename="release-{release.version}-items.jsonl"'
        return response


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


class DiffView(generics.GenericAPIView):
    @extend_schema(
        parameters=[OpenApiParameter("against", int, description="A release id (default: the parent).")],
        responses={200: dict},
        tags=_TAGS,
    )
    def get(self, request: Request, release_id: int) -> StreamingHttpResponse:
        head, access = services.release_get(user=caller(request), release_id=release_id)
        raw = request.query_params.get("against") or ""
        if raw and not raw.isdigit():
            raise InvalidInput("against is a release id.", field="against")
        if raw:
            base = Release.objects.filter(id=int(raw), project_id=access.project.pk).first()
            if base is None:
                raise NotFound("Release not found.", release_id=int(raw))
        elif head.parent is not None:
            base = head.parent
        else:
            raise InvalidInput(
                "This release has no parent: name the release to compare with.", field="against"
            )
        services.release_ready(head)
        services.release_ready(base)
        return StreamingHttpResponse(
            (piece.encode() for piece in diff_json(base, head)), content_type="application/json"
        )


class LineageView(generics.GenericAPIView):
    @extend_schema(responses={200: dict}, tags=_TAGS)
    def get(self, request: Request, release_id: int, item_id: int) -> Response:
        release, _ = services.release_get(user=caller(request), release_id=release_id)
        services.release_ready(release)
        return Response(item_lineage(release, item_id))


class ExportListView(ListView):
    queryset = ReleaseExport.objects.none()
    output_class = ReleaseExportOutput

    @extend_schema(responses=ReleaseExportOutput(many=True), tags=_TAGS)
    def get(self, request: Request, release_id: int) -> Response:
        release, _ = services.release_get(user=caller(request), release_id=release_id)
        return self.list_response(ReleaseExport.objects.filter(release=release).select_related("job"))

    @extend_schema(
        request=ReleaseExportInput, responses={200: ReleaseExportOutput, 202: ReleaseExportOutput}, tags=_TAGS
    )
    def post(self, request: Request, release_id: int) -> Response:
        user = caller(request)
        release, access = services.release_get(
            user=user, release_id=release_id, action=ProjectAction.RELEASES_EXPORT
        )
        fields = parse(ReleaseExportInput, request)
        export, created = services.export_request(actor=user, access=access, release=release, **fields)
        return Response(
            ReleaseExportOutput(export).data,
            status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
        )


class ExportDetailView(generics.GenericAPIView):
    @extend_schema(responses=ReleaseExportOutput, tags=_TAGS)
    def get(self, request: Request, release_id: int, export_id: int) -> Response:
        release, _ = services.release_get(user=caller(request), release_id=release_id)
        return Response(ReleaseExportOutput(services.export_get(release=release, export_id=export_id)).data)
