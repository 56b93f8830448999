"""Thin API views: parse, authorize through selectors/access, call one service, serialize."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer

from projects import jobs, selectors, services
from projects.access import OrgAction, ProjectAction, org_access, project_access, project_role
from projects.exceptions import PermissionDenied
from projects.filters import AuditEventFilter, JobFilter, ProjectFilter
from projects.idempotency import idempotency_parameter, idempotent
from projects.models import (
    ApiToken,
    AuditEvent,
    Job,
    JobError,
    Membership,
    Organization,
    Project,
    ProjectMember,
)
from projects.serializers import (
    ApiTokenCreatedOutput,
    ApiTokenCreateInput,
    ApiTokenOutput,
    AuditEventOutput,
    JobErrorOutput,
    JobOutput,
    MembershipInput,
    MembershipOutput,
    MeOutput,
    OrganizationInput,
    OrganizationOutput,
    OrganizationUpdateInput,
    OrgRoleInput,
    ProjectCreateInput,
    ProjectDetailOutput,
    ProjectMemberInput,
    ProjectMemberOutput,
    ProjectOutput,
    ProjectRoleInput,
    ProjectStatsOutput,
    ProjectUpdateInput,
    StatsRecountInput,
    UserBriefOutput,
    UserCreateInput,
)

NO_CONTENT = OpenApiResponse(description="Done; no body.")


def caller(request: Request) -> User:
    """The authenticated user (every view here requires authentication)."""
    assert isinstance(request.user, User)
    return request.user


def parse(serializer_class: type[Serializer], request: Request, *, partial: bool = False) -> dict[str, Any]:
    payload = serializer_class(data=request.data, partial=partial)
    payload.is_valid(raise_exception=True)
    return dict(payload.validated_data)


class ListView(generics.GenericAPIView):
    """A paginated, filterable list whose queryset comes from a selector scoped to the caller."""

    output_class: type[Serializer]

    def list_response(self, queryset: QuerySet[Any], **context: Any) -> Response:
        page = self.paginate_queryset(self.filter_queryset(queryset))
        return self.get_paginated_response(self.output_class(page, many=True, context=context).data)


# --- Accounts ----------------------------------------------------------------------------------


class MeView(generics.GenericAPIView):
    @extend_schema(responses=MeOutput, tags=["accounts"])
    def get(self, request: Request) -> Response:
        return Response(MeOutput(caller(request)).data)


class ApiTokenListView(ListView):
    queryset = ApiToken.objects.none()  # for schema generation; requests use selectors
    output_class = ApiTokenOutput

    @extend_schema(responses=ApiTokenOutput(many=True), tags=["accounts"])
    def get(self, request: Request) -> Response:
        return self.list_response(selectors.api_token_list_for_user(user=caller(request)))

    @extend_schema(request=ApiTokenCreateInput, responses={201: ApiTokenCreatedOutput}, tags=["accounts"])
    def post(self, request: Request) -> Response:
        token, clear = services.api_token_create(user=caller(request), **parse(ApiTokenCreateInput, request))
        body = ApiTokenCreatedOutput(token, context={"clear_token": clear}).data
        return Response(body, status=status.HTTP_201_CREATED)


class ApiTokenDetailView(generics.GenericAPIView):
    @extend_schema(responses={204: NO_CONTENT}, tags=["accounts"])
    def delete(self, request: Request, token_id: int) -> Response:
        services.api_token_revoke(user=caller(request), token_id=token_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class IsInstanceAdmin(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        if request.user and request.user.is_authenticated and not request.user.is_superuser:
            raise PermissionDenied("Only instance administrators create user accounts.")
        return bool(request.user and request.user.is_authenticated)


class UserCreateView(generics.GenericAPIView):
    permission_classes = [IsInstanceAdmin]

    @extend_schema(request=UserCreateInput, responses={201: UserBriefOutput}, tags=["accounts"])
    def post(self, request: Request) -> Response:
        user = services.user_create(actor=caller(request), **parse(UserCreateInput, request))
        return Response(UserBriefOutput(user).data, status=status.HTTP_201_CREATED)


# --- Organizations -----------------------------------------------------------------------------


class OrganizationListView(ListView):
    queryset = Organization.objects.none()  # for schema generation; requests use selectors
    output_class = OrganizationOutput

    @extend_schema(responses=OrganizationOutput(many=True), tags=["organizations"])
    def get(self, request: Request) -> Response:
        return self.list_response(selectors.organization_list_for_user(user=caller(request)))

    @extend_schema(request=OrganizationInput, responses={201: OrganizationOutput}, tags=["organizations"])
    def post(self, request: Request) -> Response:
        organization = services.organization_create(
            actor=caller(request), **parse(OrganizationInput, request)
        )
        return Response(OrganizationOutput(organization).data, status=status.HTTP_201_CREATED)


class OrganizationDetailView(generics.GenericAPIView):
    @extend_schema(responses=OrganizationOutput, tags=["organizations"])
    def get(self, request: Request, organization_id: int) -> Response:
        access = org_access(user=caller(request), organization_id=organization_id)
        return Response(OrganizationOutput(access.organization).data)

    @extend_schema(request=OrganizationUpdateInput, responses=OrganizationOutput, tags=["organizations"])
    def patch(self, request: Request, organization_id: int) -> Response:
        access = org_access(user=caller(request), organization_id=organization_id).require(OrgAction.UPDATE)
        fields = parse(OrganizationUpdateInput, request, partial=True)
        organization = services.organization_update(actor=caller(request), access=access, **fields)
        return Response(OrganizationOutput(organization).data)

    @extend_schema(responses={204: NO_CONTENT}, tags=["organizations"])
    def delete(self, request: Request, organization_id: int) -> Response:
        access = org_access(user=caller(request), organization_id=organization_id)
        services.organization_delete(actor=caller(request), access=access)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MembershipListView(ListView):
    queryset = Membership.objects.none()  # for schema generation; requests use selectors
    output_class = MembershipOutput

    @extend_schema(responses=MembershipOutput(many=True), tags=["organizations"])
    def get(self, request: Request, organization_id: int) -> Response:
        members = selectors.membership_list_for_user(user=caller(request), organization_id=organization_id)
        return self.list_response(members)

    @extend_schema(request=MembershipInput, responses={201: MembershipOutput}, tags=["organizations"])
    def post(self, request: Request, organization_id: int) -> Response:
        access = org_access(user=caller(request), organization_id=organization_id).require(
            OrgAction.MEMBERS_MANAGE
        )
        membership = services.membership_add(
            actor=caller(request), access=access, **parse(MembershipInput, request)
        )
        return Response(MembershipOutput(membership).data, status=status.HTTP_201_CREATED)


class MembershipDetailView(generics.GenericAPIView):
    @extend_schema(request=OrgRoleInput, responses=MembershipOutput, tags=["organizations"])
    def patch(self, request: Request, organization_id: int, user_id: int) -> Response:
        access = org_access(user=caller(request), organization_id=organization_id).require(
            OrgAction.MEMBERS_MANAGE
        )
        role = parse(OrgRoleInput, request)["role"]
        membership = services.membership_update(
            actor=caller(request), access=access, user_id=user_id, role=role
        )
        return Response(MembershipOutput(membership).data)

    @extend_schema(responses={204: NO_CONTENT}, tags=["organizations"])
    def delete(self, request: Request, organization_id: int, user_id: int) -> Response:
        access = org_access(user=caller(request), organization_id=organization_id)
        services.membership_remove(actor=caller(request), access=access, user_id=user_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class OrganizationAuditEventListView(ListView):
    queryset = AuditEvent.objects.none()  # for schema generation; requests use selectors
    output_class = AuditEventOutput
    filterset_class = AuditEventFilter

    @extend_schema(responses=AuditEventOutput(many=True), tags=["audit"])
    def get(self, request: Request, organization_id: int) -> Response:
        events = selectors.audit_event_list_for_organization(
            user=caller(request), organization_id=organization_id
        )
        return self.list_response(events)


# --- Projects ----------------------------------------------------------------------------------


class ProjectListView(ListView):
    queryset = Project.objects.none()  # for schema generation; requests use selectors
    output_class = ProjectOutput
    filterset_class = ProjectFilter

    @extend_schema(responses=ProjectOutput(many=True), tags=["projects"])
    def get(self, request: Request) -> Response:
        return self.list_response(selectors.project_list_for_user(user=caller(request)))

    @extend_schema(request=ProjectCreateInput, responses={201: ProjectDetailOutput}, tags=["projects"])
    def post(self, request: Request) -> Response:
        fields = parse(ProjectCreateInput, request)
        access = org_access(user=caller(request), organization_id=fields.pop("organization"))
        project = services.project_create(actor=caller(request), access=access, **fields)
        role = project_role(user=caller(request), project=project)
        body = ProjectDetailOutput(project, context={"role": role}).data
        return Response(body, status=status.HTTP_201_CREATED)


class ProjectDetailView(generics.GenericAPIView):
    @extend_schema(responses=ProjectDetailOutput, tags=["projects"])
    def get(self, request: Request, project_id: int) -> Response:
        access = project_access(user=caller(request), project_id=project_id)
        return Response(ProjectDetailOutput(access.project, context={"role": access.role}).data)

    @extend_schema(request=ProjectUpdateInput, responses=ProjectDetailOutput, tags=["projects"])
    def patch(self, request: Request, project_id: int) -> Response:
        access = project_access(user=caller(request), project_id=project_id).require(ProjectAction.UPDATE)
        fields = parse(ProjectUpdateInput, request, partial=True)
        project = services.project_update(actor=caller(request), access=access, **fields)
        return Response(ProjectDetailOutput(project, context={"role": access.role}).data)

    @extend_schema(responses={204: NO_CONTENT}, tags=["projects"])
    def delete(self, request: Request, project_id: int) -> Response:
        access = project_access(user=caller(request), project_id=project_id)
        services.project_delete(actor=caller(request), access=access)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ProjectMemberListView(ListView):
    queryset = ProjectMember.objects.none()  # for schema generation; requests use selectors
    output_class = ProjectMemberOutput

    @extend_schema(responses=ProjectMemberOutput(many=True), tags=["projects"])
    def get(self, request: Request, project_id: int) -> Response:
        return self.list_response(
            selectors.project_member_list_for_user(user=caller(request), project_id=project_id)
        )

    @extend_schema(request=ProjectMemberInput, responses={201: ProjectMemberOutput}, tags=["projects"])
    def post(self, request: Request, project_id: int) -> Response:
        access = project_access(user=caller(request), project_id=project_id).require(
            ProjectAction.MEMBERS_MANAGE
        )
        member = services.project_member_add(
            actor=caller(request), access=access, **parse(ProjectMemberInput, request)
        )
        return Response(ProjectMemberOutput(member).data, status=status.HTTP_201_CREATED)


class ProjectMemberDetailView(generics.GenericAPIView):
    @extend_schema(request=ProjectRoleInput, responses=ProjectMemberOutput, tags=["projects"])
    def patch(self, request: Request, project_id: int, user_id: int) -> Response:
        access = project_access(user=caller(request), project_id=project_id).require(
            ProjectAction.MEMBERS_MANAGE
        )
        role = parse(ProjectRoleInput, request)["role"]
        member = services.project_member_update(
            actor=caller(request), access=access, user_id=user_id, role=role
        )
        return Response(ProjectMemberOutput(member).data)

    @extend_schema(responses={204: NO_CONTENT}, tags=["projects"])
    def delete(self, request: Request, project_id: int, user_id: int) -> Response:
        access = project_access(user=caller(request), project_id=project_id)
        services.project_member_remove(actor=caller(request), access=access, user_id=user_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ProjectAuditEventListView(ListView):
    queryset = AuditEvent.objects.none()  # for schema generation; requests use selectors
    output_class = AuditEventOutput
    filterset_class = AuditEventFilter

    @extend_schema(responses=AuditEventOutput(many=True), tags=["audit"])
    def get(self, request: Request, project_id: int) -> Response:
        return self.list_response(
            selectors.audit_event_list_for_project(user=caller(request), project_id=project_id)
        )


class ProjectStatsView(generics.GenericAPIView):
    @extend_schema(responses=ProjectStatsOutput, tags=["projects"])
    def get(self, request: Request, project_id: int) -> Response:
        job = selectors.project_stats_for_user(user=caller(request), project_id=project_id)
        body = {
            "job": job.pk if job else None,
            "computed_at": job.finished_at if job else None,
            "stats": job.result if job else {},
        }
        return Response(ProjectStatsOutput(body).data)


class ProjectStatsRecountView(generics.GenericAPIView):
    @extend_schema(
        parameters=[idempotency_parameter()],
        request=StatsRecountInput,
        responses={202: JobOutput},
        tags=["projects", "jobs"],
    )
    @idempotent
    def post(self, request: Request, project_id: int) -> Response:
        access = project_access(user=caller(request), project_id=project_id).require(
            ProjectAction.STATS_RECOUNT
        )
        job = jobs.job_start(
            kind="project.stats_recount",
            actor=caller(request),
            organization=access.project.organization,
            project=access.project,
            params=parse(StatsRecountInput, request),
        )
        return Response(JobOutput(job).data, status=status.HTTP_202_ACCEPTED)


# --- Jobs --------------------------------------------------------------------------------------


class ProjectJobListView(ListView):
    queryset = Job.objects.none()  # for schema generation; requests use selectors
    output_class = JobOutput
    filterset_class = JobFilter

    @extend_schema(responses=JobOutput(many=True), tags=["jobs"])
    def get(self, request: Request, project_id: int) -> Response:
        return self.list_response(selectors.job_list_for_user(user=caller(request), project_id=project_id))


class JobDetailView(generics.GenericAPIView):
    @extend_schema(responses=JobOutput, tags=["jobs"])
    def get(self, request: Request, job_id: int) -> Response:
        job, _ = selectors.job_get_for_user(user=caller(request), job_id=job_id)
        return Response(JobOutput(job).data)


class JobCancelView(generics.GenericAPIView):
    @extend_schema(request=None, responses=JobOutput, tags=["jobs"])
    def post(self, request: Request, job_id: int) -> Response:
        job, access = selectors.job_get_for_user(user=caller(request), job_id=job_id)
        job = jobs.job_cancel(actor=caller(request), job=job, access=access)
        return Response(JobOutput(job).data)


class JobErrorListView(ListView):
    queryset = JobError.objects.none()  # for schema generation; requests use selectors
    output_class = JobErrorOutput

    @extend_schema(responses=JobErrorOutput(many=True), tags=["jobs"])
    def get(self, request: Request, job_id: int) -> Response:
        return self.list_response(selectors.job_error_list_for_user(user=caller(request), job_id=job_id))
