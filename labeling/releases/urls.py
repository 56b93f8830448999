from django.urls import path

from labeling.releases import views

R = "releases/<int:release_id>"

urlpatterns = [
    path("projects/<int:project_id>/releases", views.ReleaseListView.as_view(), name="release-list"),
    path(R, views.ReleaseDetailView.as_view(), name="release-detail"),
    path(f"{R}/manifest", views.ManifestView.as_view(), name="release-manifest"),
    path(f"{R}/items.jsonl", views.ItemsJsonlView.as_view(), name="release-items"),
    path(f"{R}/diff", views.DiffView.as_view(), name="release-diff"),
    path(f"{R}/items/<int:item_id>/lineage", views.LineageView.as_view(), name="release-lineage"),
    path(f"{R}/exports", views.ExportListView.as_view(), name="release-export-list"),
    path(f"{R}/exports/<int:export_id>", views.ExportDetailView.as_view(), name="release-export-detail"),
]
