from django.urls import path

from quality import views

P = "projects/<int:project_id>/quality"

urlpatterns = [
    path(f"{P}/settings", views.QualitySettingsView.as_view(), name="quality-settings"),
    path(f"{P}/jobs", views.QualityJobView.as_view(), name="quality-jobs"),
    path(f"{P}/findings", views.FindingListView.as_view(), name="finding-list"),
    path(f"{P}/findings/<int:finding_id>", views.FindingDetailView.as_view(), name="finding-detail"),
    path(f"{P}/findings/<int:finding_id>/status", views.FindingStatusView.as_view(), name="finding-status"),
    path(f"{P}/report", views.QualityReportView.as_view(), name="quality-report"),
    path(f"{P}/report.png", views.QualityReportChartView.as_view(), name="quality-report-chart"),
    path(f"{P}/tasks/<int:task_id>", views.TaskQualityView.as_view(), name="task-quality"),
    path(f"{P}/gold", views.GoldView.as_view(), name="quality-gold"),
    path(f"{P}/annotators/<int:user_id>/pause", views.AnnotatorPauseView.as_view(), name="annotator-pause"),
    path(
        "releases/<int:release_id>/evaluations",
        views.ReleaseEvaluationListView.as_view(),
        name="release-evaluation-list",
    ),
    path("evaluations/<int:evaluation_id>", views.EvaluationDetailView.as_view(), name="evaluation-detail"),
    path(
        "evaluations/<int:evaluation_id>/plots/<str:name>.png",
        views.EvaluationPlotView.as_view(),
        name="evaluation-plot",
    ),
]
