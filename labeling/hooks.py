"""What the apps built on labeling add to its services, called explicitly (never signals).

`labeling` may not import `quality`, so quality registers here in its AppConfig.ready and the
workflow calls the hooks at fixed points:

- **submit checks** run on a submit's (or a reviewer's fix's) validated regions before anything
  is written. A check refuses the work by raising a DomainError (the caller gets its status and
  code, nothing is written); otherwise it may return a recorder, which the service calls inside
  its transaction once the annotation is saved (to keep warnings as findings, score a gold
  answer…), so what a check saw is recorded in the same commit as the work or not at all.
- **task complete** runs inside the submit transaction, the task row locked, when the last slot
  of a task is submitted and before the workflow decides between review and done. A hook may set
  the task's `qc_status` (to "flagged", say, for annotators who disagree); the workflow saves it
  and routes flagged tasks to review.
- **release facts** are read when a release is built and when its lineage is shown: for a list
  of task ids, what the apps built on labeling know of each task (the annotators' consensus and
  the quality checks it went through). Providers only read; each answers for the tasks it knows.
- **model trained** runs inside the transaction that registers a model version trained on a
  release (labeling.training), with the release and the held-out split the model never saw: an
  app may ask for an evaluation there (quality starts an evaluation job, enqueued on commit), so
  the request commits with the version or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labeling.models import Annotation, ModelVersion, Release, Task
    from labeling.regions import ItemFacts, Schema
    from projects.models import Project


@dataclass(frozen=True)
class Submitted:
    """Work about to be submitted: validated regions of `author_id` for `task` (its item loaded)."""

    project: Project
    task: Task
    author_id: int
    regions: list[dict[str, Any]]
    schema: Schema
    facts: ItemFacts


Recorder = Callable[["Annotation"], None]
SubmitCheck = Callable[[Submitted], Recorder | None]
TaskComplete = Callable[["Task"], None]


@dataclass(frozen=True)
class Consensus:
    """The regions a task's annotators agree on, and the annotations they were fused from."""

    regions: list[dict[str, Any]]
    annotation_ids: list[int]
    method: str
    agreement: float | None


ConsensusProvider = Callable[[list[int]], dict[int, Consensus]]
QualityProvider = Callable[[list[int]], dict[int, dict[str, Any]]]
# (the trained version, the release it learned from, the held-out split, the user who trained it)
ModelTrained = Callable[["ModelVersion", "Release", str, int | None], None]

_SUBMIT_CHECKS: list[SubmitCheck] = []
_TASK_COMPLETE: list[TaskComplete] = []
_CONSENSUS: list[ConsensusProvider] = []
_QUALITY: list[QualityProvider] = []
_MODEL_TRAINED: list[ModelTrained] = []


def on_submit_check(hook: SubmitCheck) -> SubmitCheck:
    if hook not in _SUBMIT_CHECKS:
        _SUBMIT_CHECKS.append(hook)
    return hook


def on_task_complete(hook: TaskComplete) -> TaskComplete:
    if hook not in _TASK_COMPLETE:
        _TASK_COMPLETE.append(hook)
    return hook


def submit_checks(work: Submitted) -> Recorder:
    """Run every check (outside any transaction); the returned recorder runs theirs in order."""
    recorders = [recorder for check in _SUBMIT_CHECKS if (recorder := check(work)) is not None]

    def record(annotation: Annotation) -> None:
        for recorder in recorders:
            recorder(annotation)

    return record


def task_complete(task: Task) -> None:
    for hook in _TASK_COMPLETE:
        hook(task)


def on_consensus(provider: ConsensusProvider) -> ConsensusProvider:
    if provider not in _CONSENSUS:
        _CONSENSUS.append(provider)
    return provider


def on_quality_facts(provider: QualityProvider) -> QualityProvider:
    if provider not in _QUALITY:
        _QUALITY.append(provider)
    return provider


def consensus_of(task_ids: list[int]) -> dict[int, Consensus]:
    """Each task's consensus, where one is known (none without a provider)."""
    found: dict[int, Consensus] = {}
    for provider in _CONSENSUS:
        found.update(provider(task_ids))
    return found


def quality_facts(task_ids: list[int]) -> dict[int, dict[str, Any]]:
    """What quality checks found for each task, for lineage (empty without a provider)."""
    found: dict[int, dict[str, Any]] = {}
    for provider in _QUALITY:
        for task_id, facts in provider(task_ids).items():
            found.setdefault(task_id, {}).update(facts)
    return found


def on_model_trained(hook: ModelTrained) -> ModelTrained:
    if hook not in _MODEL_TRAINED:
        _MODEL_TRAINED.append(hook)
    return hook


def model_trained(version: ModelVersion, release: Release, split: str, actor_id: int | None) -> None:
    """A model version trained on `release` was registered (inside that transaction); `split` is
    the release's held-out split to evaluate it on."""
    for hook in _MODEL_TRAINED:
        hook(version, release, split, actor_id)
