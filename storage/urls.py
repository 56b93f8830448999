from django.urls import path

from storage import views

urlpatterns = [
    path("datasets", views.DatasetListView.as_view(), name="dataset-list"),
    path("datasets/<int:dataset_id>", views.DatasetDetailView.as_view(), name="dataset-detail"),
    path("datasets/<int:dataset_id>/items", views.ItemListView.as_view(), name="item-list"),
    path(
        "datasets/<int:dataset_id>/duplicates", views.DuplicateListView.as_view(), name="dataset-duplicates"
    ),
    path("datasets/<int:dataset_id>/uploads", views.UploadView.as_view(), name="dataset-upload"),
    path(
        "datasets/<int:dataset_id>/upload-targets",
        views.UploadTargetsView.as_view(),
        name="dataset-upload-targets",
    ),
    path(
        "datasets/<int:dataset_id>/uploads/complete",
        views.UploadsCompleteView.as_view(),
        name="dataset-uploads-complete",
    ),
    path(
        "datasets/<int:dataset_id>/imports/manifest",
        views.ManifestImportView.as_view(),
        name="dataset-manifest",
    ),
    path(
        "datasets/<int:dataset_id>/imports/archive", views.ArchiveImportView.as_view(), name="dataset-archive"
    ),
    path(
        "datasets/<int:dataset_id>/bucket-sources",
        views.BucketSourceListView.as_view(),
        name="bucket-source-list",
    ),
    path(
        "datasets/<int:dataset_id>/bucket-sources/<int:source_id>/sync",
        views.BucketSyncView.as_view(),
        name="bucket-source-sync",
    ),
    path("items/<int:item_id>", views.ItemDetailView.as_view(), name="item-detail"),
]
