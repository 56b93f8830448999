"""Loupe's native JSON Lines: every region type, full fidelity.

One line per item, UTF-8, no BOM written (one accepted on import)::

    {"item": "img/a.jpg", "item_id": 7, "modality": "image", "annotation_id": 12, "regions": [...]}

The regions are written exactly as Loupe stores them (docs/annotations.md), ids, attributes and
scores included, so an export imports back unchanged.

Import checks structure only: each non-blank line must be a JSON object whose `regions` is a list
of objects with a string `type` and `label`; a label that is not a class of the schema is an
`unknown_class` error for that region (the region is dropped, the rest of the line kept). Region
ids are kept; a region without a string id gets one from `region_ids()` (never one the line
already uses). Geometry, attributes and tools are validated later by the caller against the schema.
The item is found by `item` (through `ItemIndex`), or by `item_id` when `item` is missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

from labeling.formats.base import (
    ExportItem,
    ImportedRecord,
    ImportResult,
    ItemIndex,
    ItemInfo,
    LabelClass,
    RecordError,
    class_names,
    region_ids,
)

name = "jsonl"
media_type = "application/x-ndjson"
extension = ".jsonl"
can_import = True
can_export = True


def export(items: Iterable[ExportItem], classes: list[LabelClass], out: IO[bytes]) -> None:
    """One JSON object per line, in the order the items come."""
    for export_item in items:
        item = export_item.item
        line = {
            "item": item.name,
            "item_id": item.id,
            "modality": item.modality,
            "annotation_id": export_item.annotation_id,
            "regions": export_item.regions,
        }
        out.write(json.dumps(line, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n")


def _fresh_ids(used: set[str]) -> Iterator[str]:
    for candidate in region_ids():
        if candidate not in used:
            used.add(candidate)
            yield candidate


def import_(data: IO[bytes], classes: list[LabelClass], index: ItemIndex) -> ImportResult:
    result = ImportResult()
    known = class_names(classes)
    by_id: dict[int, ItemInfo] | None = None
    for lineno, raw in enumerate(data, start=1):
        where = f"line {lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            result.errors.append(RecordError(where, "malformed", f"not UTF-8: {exc.reason}"))
            continue
        if lineno == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            result.errors.append(RecordError(where, "malformed", f"not JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(obj, dict):
            result.errors.append(RecordError(where, "malformed", "a line must be a JSON object"))
            continue
        regions = obj.get("regions")
        if not isinstance(regions, list):
            result.errors.append(RecordError(where, "malformed", "`regions` must be a list"))
            continue

        item_name = obj.get("item")
        item: ItemInfo | None
        if isinstance(item_name, str) and item_name:
            item = index.resolve(item_name)
            wanted = repr(item_name)
        elif (
            item_name is None and isinstance(obj.get("item_id"), int) and not isinstance(obj["item_id"], bool)
        ):
            if by_id is None:
                by_id = {info.id: info for info in index.by_name.values()}
            item = by_id.get(obj["item_id"])
            wanted = f"item_id {obj['item_id']}"
        else:
            result.errors.append(RecordError(where, "malformed", "`item` must be a non-empty string"))
            continue
        if item is None:
            result.errors.append(
                RecordError(where, "unmatched_item", f"no item of the project matches {wanted}")
            )
            continue

        used = {r["id"] for r in regions if isinstance(r, dict) and isinstance(r.get("id"), str) and r["id"]}
        fresh = _fresh_ids(used)
        kept: list[dict[str, Any]] = []
        seen: set[str] = set()
        for k, region in enumerate(regions):
            rwhere = f"{where} regions[{k}]"
            if not isinstance(region, dict):
                result.errors.append(RecordError(rwhere, "malformed", "a region must be an object"))
                continue
            if not isinstance(region.get("type"), str) or not isinstance(region.get("label"), str):
                result.errors.append(
                    RecordError(rwhere, "malformed", "a region needs a string `type` and `label`")
                )
                continue
            if region["label"] not in known:
                result.errors.append(
                    RecordError(rwhere, "unknown_class", f"{region['label']!r} is not a class of the schema")
                )
                continue
            region = dict(region)
            rid = region.get("id")
            if not isinstance(rid, str) or not rid or rid in seen:
                region["id"] = next(fresh)
            seen.add(region["id"])
            kept.append(region)
        result.records.append(ImportedRecord(item=item, regions=kept, where=where))
    return result
