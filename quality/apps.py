from django.apps import AppConfig


class QualityConfig(AppConfig):
    name = "quality"
    verbose_name = "Quality checks, agreement and annotator scores"

    def ready(self) -> None:
        from labeling import hooks
        from projects.services import settings_key_managed
        from quality import evaluation, jobs  # noqa: F401  (register the quality job kinds)
        from quality.services import consensus_for_release, quality_facts, submit_check, task_complete

        hooks.on_submit_check(submit_check)
        hooks.on_task_complete(task_complete)
        hooks.on_consensus(consensus_for_release)
        hooks.on_quality_facts(quality_facts)
        # A model trained on a release is evaluated on its held-out split.
        hooks.on_model_trained(evaluation.evaluation_after_training)
        settings_key_managed("quality", "PUT /api/v1/projects/{id}/quality/settings")
