"""What changed from one release to another, item by item and region by region.

Both releases are read in item order with server-side cursors and merged like sorted files, so a
diff of two 100k-item releases holds one item of each at a time and streams its JSON out.
An item is `changed` when its labels differ (by their sha256), and the regions that changed are
named: added and removed region ids, and ids present in both whose content differs. An item whose
labels are the same but moved split is `changed` too, with only `split` filled in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from labeling.models import Release, ReleaseItem
from labeling.services import region_changes

_FIELDS = ("item_id", "name", "split", "source", "regions_sha256", "regions")


def _entries(release: Release) -> Iterator[tuple[Any, ...]]:
    rows = ReleaseItem.objects.filter(release=release).order_by("item_id").values_list(*_FIELDS)
    yield from rows.iterator(chunk_size=2000)


def diff_records(base: Release, head: Release) -> Iterator[tuple[str, dict[str, Any]]]:
    """('added' | 'removed' | 'changed', record) for every item that differs, in item order."""
    old_rows, new_rows = _entries(base), _entries(head)
    old, new = next(old_rows, None), next(new_rows, None)
    while old is not None or new is not None:
        if new is not None and (old is None or new[0] < old[0]):
            yield "added", {"item": new[0], "name": new[1], "split": new[2], "regions": len(new[5])}
            new = next(new_rows, None)
        elif old is not None and (new is None or old[0] < new[0]):
            yield "removed", {"item": old[0], "name": old[1], "split": old[2], "regions": len(old[5])}
            old = next(old_rows, None)
        else:
            assert old is not None and new is not None
            if old[4] != new[4] or old[2] != new[2]:
                record: dict[str, Any] = {"item": new[0], "name": new[1]}
                if old[2] != new[2]:
                    record["split"] = [old[2], new[2]]
                if old[4] != new[4]:
                    record["source"] = [old[3], new[3]]
                    record["regions"] = region_changes(old[5], new[5])
                yield "changed", record
            old, new = next(old_rows, None), next(new_rows, None)


def diff_json(base: Release, head: Release) -> Iterator[str]:
    """The diff as one JSON document, written piece by piece: the item lists, then a summary."""
    head_of = {
        "from": {"id": base.pk, "version": base.version},
        "to": {"id": head.pk, "version": head.version},
    }
    yield json.dumps(head_of)[:-1]
    counts = {"added": 0, "removed": 0, "changed": 0}
    # One pass per list, so nothing is buffered: reading a release again is cheap, holding a
    # long list of changes is not.
    for kind in ("added", "removed", "changed"):
        yield f', "{kind}": ['
        first = True
        for found, record in diff_records(base, head):
            if found != kind:
                continue
            counts[kind] += 1
            yield ("" if first else ", ") + json.dumps(record, ensure_ascii=False)
            first = False
        yield "]"
    yield f', "summary": {json.dumps(counts)}}}'
