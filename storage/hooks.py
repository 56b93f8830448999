"""What happens elsewhere when a dataset gains items or projects, run by storage's own services.

`storage` may not import the apps built on it, so they register here (in their AppConfig.ready)
and storage calls them explicitly, inside the transaction that added the items or the link: the
tasks of a project appear in the same commit as its new items, or not at all.
"""

from __future__ import annotations

from collections.abc import Callable

ItemsAdded = Callable[[int, list[int] | None], None]  # (dataset id, new item ids or None: all)

_ITEMS_ADDED: list[ItemsAdded] = []


def on_items_added(hook: ItemsAdded) -> ItemsAdded:
    if hook not in _ITEMS_ADDED:
        _ITEMS_ADDED.append(hook)
    return hook


def items_added(dataset_id: int, item_ids: list[int] | None = None) -> None:
    """A dataset gained items (`item_ids`) or was linked to projects (None: every item counts)."""
    if item_ids is not None and not item_ids:
        return
    for hook in _ITEMS_ADDED:
        hook(dataset_id, item_ids)
