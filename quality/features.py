"""Feature vectors of tasks' items, for the classifiers label-error detection trains.

- text items: all-MiniLM-L6-v2 sentence embeddings (384 numbers), the built-in embedding model of
  pre-labeling (`embeddings` extra); without it the job fails, naming the extra to install.
- image items: the picture reduced to 16 x 16 grayscale
  pixels, standardized (`quality.metrics.label_errors.pixel_features`). No pretrained image
  model ships inside a PyPI wheel Loupe can rely on offline, so this is what is available: it
  separates classes that differ in shape and layout (digits, icons, documents by layout) and
  will not tell apart classes that differ in texture or fine detail (dog breeds, defects).

Items of other modalities are refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from labeling.models import Task

PIXELS = 16
MAX_TEXT_CHARS = 4000


class FeaturesUnavailable(RuntimeError):
    pass


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
        from labeling.inference.builtin.embeddings import embed
        from labeling.jobs import read_text

        return embed([read_text(store, t.item.primary.key, t.item.meta, limit=MAX_TEXT_CHARS) for t in tasks])
    if modality == "image":
        from quality.metrics.label_errors import pixel_features
        from storage.media.images import image_gray

        return pixel_features([image_gray(content(t), size=PIXELS) for t in tasks], size=PIXELS)
    raise FeaturesUnavailable(f"Label-error detection reads text and images, not {modality}.")
