"""Classification CSV: `item,label`, one row per label; quoting, BOM, grouping and bad rows."""

from __future__ import annotations

import io
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from labeling.formats import csv as csv_format
from labeling.formats import get_format
from labeling.formats.base import ExportItem, ItemIndex, ItemInfo, LabelClass

CLASSES = [LabelClass(n, tools=("classification",)) for n in ("cat", "dog", "bird, small", 'say "hi"', "ünï")]

# Item names with the characters CSV must quote: commas, quotes, line breaks, non-ASCII.
item_names = st.text(
    alphabet=st.sampled_from(list("abcXYZ019 ,;\"'\n\r\t/._-éß漢")), min_size=1, max_size=12
).filter(lambda s: s.strip() == s)


@st.composite
def export_items(draw: st.DrawFn) -> list[ExportItem]:
    names = draw(st.lists(item_names, min_size=0, max_size=6, unique=True))
    index = ItemIndex(ItemInfo(n, item_name, "image") for n, item_name in enumerate(names))
    assume(all(index.resolve(item_name) is index.by_name[item_name] for item_name in names))  # no "./" vs "/"
    made = []
    for n, item_name in enumerate(names):
        labels = draw(st.lists(st.sampled_from([c.name for c in CLASSES]), unique=True, max_size=3))
        regions: list[dict[str, Any]] = [
            {"id": f"r{k + 1}", "type": "classification", "label": label, "attributes": {}, "geometry": {}}
            for k, label in enumerate(labels)
        ]
        if draw(st.booleans()):  # not a classification: not exported
            regions.append({"id": "box", "type": "bbox", "label": "cat", "attributes": {},
                            "geometry": {"x": 0, "y": 0, "width": 1, "height": 1}})  # fmt: skip
        made.append(ExportItem(ItemInfo(n + 1, item_name, "image"), regions))
    return made


def export_bytes(items: list[ExportItem]) -> bytes:
    out = io.BytesIO()
    csv_format.export(iter(items), CLASSES, out)
    return out.getvalue()


@settings(max_examples=150, deadline=None)
@given(export_items())
def test_round_trip(items: list[ExportItem]) -> None:
    first = export_bytes(items)
    result = csv_format.import_(io.BytesIO(first), CLASSES, ItemIndex(e.item for e in items))
    assert result.errors == []
    labelled = [e for e in items if any(r["type"] == "classification" for r in e.regions)]
    assert [r.item for r in result.records] == [e.item for e in labelled]
    for record, e in zip(result.records, labelled, strict=True):
        assert [r["label"] for r in record.regions] == [
            r["label"] for r in e.regions if r["type"] == "classification"
        ]
        assert all(r["type"] == "classification" and r["geometry"] == {} for r in record.regions)
        assert len({r["id"] for r in record.regions}) == len(record.regions)
    again = [ExportItem(r.item, r.regions) for r in result.records]
    assert export_bytes(again) == first


def test_registry_and_export_shape() -> None:
    assert get_format("csv") is csv_format
    assert (csv_format.extension, csv_format.media_type) == (".csv", "text/csv")
    item = ItemInfo(1, 'dir/a "b", c.jpg', "image")
    regions = [
        {"id": "r1", "type": "classification", "label": "cat", "attributes": {}, "geometry": {}},
        {"id": "r2", "type": "classification", "label": "bird, small", "attributes": {}, "geometry": {}},
    ]
    assert export_bytes([ExportItem(item, regions)]) == (
        b'item,label\r\n"dir/a ""b"", c.jpg",cat\r\n"dir/a ""b"", c.jpg","bird, small"\r\n'
    )


def test_import_bom_grouping_and_bad_rows() -> None:
    items = [
        ItemInfo(1, "photos/a.jpg", "image"),
        ItemInfo(2, "photos/b.jpg", "image"),
        ItemInfo(3, "c.jpg", "image"),
    ]
    text = (
        "\ufeffItem,Label,notes\r\n"  # 1: header in another case, an extra column
        "a.jpg,cat,first\r\n"  # 2
        "photos/b.jpg, dog ,\r\n"  # 3: label trimmed
        "a.jpg,horse,\r\n"  # 4: unknown class
        "zzz.jpg,cat,\r\n"  # 5: unmatched
        "zzz.jpg,dog,\r\n"  # 6: same unmatched name, reported once
        "a.jpg\r\n"  # 7: too few columns
        ",cat,\r\n"  # 8: no item
        "\r\n"  # 9: blank
        'photos/a.jpg,"bird, small","multi\r\nline note"\r\n'  # 10-11: a quoted line break
        "a.jpg,cat,duplicate\r\n"  # 12: same label again: one region
        "c.jpg,,\r\n"  # 13: no label: the item imports with no regions
    )
    data = text.encode("utf-8") + b"b.jpg,\xff\xfe,\r\n"  # 14: not UTF-8
    result = csv_format.import_(io.BytesIO(data), CLASSES, ItemIndex(items))
    assert [(e.where, e.code) for e in result.errors] == [
        ("line 4", "unknown_class"),
        ("line 5", "unmatched_item"),
        ("line 7", "malformed"),
        ("line 8", "malformed"),
        ("line 14", "malformed"),
    ]
    got = [(r.where, r.item.id, [g["label"] for g in r.regions]) for r in result.records]
    assert got == [("line 2", 1, ["cat", "bird, small"]), ("line 3", 2, ["dog"]), ("line 13", 3, [])]
    assert [g["id"] for g in result.records[0].regions] == ["r1", "r2"]


def test_import_without_header_is_refused() -> None:
    result = csv_format.import_(
        io.BytesIO(b"a.jpg,cat\n"), CLASSES, ItemIndex([ItemInfo(1, "a.jpg", "image")])
    )
    assert [(e.where, e.code) for e in result.errors] == [("line 1", "malformed")]
    assert result.records == []


def test_csv_module_is_the_standard_library_one() -> None:
    import csv

    assert csv.__name__ == "csv" and hasattr(csv, "reader")
    assert csv_format.csv is csv  # labeling/formats/csv.py imports the stdlib, not itself
