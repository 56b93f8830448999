from django.apps import AppConfig


class LabelingConfig(AppConfig):
    name = "labeling"
    verbose_name = "Tasks, annotations, reviews and releases"

    def ready(self) -> None:
        from labeling import jobs, prelabel  # noqa: F401  (register the labeling job kinds)
        from labeling.releases import build, exports  # noqa: F401  (and the release job kinds)
        from labeling.services import tasks_for_new_items
        from labeling.training import jobs as training_jobs  # noqa: F401  (and training's)
        from projects.services import settings_key_managed
        from storage import hooks

        hooks.on_items_added(tasks_for_new_items)
        settings_key_managed("workflow", "PATCH /api/v1/projects/{id}/workflow")
        settings_key_managed("webhooks", "/api/v1/projects/{id}/webhooks (its index of subscribed events)")
