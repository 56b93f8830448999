from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config import health
from config.api import error_body
from storage import views as storage_views

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # Labeling first: the annotation queue's routes are the most requested, and Django tries
    # the includes in order (their routes are disjoint, so the order changes nothing else).
    path("api/v1/", include("labeling.urls")),
    path("api/v1/", include("projects.urls")),
    path("api/v1/", include("storage.urls")),
    path("api/v1/", include("labeling.releases.urls")),
    path("api/v1/", include("labeling.training.urls")),
    path("api/v1/", include("quality.urls")),
    path("objects/<str:token>", storage_views.object_download, name="object-download"),
    path("objects/upload/<str:token>", storage_views.object_upload, name="object-upload"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("admin/", admin.site.urls),
]


def _json_error(code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse(error_body(code, message), status=status)


# Outside DRF views (unknown URLs, crashes) errors keep the same shape.
def handler404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _json_error("not_found", "Not found.", 404)


def handler500(request: HttpRequest) -> JsonResponse:
    return _json_error("server_error", "Internal error; it has been logged.", 500)


def handler400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _json_error("bad_request", "Bad request.", 400)


def handler403(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _json_error("permission_denied", "Forbidden.", 403)
