"""Starting a training on a release, and reading the trainings a caller may see."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet

from labeling.inference.trained import missing_extra
from labeling.models import LabelSchema, ModelKind, ModelVersion, Release, ReleaseItem, Training
from labeling.prelabel import ModelNotRunnable
from labeling.releases.services import release_ready
from labeling.services import parsed_schema
from labeling.training.jobs import TRAINING_KIND
from labeling.training.recipes import RECIPES, ParamError, Recipe, recipe_params
from projects.access import ProjectAccess, ProjectAction, project_access
from projects.audit import audit_record
from projects.exceptions import InvalidInput, NameTaken, NotFound, SchemaViolation
from projects.jobs import job_start
from projects.models import JobState

DEFAULT_TRAIN_SPLITS = ("train", "val")
DEFAULT_EVAL_SPLIT = "test"


def training_start(
    *,
    actor: User,
    access: ProjectAccess,
    release: Release,
    recipe: str,
    params: dict[str, Any],
    name: str | None = None,
) -> Training:
    """Check everything, then record the training and queue its job (labeling.training) in one
    transaction: a refused request writes nothing. `release` is one of the access's project
    (labeling.releases.services.release_get)."""
    access.require(ProjectAction.MODELS_TRAIN)
    release_ready(release)
    found = RECIPES.get(recipe)
    if found is None:
        raise InvalidInput(
            f"{recipe!r} is not a recipe Loupe trains.", field="recipe", recipes=sorted(RECIPES)
        )
    clean = _params(found, release, dict(params))
    _check_schema(found, release)
    extra = missing_extra(found.name) if found.extra else None
    if extra is not None:
        raise ModelNotRunnable(
            f"The {found.name} recipe needs the {extra!r} extra, which this installation lacks: "
            f"install 'loupe[{extra}]'.",
            recipe=found.name,
            extra=extra,
        )
    project = access.project
    model_name = (name or f"{project.name} {found.name}")[:200]
    taken = ModelVersion.objects.filter(
        model__organization_id=project.organization_id, model__name=model_name
    ).exclude(kind=ModelKind.TRAINED)
    if taken.exists():
        raise NameTaken(
            "A model of that name exists and was not trained in Loupe: name this one differently.",
            field="name",
        )
    with transaction.atomic():
        training = Training.objects.create(
            project=project,
            release=release,
            recipe=found.name,
            params=clean,
            model_name=model_name,
            created_by=actor,
        )
        audit_record(
            actor=actor,
            verb="training.start",
            obj=training,
            project=project,
            changes={"release": release.pk, "recipe": found.name, "params": clean, "model": model_name},
        )
        training.job = job_start(
            kind=TRAINING_KIND,
            actor=actor,
            organization=project.organization,
            project=project,
            params={"training_id": training.pk},
        )
        training.save(update_fields=["job"])
    return training


def _params(recipe: Recipe, release: Release, raw: dict[str, Any]) -> dict[str, Any]:
    """The recipe's parameters and the splits, checked against the release."""
    names = list((release.splits or {}).get("ratios", {}))
    sizes: dict[str, int] = (release.counts or {}).get("by_split", {})
    train_splits = raw.pop("train_splits", None)
    if train_splits is None:
        train_splits = [s for s in DEFAULT_TRAIN_SPLITS if s in names]
    if (
        not isinstance(train_splits, list)
        or not train_splits
        or not all(isinstance(s, str) and s in names for s in train_splits)
    ):
        raise InvalidInput(
            "train_splits lists splits of the release.", field="params.train_splits", splits=names
        )
    train_splits = list(dict.fromkeys(train_splits))  # as asked, once each
    eval_split = raw.pop("eval_split", DEFAULT_EVAL_SPLIT if DEFAULT_EVAL_SPLIT in names else None)
    if eval_split is not None and (not isinstance(eval_split, str) or eval_split not in names):
        raise InvalidInput(
            "eval_split is a split of the release (or null).", field="params.eval_split", splits=names
        )
    if eval_split in train_splits:
        raise InvalidInput(
            "The held-out split must not be one the model learns from.", field="params.eval_split"
        )
    if not sum(sizes.get(s, 0) for s in train_splits):
        raise SchemaViolation(
            "The training splits of this release hold no item.",
            code="nothing_to_train",
            train_splits=train_splits,
            split_sizes=sizes,
        )
    try:
        clean = recipe_params(recipe, raw)
    except ParamError as exc:
        raise InvalidInput(str(exc), field=f"params.{exc.name}") from None
    return {**clean, "train_splits": train_splits, "eval_split": eval_split}


def _check_schema(recipe: Recipe, release: Release) -> None:
    """The release's schema must have classes the recipe can learn (their tool is its region type)."""
    schema = LabelSchema.objects.get(project_id=release.project_id, version=release.schema_version)
    classes = [name for name, c in parsed_schema(schema).classes.items() if recipe.region_type in c.tools]
    if not classes:
        raise SchemaViolation(
            f"The {recipe.name} recipe learns {recipe.region_type} regions, and no class of the "
            "release's schema has that tool.",
            code="recipe_not_applicable",
            recipe=recipe.name,
        )
    modalities = ReleaseItem.objects.filter(release=release, modality=recipe.modality)
    if not modalities.exists():
        raise SchemaViolation(
            f"The {recipe.name} recipe reads {recipe.modality} items, and the release has none.",
            code="recipe_not_applicable",
            recipe=recipe.name,
        )


def trainings_of(release: Release) -> QuerySet[Training]:
    """A release's trainings, newest first (the caller may see the release)."""
    return _with_related(Training.objects.filter(release=release)).order_by("-id")


def training_get(*, user: User, training_id: int) -> Training:
    """A training of a project whose releases the caller may see (404 when the project is not
    visible to it, 403 when it may not read releases)."""
    project_id = Training.objects.filter(id=training_id).values_list("project_id", flat=True).first()
    if project_id is None:
        raise NotFound("Training not found.", training_id=training_id)
    project_access(user=user, project_id=project_id).require(ProjectAction.RELEASES_VIEW)
    return _with_related(Training.objects.filter(id=training_id)).get()


def _with_related(trainings: QuerySet[Training]) -> QuerySet[Training]:
    return trainings.select_related("release", "job", "model_version__model")


def training_state(training: Training) -> str:
    return training.job.state if training.job is not None else JobState.QUEUED


def training_phase(training: Training) -> str | None:
    """Where the job is: features, fit or artifacts; done once it succeeded (None before it starts)."""
    job = training.job
    if job is None or job.chunks_total is None:
        return None
    if job.state == JobState.SUCCEEDED:
        return "done"
    features = job.params.get("feature_chunks", 0)
    if job.chunks_done < features:
        return "features"
    return "fit" if job.chunks_done == features else "artifacts"
