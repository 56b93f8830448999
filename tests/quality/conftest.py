"""The labeling fixtures (a local object store, a project with an item of every modality)."""

from tests.labeling.conftest import labeled, objects_dir

__all__ = ["labeled", "objects_dir"]
