"""Deterministic train/val/test splits of a release's items (pure functions, no Django).

An item's place is decided by a stable hash of its content (the sha256 of its primary blob) and
the release's seed, never by its database id or by the order items were read:
- plain splits cut the hash range [0, 1) by the ratios, so an item stays in its split from one
  release to the next whatever else is added or removed, and two copies of the same file always
  land in the same split (no leakage of a duplicate between train and test);
- stratified splits keep each class's proportions exact: items the parent release already placed
  keep their split, and new items of a stratum are taken in hash order, each going to the split
  furthest below its target share of that stratum.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DEFAULT_RATIOS = {"train": 0.8, "val": 0.1, "test": 0.1}


def split_key(content_sha256: str, seed: str) -> float:
    """The item's stable position in [0, 1)."""
    digest = hashlib.sha256(f"{seed}\x00{content_sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def by_hash(key: float, ratios: Sequence[tuple[str, float]]) -> str:
    """The split whose share of [0, 1) holds `key` (shares laid out in the order given)."""
    edge = 0.0
    for name, ratio in ratios:
        edge += ratio
        if key < edge:
            return name
    return ratios[-1][0]  # rounding of the last edge


def stratum_of(regions: Iterable[Mapping[str, Any]], class_order: Sequence[str]) -> str:
    """The class an item is stratified by: its most frequent label, ties to the schema's order."""
    counts = Counter(str(r["label"]) for r in regions if r.get("label"))
    if not counts:
        return ""
    rank = {name: i for i, name in enumerate(class_order)}
    return min(counts, key=lambda label: (-counts[label], rank.get(label, len(rank)), label))


def stratified(
    new: Iterable[tuple[int, str, float]],
    ratios: Sequence[tuple[str, float]],
    placed: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[int, str]:
    """Splits for new items `(item id, stratum, key)`, given how many items of each stratum are
    already `placed` in each split (inherited from the parent release)."""
    by_stratum: dict[str, list[tuple[float, int]]] = {}
    for item_id, stratum, key in new:
        by_stratum.setdefault(stratum, []).append((key, item_id))
    chosen: dict[int, str] = {}
    for stratum, members in by_stratum.items():
        counts = Counter({name: 0 for name, _ in ratios})
        counts.update((placed or {}).get(stratum, {}))
        total = sum(counts.values())
        for _, item_id in sorted(members):
            total += 1
            # The split furthest below its share once this item is counted (the first on ties).
            name = max(ratios, key=lambda split: split[1] * total - counts[split[0]])[0]
            counts[name] += 1
            chosen[item_id] = name
    return chosen


def normalize_ratios(ratios: Mapping[str, float]) -> list[tuple[str, float]]:
    """Ratios in a fixed order (train, val, test first, then by name), for hashing and output."""
    known = [name for name in DEFAULT_RATIOS if name in ratios]
    rest = sorted(name for name in ratios if name not in DEFAULT_RATIOS)
    return [(name, float(ratios[name])) for name in [*known, *rest]]
