"""Pascal VOC zip: round trips, the files on disk, 1-based boxes, refused (hostile) XML, streaming."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import defusedxml.ElementTree as SafeET
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labeling.formats import get_format, voc
from labeling.formats.base import ExportItem, ItemIndex, ItemInfo, LabelClass, RecordError, region_ids

CAR_ATTRIBUTES = ("pose", "truncated", "difficult", "occluded", "make", "doors", "speed", "tags", "plate")
CLASSES = [
    LabelClass("car", ("bbox",), attributes=CAR_ATTRIBUTES),
    LabelClass("person", ("bbox", "keypoints"), keypoints=("head",)),
    LabelClass("dog", ("bbox",), attributes=("difficult",)),
]


def export_zip(items: list[ExportItem], classes: list[LabelClass] = CLASSES) -> bytes:
    out = io.BytesIO()
    voc.export(iter(items), classes, out)
    return out.getvalue()


def make_zip(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return buffer.getvalue()


def with_ids(regions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = region_ids()
    return [{**r, "id": next(ids)} for r in regions]


def box(label: str, x: float, y: float, w: float, h: float, **attributes: Any) -> dict[str, Any]:
    return {
        "type": "bbox",
        "label": label,
        "attributes": attributes,
        "geometry": {"x": x, "y": y, "width": w, "height": h},
    }


def annotation(filename: str, *objects: str) -> str:
    return f"<annotation><filename>{filename}</filename>{''.join(objects)}</annotation>"


def obj(name: str, xmin: Any, ymin: Any, xmax: Any, ymax: Any, extra: str = "") -> str:
    return (
        f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>{extra}</object>"
    )


# --- strategies ------------------------------------------------------------------------------

plain_text = st.text(st.sampled_from("abcXYZ éü&<>'\"\r\n\t"), min_size=1, max_size=10).filter(
    lambda s: s not in ("true", "false") and s.strip() == s
)
car_attributes = st.fixed_dictionaries(
    {"truncated": st.booleans(), "difficult": st.booleans(), "occluded": st.booleans()},
    optional={
        "pose": st.sampled_from(["Left", "Right", "Frontal", "Rear"]),
        "make": st.sampled_from(["audi", "bmw", "other"]),
        "doors": st.integers(2, 5),
        "speed": st.floats(-1e6, 1e6, allow_nan=False),
        "tags": st.lists(st.sampled_from(["parked", "moving", "a, b"]), unique=True),
        "plate": plain_text,
    },
)


@st.composite
def region_for(draw: st.DrawFn, width: int, height: int) -> dict[str, Any]:
    label = draw(st.sampled_from(["car", "person", "dog"]))
    x, y = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
    w, h = draw(st.integers(1, width - x)), draw(st.integers(1, height - y))
    if label == "car":
        attributes = draw(car_attributes)
    elif label == "dog":
        attributes = {"difficult": draw(st.booleans())}
    else:
        attributes = {}
    return box(label, x, y, w, h, **attributes)


segment = st.text(st.sampled_from("abcXYZ019 _-&<>'\"é"), min_size=1, max_size=6).filter(
    lambda s: s.strip(" .") == s
)
item_name = st.builds(
    lambda parts, ext: "/".join(parts) + ext,
    st.lists(segment, min_size=1, max_size=3),
    st.sampled_from([".jpg", ".png", ""]),
)


@st.composite
def datasets(draw: st.DrawFn) -> list[ExportItem]:
    names = draw(st.lists(item_name, unique=True, min_size=1, max_size=5))
    items = []
    for i, name in enumerate(names):
        width, height = draw(st.integers(1, 5000)), draw(st.integers(1, 5000))
        regions = draw(st.lists(region_for(width, height), max_size=5))
        items.append(ExportItem(ItemInfo(i + 1, name, "image", width, height), with_ids(regions)))
    return items


# --- round trips -----------------------------------------------------------------------------


def test_the_module_is_registered() -> None:
    module = get_format("voc")
    assert (module.name, module.media_type, module.extension) == ("voc", "application/zip", ".zip")
    assert module.can_import and module.can_export


@settings(max_examples=60, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets())
def test_export_import_export_is_stable_and_lossless(items: list[ExportItem]) -> None:
    first = export_zip(items)
    result = voc.import_(io.BytesIO(first), CLASSES, ItemIndex(e.item for e in items))
    assert result.errors == []
    assert [(r.item, r.regions) for r in result.records] == [(e.item, e.regions) for e in items]
    assert export_zip([ExportItem(r.item, r.regions) for r in result.records]) == first


def test_boxes_are_one_based_inclusive_pixels() -> None:
    item = ItemInfo(1, "a.jpg", "image", 100, 50)
    regions = with_ids(
        [
            box("person", 0, 0, 10, 5),
            box("person", 10.4, 2.5, 5.2, 0.2),  # edges snap to whole pixels, half up
            box("person", 0.3, 0.1, 0.2, 0.2),  # a box keeps one pixel
            {"type": "polygon", "label": "person", "geometry": {"points": [[0, 0], [1, 0], [1, 1]]}},
            {"type": "keypoints", "label": "person", "geometry": {"points": [[1, 1, 2]]}},
            box("cat", 1, 1, 1, 1),
        ]
    )
    out = io.BytesIO()
    assert voc.write(iter([ExportItem(item, regions)]), CLASSES, out) == {
        "polygon": 1,
        "keypoints": 1,
        "unknown_label": 1,
    }
    with zipfile.ZipFile(out) as archive:
        root = SafeET.fromstring(archive.read("Annotations/a.xml"))
    boxes = [
        [int(o.findtext(f"bndbox/{t}") or 0) for t in ("xmin", "ymin", "xmax", "ymax")]
        for o in root.iter("object")
    ]
    assert boxes == [[1, 1, 10, 5], [11, 4, 16, 4], [1, 1, 1, 1]]
    (record,) = voc.import_(io.BytesIO(out.getvalue()), CLASSES, ItemIndex([item])).records
    assert [r["geometry"] for r in record.regions] == [
        {"x": 0, "y": 0, "width": 10, "height": 5},
        {"x": 10, "y": 3, "width": 6, "height": 1},
        {"x": 0, "y": 0, "width": 1, "height": 1},
    ]


# --- files on disk ---------------------------------------------------------------------------


def test_the_zip_extracts_to_a_voc_layout(tmp_path: Path) -> None:
    items = [
        ExportItem(
            ItemInfo(1, "street/cam1.jpg", "image", 640, 480),
            with_ids(
                [
                    box(
                        "car",
                        10,
                        20,
                        30,
                        40,
                        pose="Left",
                        truncated=True,
                        difficult=False,
                        occluded=True,
                        make="bmw",
                        doors=4,
                        speed=12.5,
                        tags=["parked"],
                        plate="B & <K>",
                    ),
                    box("dog", 1, 2, 3, 4, difficult=True),
                ]
            ),
        ),
        ExportItem(ItemInfo(2, "street/cam1.png", "image", 10, 10), []),  # the same stem
        ExportItem(ItemInfo(3, "nosize.jpg", "image"), []),
    ]
    data = export_zip(items)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "Annotations/nosize.xml",
        "Annotations/street/cam1.png.xml",
        "Annotations/street/cam1.xml",
        "ImageSets/Main/default.txt",
    ]
    assert (tmp_path / "ImageSets/Main/default.txt").read_text() == "street/cam1\nstreet/cam1.png\nnosize\n"
    root = SafeET.parse(tmp_path / "Annotations/street/cam1.xml").getroot()
    assert root.tag == "annotation"
    assert [child.tag for child in root] == ["folder", "filename", "size", "segmented", "object", "object"]
    assert root.findtext("filename") == "street/cam1.jpg"
    assert [root.findtext(f"size/{t}") for t in ("width", "height", "depth")] == ["640", "480", "3"]
    car, dog = root.findall("object")
    assert [child.tag for child in car] == [
        "name",
        "pose",
        "truncated",
        "difficult",
        "occluded",
        "bndbox",
        "attributes",
    ]
    assert [car.findtext(t) for t in ("name", "pose", "truncated", "difficult", "occluded")] == [
        "car",
        "Left",
        "1",
        "0",
        "1",
    ]
    assert [car.findtext(f"bndbox/{t}") for t in ("xmin", "ymin", "xmax", "ymax")] == ["11", "21", "40", "60"]
    assert [(a.findtext("name"), a.findtext("value")) for a in car.findall("attributes/attribute")] == [
        ("make", "bmw"),
        ("doors", "4"),
        ("speed", "12.5"),
        ("tags", '["parked"]'),
        ("plate", "B & <K>"),
    ]
    assert [child.tag for child in dog] == ["name", "pose", "truncated", "difficult", "bndbox"]
    assert dog.findtext("difficult") == "1" and dog.findtext("pose") == "Unspecified"
    empty = SafeET.parse(tmp_path / "Annotations/nosize.xml").getroot()
    assert [empty.findtext(f"size/{t}") for t in ("width", "height")] == ["0", "0"] and not empty.findall(
        "object"
    )
    result = voc.import_(io.BytesIO(data), CLASSES, ItemIndex(e.item for e in items))
    assert result.errors == [] and [(r.item, r.regions) for r in result.records] == [
        (e.item, e.regions) for e in items
    ]


# --- refused input ---------------------------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<annotation><filename>a.jpg</filename><object><name>&lol4;</name></object></annotation>
"""
EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<annotation><filename>a.jpg</filename><object><name>&secret;</name></object></annotation>
"""


def test_hostile_xml_is_refused_and_the_other_files_imported() -> None:
    a = ItemInfo(1, "a.jpg", "image", 100, 100)
    b = ItemInfo(2, "sub/b.jpg", "image", 100, 100)
    files = {
        "Annotations/laughs.xml": BILLION_LAUGHS,
        "Annotations/external.xml": EXTERNAL,
        "Annotations/a.xml": annotation(
            "a.jpg",
            obj(
                "car", 1, 1, 10, 10, "<truncated>1</truncated><difficult>0</difficult><occluded>0</occluded>"
            ),
            obj("cat", 1, 1, 10, 10),
            obj("person", 20, 1, 10, 10),
            obj("person", 1, "x", 10, 10),
            "<object><name>person</name></object>",
            "<object><bndbox/></object>",
            obj("person", 2.5, 3, 7.5, 4),
        ),
        "Annotations/sub/b.xml": annotation("", obj("dog", 5, 5, 5, 5)),  # matched by its path
        "Annotations/c.xml": annotation("c.jpg"),
        "Annotations/broken.xml": "<annotation><filename>a.jpg</annotation>",
        "Annotations/root.xml": "<html/>",
        "Annotations/../../evil.xml": annotation("a.jpg"),
        "ImageSets/Main/default.txt": "a\n",
    }
    result = voc.import_(io.BytesIO(make_zip(files)), CLASSES, ItemIndex([a, b]))
    assert [(e.where, e.code) for e in result.errors] == [
        ("Annotations/../../evil.xml", "malformed"),
        ("Annotations/laughs.xml", "malformed"),
        ("Annotations/external.xml", "malformed"),
        ("Annotations/a.xml object[1]", "unknown_class"),
        ("Annotations/a.xml object[2]", "invalid_geometry"),
        ("Annotations/a.xml object[3]", "malformed"),
        ("Annotations/a.xml object[4]", "malformed"),
        ("Annotations/a.xml object[5]", "malformed"),
        ("Annotations/c.xml", "unmatched_item"),
        ("Annotations/broken.xml", "malformed"),
        ("Annotations/root.xml", "malformed"),
    ]
    assert "DTD" in result.errors[1].message and "'cat' is not a class" in result.errors[3].message
    first, second = result.records
    assert (first.item, first.where) == (a, "Annotations/a.xml")
    assert first.regions == [
        {
            "id": "r1",
            "type": "bbox",
            "label": "car",
            "attributes": {"truncated": True, "difficult": False, "occluded": False},
            "geometry": {"x": 0, "y": 0, "width": 10, "height": 10},
        },
        {
            "id": "r2",
            "type": "bbox",
            "label": "person",
            "attributes": {},
            "geometry": {"x": 1.5, "y": 2, "width": 6.0, "height": 2},
        },
    ]
    assert second.item == b and second.regions[0]["geometry"] == {"x": 4, "y": 4, "width": 1, "height": 1}
    assert second.regions[0]["attributes"] == {}  # no <difficult> element


def test_a_single_xml_file_and_input_that_is_neither() -> None:
    item = ItemInfo(1, "a.jpg", "image", 10, 10)
    single = voc.import_(
        io.BytesIO(annotation("a.jpg", obj("car", 1, 1, 2, 2), obj("cow", 1, 1, 2, 2)).encode()),
        CLASSES,
        ItemIndex([item]),
    )
    assert [(e.where, e.code) for e in single.errors] == [("object[1]", "unknown_class")]
    no_boxes = [LabelClass("car", ("polygon",))]
    refused = voc.import_(
        io.BytesIO(annotation("a.jpg", obj("car", 1, 1, 2, 2)).encode()), no_boxes, ItemIndex([item])
    )
    assert [(e.where, e.code) for e in refused.errors] == [("object[0]", "unsupported")]
    assert single.records[0].where == "file" and len(single.records[0].regions) == 1
    laughs = voc.import_(io.BytesIO(BILLION_LAUGHS.encode()), CLASSES, ItemIndex([item]))
    assert [(e.where, e.code) for e in laughs.errors] == [("file", "malformed")] and laughs.records == []
    assert voc.import_(io.BytesIO(b"{}"), CLASSES, ItemIndex([item])).errors == [
        RecordError("file", "malformed", "neither a VOC XML file nor a zip archive")
    ]
    assert [
        (e.where, e.code)
        for e in voc.import_(io.BytesIO(make_zip({"a.txt": ""})), CLASSES, ItemIndex([])).errors
    ] == [("archive", "malformed")]


def test_other_attribute_values_are_typed_back_from_text() -> None:
    item = ItemInfo(1, "a.jpg", "image", 10, 10)
    values = [
        ("make", "bmw"),
        ("doors", "3"),
        ("speed", "2.5e3"),
        ("tags", '["a", "b"]'),
        ("plate", "[not json"),
        ("occluded", "true"),
        ("colour", "red"),
    ]
    extra = (
        "<attributes>"
        + "".join(f"<attribute><name>{n}</name><value>{v}</value></attribute>" for n, v in values)
        + "</attributes><pose>Unspecified</pose>"
    )
    data = annotation("a.jpg", obj("car", 1, 1, 2, 2, extra)).encode()
    (record,) = voc.import_(io.BytesIO(data), CLASSES, ItemIndex([item])).records
    assert record.regions[0]["attributes"] == {
        "make": "bmw",
        "doors": 3,
        "speed": 2500.0,
        "tags": ["a", "b"],
        "plate": "[not json",
        "occluded": True,
    }


# --- streaming -------------------------------------------------------------------------------


def _many(count: int) -> Iterator[ExportItem]:
    for i in range(count):
        yield ExportItem(
            ItemInfo(i + 1, f"images/{i:06d}.jpg", "image", 640, 480), [box("person", i % 600, 3, 20, 30)]
        )


class Sink(io.RawIOBase):
    def __init__(self) -> None:
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.size += len(data)
        return len(data)


def test_twenty_thousand_items_stream_to_an_unseekable_output() -> None:
    sink = Sink()
    started = time.perf_counter()
    voc.export(_many(20_000), CLASSES, cast(IO[bytes], sink))
    assert time.perf_counter() - started < 5
    assert sink.size > 20_000 * 100
