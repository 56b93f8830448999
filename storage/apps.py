from django.apps import AppConfig


class StorageConfig(AppConfig):
    name = "storage"
    verbose_name = "Object storage, datasets and items"

    def ready(self) -> None:
        from storage import ingest  # noqa: F401  (registers the ingest job kind)
