from django.urls import path

from projects import views

urlpatterns = [
    path("me", views.MeView.as_view(), name="me"),
    path("me/tokens", views.ApiTokenListView.as_view(), name="token-list"),
    path("me/tokens/<int:token_id>", views.ApiTokenDetailView.as_view(), name="token-detail"),
    path("users", views.UserCreateView.as_view(), name="user-create"),
    path("organizations", views.OrganizationListView.as_view(), name="organization-list"),
    path(
        "organizations/<int:organization_id>",
        views.OrganizationDetailView.as_view(),
        name="organization-detail",
    ),
    path(
        "organizations/<int:organization_id>/members",
        views.MembershipListView.as_view(),
        name="organization-member-list",
    ),
    path(
        "organizations/<int:organization_id>/members/<int:user_id>",
        views.MembershipDetailView.as_view(),
        name="organization-member-detail",
    ),
    path(
        "organizations/<int:organization_id>/audit-events",
        views.OrganizationAuditEventListView.as_view(),
        name="organization-audit-list",
    ),
    path("projects", views.ProjectListView.as_view(), name="project-list"),
    path("projects/<int:project_id>", views.ProjectDetailView.as_view(), name="project-detail"),
    path(
        "projects/<int:project_id>/members", views.ProjectMemberListView.as_view(), name="project-member-list"
    ),
    path(
        "projects/<int:project_id>/members/<int:user_id>",
        views.ProjectMemberDetailView.as_view(),
        name="project-member-detail",
    ),
    path("projects/<int:project_id>/jobs", views.ProjectJobListView.as_view(), name="project-job-list"),
    path(
        "projects/<int:project_id>/audit-events",
        views.ProjectAuditEventListView.as_view(),
        name="project-audit-list",
    ),
    path("projects/<int:project_id>/stats", views.ProjectStatsView.as_view(), name="project-stats"),
    path(
        "projects/<int:project_id>/stats/recount",
        views.ProjectStatsRecountView.as_view(),
        name="project-stats-recount",
    ),
    path("jobs/<int:job_id>", views.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<int:job_id>/cancel", views.JobCancelView.as_view(), name="job-cancel"),
    path("jobs/<int:job_id>/errors", views.JobErrorListView.as_view(), name="job-error-list"),
]
