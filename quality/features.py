"""Feature vectors of tasks' items, for the classifiers label-error detection trains.

The features themselves are computed in `labeling.inference.features` (one place for every
classifier Loupe fits, models trained on releases included):

- text items: all-MiniLM-L6-v2 sentence embeddings (384 numbers), the built-in embedding model of
  pre-labeling (`embeddings` extra); without it the job fails, naming the extra to install.
- image items: the picture reduced to 16 x 16 grayscale pixels, standardized (`pixels`). It
  separates classes that differ in shape and layout (digits, icons, documents by layout) and will
  not tell apart classes that differ in texture or fine detail (dog breeds, defects).

Items of other modalities are refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from labeling.inference.features import MAX_TEXT_CHARS, FeaturesUnavailable, image_features, text_features
from labeling.models import Task

__all__ = ["FeaturesUnavailable", "task_features"]


def task_features(task_ids: Sequence[int]) -> np.ndarray:
    """One feature row per task, in the order given (all the tasks' items of one modality)."""
    from storage.objects import object_store

    rows = {
        t.pk: t
        for t in Task.objects.filter(id__in=list(task_ids))
        .select_related("item__primary")
        .only("id", "item__modality", "item__meta", "item__primary__key")
    }
    tasks = [rows[t] for t in task_ids]
    modalities = {t.item.modality for t in tasks}
    if len(modalities) > 1:
        raise FeaturesUnavailable(
            f"Label-error detection reads one modality at a time, got {sorted(modalities)}."
        )
    modality = modalities.pop() if modalities else "text"
    store = object_store()

    def content(task: Task) -> bytes:
        with store.open(task.item.primary.key) as handle:
            return bytes(handle.read())

    if modality == "text":
        from labeling.jobs import read_text

        return text_features(
            [read_text(store, t.item.primary.key, t.item.meta, limit=MAX_TEXT_CHARS) for t in tasks]
        )
    if modality == "image":
        return image_features([content(t) for t in tasks], "pixels")
    raise FeaturesUnavailable(f"Label-error detection reads text and images, not {modality}.")
