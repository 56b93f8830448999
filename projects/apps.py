from django.apps import AppConfig


class ProjectsConfig(AppConfig):
    name = "projects"
    verbose_name = "Organizations, projects, jobs and audit"

    def ready(self) -> None:
        from projects import jobkinds  # noqa: F401  (registers the job kinds of this app)
