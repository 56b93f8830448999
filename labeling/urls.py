from django.urls import path

from labeling import views

P = "projects/<int:project_id>"
A = f"{P}/assignments/<int:assignment_id>"

# An annotator's day is next → draft… → submit: those routes first (Django tries them in order).
urlpatterns = [
    path(f"{P}/next", views.NextView.as_view(), name="task-next"),
    path(f"{A}/draft", views.AssignmentDraftView.as_view(), name="assignment-draft"),
    path(f"{A}/submit", views.AssignmentSubmitView.as_view(), name="assignment-submit"),
    path(f"{P}/schemas", views.SchemaListView.as_view(), name="schema-list"),
    path(f"{P}/schemas/<int:version>", views.SchemaDetailView.as_view(), name="schema-detail"),
    path(f"{P}/tasks", views.TaskListView.as_view(), name="task-list"),
    path(f"{P}/tasks/<int:task_id>", views.TaskDetailView.as_view(), name="task-detail"),
    path(
        f"{P}/tasks/<int:task_id>/annotations",
        views.TaskAnnotationListView.as_view(),
        name="task-annotations",
    ),
    path(f"{P}/annotations", views.AnnotationListView.as_view(), name="annotation-list"),
    path(
        f"{P}/annotations/<int:annotation_id>", views.AnnotationDetailView.as_view(), name="annotation-detail"
    ),
    path(
        f"{P}/annotations/<int:annotation_id>/revisions",
        views.RevisionListView.as_view(),
        name="annotation-revisions",
    ),
    path(f"{P}/predictions", views.PredictionListView.as_view(), name="prediction-list"),
    path(f"{P}/imports", views.ImportView.as_view(), name="annotation-import"),
    path(f"{P}/exports", views.ExportView.as_view(), name="annotation-export"),
    path(
        f"{P}/exports/<int:job_id>/download",
        views.ExportDownloadView.as_view(),
        name="annotation-export-download",
    ),
]

urlpatterns += [
    path(f"{P}/workflow", views.WorkflowView.as_view(), name="workflow"),
    path(f"{P}/assignments", views.AssignmentListView.as_view(), name="assignment-list"),
    path(f"{P}/assignments/bulk", views.AssignmentBulkView.as_view(), name="assignment-bulk"),
    path(A, views.AssignmentDetailView.as_view(), name="assignment-detail"),
    path(f"{A}/skip", views.AssignmentSkipView.as_view(), name="assignment-skip"),
    path(f"{A}/release", views.AssignmentReleaseView.as_view(), name="assignment-release"),
    path(f"{A}/reassign", views.AssignmentReassignView.as_view(), name="assignment-reassign"),
    path(f"{P}/next-review", views.NextReviewView.as_view(), name="review-next"),
    path(f"{P}/annotations/<int:annotation_id>/review", views.ReviewView.as_view(), name="annotation-review"),
    path(f"{P}/tasks/<int:task_id>/comments", views.CommentListView.as_view(), name="comment-list"),
    path(
        f"{P}/comments/<int:comment_id>/resolve", views.CommentResolveView.as_view(), name="comment-resolve"
    ),
    path(f"{P}/progress", views.ProgressView.as_view(), name="progress"),
    path(f"{P}/annotators", views.AnnotatorStatsView.as_view(), name="annotator-stats"),
]

urlpatterns += [
    path("models/builtin", views.BuiltinModelListView.as_view(), name="model-builtin-list"),
    path(f"{P}/models", views.ModelVersionListView.as_view(), name="model-version-list"),
    path(f"{P}/prelabel", views.PrelabelView.as_view(), name="prelabel"),
    path(f"{P}/tasks/<int:task_id>/predict", views.TaskPredictView.as_view(), name="task-predict"),
]
urlpatterns += [path(f"{P}/prelabel/report", views.PrelabelReportView.as_view(), name="prelabel-report")]

from labeling.webhooks.urls import urlpatterns as webhook_urlpatterns  # noqa: E402

urlpatterns += webhook_urlpatterns
