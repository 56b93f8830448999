"""Classification as CSV: a header `item,label`, then one row per item and label.

Export writes the classification regions only (other region types, attributes and scores have no
column), one row per label so a multi-label item has several rows; items without a
classification get no row. Quoting is the csv module's minimal quoting (RFC 4180, CRLF lines),
UTF-8 without a BOM.

Import reads UTF-8 (a BOM is accepted) with the csv module, so quoted fields may hold commas,
quotes and line breaks. The header must name the columns `item` and `label` (any case, in any
order, other columns ignored). Rows are grouped per item wherever they are in the file: one
`ImportedRecord` per item with one classification region per distinct label, in the order the
labels first appear (labels are trimmed; an item name is matched as written, then trimmed). A
row with an empty label contributes no region (an item whose rows are all empty imports with no
regions). Errors point at the row's first physical line (`line 3`): a row without the two
columns or not UTF-8 is `malformed`, a label that is not a class `unknown_class`, an item name
no project item matches `unmatched_item` (reported once, at its first row).
"""

from __future__ import annotations

import csv
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

name = "csv"
media_type = "text/csv"
extension = ".csv"
can_import = True
can_export = True

HEADER = ("item", "label")


class _Utf8Writer:
    """What csv.writer writes to: encodes each piece straight onto the binary stream."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out

    def write(self, text: str) -> int:
        return self._out.write(text.encode("utf-8"))


def export(items: Iterable[ExportItem], classes: list[LabelClass], out: IO[bytes]) -> None:
    writer = csv.writer(_Utf8Writer(out))
    writer.writerow(HEADER)
    for export_item in items:
        for region in export_item.regions:
            if region.get("type") == "classification":
                writer.writerow((export_item.item.name, region["label"]))


class _Lines:
    """Decoded lines of a binary stream, remembering which physical lines were not UTF-8."""

    def __init__(self, data: IO[bytes]) -> None:
        self._data = data
        self.bad: set[int] = set()

    def __iter__(self) -> Iterator[str]:
        for lineno, raw in enumerate(self._data, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.bad.add(lineno)
                text = raw.decode("utf-8", errors="replace")
            if lineno == 1:
                text = text.removeprefix("\ufeff")
            yield text


def import_(data: IO[bytes], classes: list[LabelClass], index: ItemIndex) -> ImportResult:
    result = ImportResult()
    known = class_names(classes)
    lines = _Lines(data)
    reader = csv.reader(lines, strict=True)
    # item id → (item, labels in order, where of its first row); names resolved once each.
    groups: dict[int, tuple[ItemInfo, list[str], str]] = {}
    resolved: dict[str, ItemInfo | None] = {}
    item_col = label_col = -1
    last_line = 0
    while True:
        first_line = last_line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            result.errors.append(RecordError(f"line {first_line}", "malformed", f"not CSV: {exc}"))
            last_line = reader.line_num
            if item_col < 0:
                break
            continue
        last_line = reader.line_num
        where = f"line {first_line}"
        if any(n in lines.bad for n in range(first_line, last_line + 1)):
            result.errors.append(RecordError(where, "malformed", "not UTF-8"))
            if item_col < 0:
                break
            continue
        if item_col < 0:
            header = [cell.strip().lower() for cell in row]
            if "item" not in header or "label" not in header:
                result.errors.append(
                    RecordError(where, "malformed", "the first row must be the header `item,label`")
                )
                break
            item_col, label_col = header.index("item"), header.index("label")
            continue
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) <= max(item_col, label_col):
            result.errors.append(
                RecordError(where, "malformed", f"expected the columns item and label, got {row!r}")
            )
            continue
        item_name, label = row[item_col], row[label_col].strip()
        if not item_name.strip():
            result.errors.append(RecordError(where, "malformed", "the item column is empty"))
            continue
        if item_name not in resolved:
            found = index.resolve(item_name)
            if found is None and item_name.strip() != item_name:
                found = index.resolve(item_name.strip())
            resolved[item_name] = found
            if found is None:
                result.errors.append(
                    RecordError(where, "unmatched_item", f"no item of the project matches {item_name!r}")
                )
        item = resolved[item_name]
        if item is None:
            continue
        group = groups.get(item.id)
        if group is None:
            group = groups[item.id] = (item, [], where)
        if not label:
            continue
        if label not in known:
            result.errors.append(
                RecordError(where, "unknown_class", f"{label!r} is not a class of the schema")
            )
            continue
        if label not in group[1]:
            group[1].append(label)

    for item, labels, where in groups.values():
        ids = region_ids()
        regions: list[dict[str, Any]] = [
            {"id": next(ids), "type": "classification", "label": label, "attributes": {}, "geometry": {}}
            for label in labels
        ]
        result.records.append(ImportedRecord(item=item, regions=regions, where=where))
    return result
