"""Training models on releases: start one, list a release's trainings, read one."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response

from labeling.models import Training
from labeling.releases.services import release_get
from labeling.training import services
from labeling.training.serializers import TrainingInput, TrainingOutput
from projects.access import ProjectAction
from projects.idempotency import idempotency_parameter, idempotent
from projects.views import ListView, caller, parse

_TAGS = ["training"]


class TrainingListView(ListView):
    queryset = Training.objects.none()
    output_class = TrainingOutput

    @extend_schema(responses=TrainingOutput(many=True), tags=_TAGS)
    def get(self, request: Request, release_id: int) -> Response:
        release, _ = release_get(user=caller(request), release_id=release_id)
        return self.list_response(services.trainings_of(release))

    @extend_schema(
        request=TrainingInput,
        responses={202: TrainingOutput},
        tags=_TAGS,
        parameters=[idempotency_parameter()],
    )
    @idempotent
    def post(self, request: Request, release_id: int) -> Response:
        user = caller(request)
        release, access = release_get(user=user, release_id=release_id, action=ProjectAction.MODELS_TRAIN)
        fields = parse(TrainingInput, request)
        training = services.training_start(
            actor=user,
            access=access,
            release=release,
            recipe=fields["recipe"],
            params=dict(fields["params"]),
            name=fields.get("name"),
        )
        return Response(TrainingOutput(training).data, status=status.HTTP_202_ACCEPTED)


class TrainingDetailView(generics.GenericAPIView):
    @extend_schema(responses=TrainingOutput, tags=_TAGS)
    def get(self, request: Request, training_id: int) -> Response:
        training = services.training_get(user=caller(request), training_id=training_id)
        return Response(TrainingOutput(training).data)
