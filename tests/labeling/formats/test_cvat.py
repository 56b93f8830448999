"""CVAT for images XML 1.1: every shape, attributes, masks, refused XML and per-shape errors."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_util

from labeling.formats import cvat, get_format
from labeling.formats.base import ItemIndex, ItemInfo, LabelClass

CLASSES = [
    LabelClass(
        "car", tools=("bbox", "rotated_bbox", "polygon", "mask"), attributes=("occluded", "color", "doors")
    ),
    LabelClass("plate", tools=("bbox",), attributes=("number",)),
    LabelClass("traffic_line", tools=("polyline",)),
    LabelClass("wheel", tools=("keypoints",), keypoints=("fl", "fr", "rr", "rl")),
    LabelClass(
        "person", tools=("keypoints",), keypoints=("head", "left_hand", "right_hand"), edges=((0, 1), (0, 2))
    ),
    LabelClass("good_frame", tools=("classification",), attributes=("quality",)),
]
ITEMS = [
    ItemInfo(1, "frames/filename000.jpg", "image", width=1600, height=1200),
    ItemInfo(2, "frames/filename001.jpg", "image"),  # size not probed: the XML's is used
]

# As CVAT 2.x writes "CVAT for images 1.1" (docs.cvat.ai, XML annotation format).
SAMPLE = b"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>4</id>
      <name>segmentation</name>
      <size>2</size>
      <mode>annotation</mode>
      <overlap>0</overlap>
      <bugtracker></bugtracker>
      <created>2024-03-01 10:00:00.000000+00:00</created>
      <updated>2024-03-01 11:00:00.000000+00:00</updated>
      <subset>default</subset>
      <start_frame>0</start_frame>
      <stop_frame>1</stop_frame>
      <frame_filter></frame_filter>
      <segments>
        <segment>
          <id>4</id>
          <start>0</start>
          <stop>1</stop>
          <url>http://localhost:8080/api/jobs/4</url>
        </segment>
      </segments>
      <owner>
        <username>admin</username>
        <email></email>
      </owner>
      <assignee></assignee>
      <labels>
        <label>
          <name>car</name>
          <color>#fa3253</color>
          <type>any</type>
          <attributes>
            <attribute>
              <name>color</name>
              <mutable>False</mutable>
              <input_type>select</input_type>
              <default_value>red</default_value>
              <values>red
blue</values>
            </attribute>
            <attribute>
              <name>doors</name>
              <mutable>False</mutable>
              <input_type>number</input_type>
              <default_value>4</default_value>
              <values>2
5
1</values>
            </attribute>
          </attributes>
        </label>
        <label>
          <name>plate</name>
          <color>#33ddff</color>
          <type>rectangle</type>
          <attributes>
            <attribute>
              <name>number</name>
              <mutable>False</mutable>
              <input_type>text</input_type>
              <default_value></default_value>
              <values></values>
            </attribute>
          </attributes>
        </label>
      </labels>
    </task>
    <dumped>2024-03-01 11:05:00.000000+00:00</dumped>
  </meta>
  <image id="0" name="filename000.jpg" width="1600" height="1200">
    <box label="plate" source="manual" occluded="0"
        xtl="797.33" ytl="870.92" xbr="965.52" ybr="928.94" z_order="4">
      <attribute name="number">0042</attribute>
    </box>
    <box label="car" source="manual" occluded="1"
        xtl="100.00" ytl="200.00" xbr="300.00" ybr="260.00" rotation="30.00" z_order="0">
      <attribute name="color">blue</attribute>
      <attribute name="doors">4</attribute>
      <attribute name="not_in_schema">x</attribute>
    </box>
    <polygon label="car" source="manual" occluded="0"
        points="561.30,916.23;561.30,842.77;554.72,761.63;600.00,700.50" z_order="1">
      <attribute name="color">red</attribute>
      <attribute name="doors">2</attribute>
    </polygon>
    <polyline label="traffic_line" source="manual" occluded="0"
        points="462.10,0.00;126.80,1200.00" z_order="3">
    </polyline>
    <points label="wheel" source="manual" occluded="0"
        points="574.90,939.48;1170.16,907.90;1130.69,445.26;600.16,459.48" z_order="5">
    </points>
    <mask label="car" source="semi-auto" occluded="0"
        rle="3, 5, 7, 5" left="10" top="20" width="5" height="4" z_order="0">
      <attribute name="color">red</attribute>
      <attribute name="doors">5</attribute>
    </mask>
    <skeleton label="person" source="manual" z_order="0">
      <points label="head" source="manual" outside="0" occluded="0" points="50.00,40.00">
      </points>
      <points label="left_hand" source="manual" outside="0" occluded="1" points="30.00,80.00">
      </points>
      <points label="right_hand" source="manual" outside="1" occluded="0" points="70.00,80.00">
      </points>
    </skeleton>
    <tag label="good_frame" source="manual">
      <attribute name="quality">0.75</attribute>
    </tag>
  </image>
  <image id="1" name="filename001.jpg" width="640" height="480">
    <box label="car" source="auto" occluded="0" xtl="0.00" ytl="0.00" xbr="64.00" ybr="48.00" z_order="0">
      <attribute name="color">true</attribute>
    </box>
  </image>
  <image id="2" name="filename002.jpg" width="640" height="480">
  </image>
</annotations>
"""


def run_import(data: bytes, items: list[ItemInfo] = ITEMS) -> Any:
    return cvat.import_(io.BytesIO(data), CLASSES, ItemIndex(items))


def test_flags() -> None:
    assert get_format("cvat") is cvat
    assert cvat.can_import and not cvat.can_export and not hasattr(cvat, "export")


# pycocotools' decode (used here to check masks, not by the import) warns under NumPy 2.
DECODE_WARNING = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@DECODE_WARNING
def test_sample_imports_every_shape() -> None:
    result = run_import(SAMPLE)
    assert result.errors == []  # the unannotated image 2 is no record and no error
    first, second = result.records
    assert (first.item.id, first.where) == (1, "image[name=filename000.jpg]")
    by_type = [(r["type"], r["label"]) for r in first.regions]
    assert by_type == [
        ("bbox", "plate"),
        ("rotated_bbox", "car"),
        ("polygon", "car"),
        ("polyline", "traffic_line"),
        ("keypoints", "wheel"),
        ("mask", "car"),
        ("keypoints", "person"),
        ("classification", "good_frame"),
    ]
    assert [r["id"] for r in first.regions] == [f"r{n}" for n in range(1, 9)]
    plate, rotated, polygon, polyline, wheel, mask, skeleton, tag = first.regions

    assert plate["geometry"] == pytest.approx({"x": 797.33, "y": 870.92, "width": 168.19, "height": 58.02})
    assert plate["attributes"] == {"number": "0042"}  # leading zeros: not a number

    # CVAT rotates around the centre: centre, size and angle carry over.
    assert rotated["geometry"] == {"cx": 200.0, "cy": 230.0, "width": 200.0, "height": 60.0, "angle": 30.0}
    assert rotated["attributes"] == {"occluded": True, "color": "blue", "doors": 4}  # not_in_schema dropped

    assert polygon["geometry"]["points"][0] == [561.30, 916.23]
    assert polygon["geometry"]["holes"] == [] and len(polygon["geometry"]["points"]) == 4
    assert polygon["attributes"] == {"occluded": False, "color": "red", "doors": 2}
    assert polyline["geometry"] == {"points": [[462.10, 0.0], [126.80, 1200.0]]}
    assert wheel["geometry"]["points"] == [
        [574.90, 939.48, 2], [1170.16, 907.90, 2], [1130.69, 445.26, 2], [600.16, 459.48, 2]
    ]  # fmt: skip
    assert skeleton["geometry"]["points"] == [[50.0, 40.0, 2], [30.0, 80.0, 1], [0, 0, 0]]
    assert tag["geometry"] == {} and tag["attributes"] == {"quality": 0.75}

    # The mask: full-image COCO RLE whose area is the ones of CVAT's RLE (5 + 5), in the right place.
    rle = mask["geometry"]["rle"]
    assert rle["size"] == [1200, 1600] and isinstance(rle["counts"], str)
    decoded = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert decoded.shape == (1200, 1600)
    assert int(mask_util.area({"size": rle["size"], "counts": rle["counts"].encode()})) == 10 == decoded.sum()
    box = decoded[20:24, 10:15].reshape(-1)
    assert box.tolist() == [0, 0, 0] + [1] * 5 + [0] * 7 + [1] * 5
    assert mask["attributes"] == {"occluded": False, "color": "red", "doors": 5}

    assert second.item.id == 2 and second.regions[0]["attributes"] == {"occluded": False, "color": True}
    assert second.regions[0]["geometry"] == {"x": 0.0, "y": 0.0, "width": 64.0, "height": 48.0}


@DECODE_WARNING
def test_mask_uses_the_xml_size_when_the_item_has_none() -> None:
    xml = b"""<annotations><version>1.1</version>
  <image id="1" name="filename001.jpg" width="8" height="6">
    <mask label="car" source="manual" occluded="0"
        rle="0, 4, 4" left="6" top="2" width="2" height="4" z_order="0"/>
  </image></annotations>"""
    [record] = run_import(xml).records
    rle = record.regions[0]["geometry"]["rle"]
    decoded = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    expected = np.zeros((6, 8), dtype=np.uint8)
    expected[2:4, 6:8] = 1  # the first 4 pixels row-major: two rows of two
    assert rle["size"] == [6, 8] and (decoded == expected).all()


@pytest.mark.parametrize(
    "xml",
    [
        # Billion laughs: entities expanding exponentially.
        b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<annotations><image id="0" name="filename000.jpg" width="1600" height="1200">
<tag label="good_frame"><attribute name="quality">&lol4;</attribute></tag></image></annotations>""",
        # An external DTD.
        b"""<?xml version="1.0"?>
<!DOCTYPE annotations SYSTEM "http://attacker.example/evil.dtd">
<annotations><image id="0" name="filename000.jpg" width="1600" height="1200">
<tag label="good_frame"/></image></annotations>""",
        # An external entity.
        b"""<?xml version="1.0"?>
<!DOCTYPE annotations [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotations><image id="0" name="filename000.jpg" width="1600" height="1200">
<tag label="good_frame"><attribute name="quality">&xxe;</attribute></tag></image></annotations>""",
    ],
    ids=["billion-laughs", "external-dtd", "external-entity"],
)
def test_dtds_and_entities_are_refused(xml: bytes) -> None:
    result = run_import(xml)
    assert result.records == []
    assert [(e.where, e.code) for e in result.errors] == [("document", "malformed")]


def test_bad_shapes_are_reported_with_their_place_and_good_ones_kept() -> None:
    xml = b"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <image id="0" name="filename000.jpg" width="1600" height="1200">
    <box label="car" occluded="0" xtl="10" ytl="10" xbr="20" ybr="20" z_order="0"/>
    <box label="bus" occluded="0" xtl="10" ytl="10" xbr="20" ybr="20" z_order="0"/>
    <box label="car" occluded="0" xtl="30" ytl="10" xbr="20" ybr="20" z_order="0"/>
    <box label="car" occluded="0" xtl="abc" ytl="10" xbr="20" ybr="20" z_order="0"/>
    <polygon label="car" occluded="0" points="1,1;2,2" z_order="0"/>
    <polygon label="car" occluded="0" points="1,1;2;3,3" z_order="0"/>
    <points label="person" occluded="0" points="1,1;2,2" z_order="0"/>
    <mask label="car" occluded="0" rle="3, 5" left="0" top="0" width="5" height="4" z_order="0"/>
    <mask label="car" occluded="0" rle="0, 4" left="1598" top="0" width="4" height="1" z_order="0"/>
    <mask label="car" occluded="0" rle="20" left="0" top="0" width="5" height="4" z_order="0"/>
    <ellipse label="car" occluded="0" cx="5" cy="5" rx="2" ry="3" z_order="0"/>
    <tag label="good_frame" source="manual"/>
  </image>
  <image id="1" name="unknown.jpg" width="10" height="10">
    <tag label="good_frame"/>
  </image>
  <track id="3" label="car" source="manual">
    <box frame="0" keyframe="1" outside="0" occluded="0" xtl="1" ytl="1" xbr="2" ybr="2" z_order="0"/>
  </track>
  <image id="2" name="filename001.jpg" width="640" height="480">
    <tag label="good_frame"/>
  </image>
</annotations>"""
    result = run_import(xml)
    where = "image[name=filename000.jpg]"
    assert [(e.where, e.code) for e in result.errors] == [
        (f"{where} box[1]", "unknown_class"),
        (f"{where} box[2]", "invalid_geometry"),
        (f"{where} box[3]", "malformed"),
        (f"{where} polygon[0]", "invalid_geometry"),
        (f"{where} polygon[1]", "malformed"),
        (f"{where} points[0]", "unsupported"),
        (f"{where} mask[0]", "invalid_geometry"),  # the runs cover 8 of 20 pixels
        (f"{where} mask[1]", "invalid_geometry"),  # outside the image
        (f"{where} mask[2]", "invalid_geometry"),  # empty
        (f"{where} ellipse[0]", "unsupported"),
        ("image[name=unknown.jpg]", "unmatched_item"),
        ("track[id=3]", "unsupported"),
    ]
    assert [(r.where, [g["type"] for g in r.regions]) for r in result.records] == [
        (where, ["bbox", "classification"]),
        ("image[name=filename001.jpg]", ["classification"]),
    ]


def test_syntax_error_keeps_the_images_before_it() -> None:
    xml = b"""<annotations>
  <image id="0" name="filename000.jpg" width="1600" height="1200"><tag label="good_frame"/></image>
  <image id="1" name="filename001.jpg" width="640" height="480"><tag label="good_frame">
</annotations>"""
    result = run_import(xml)
    assert [r.item.id for r in result.records] == [1]
    assert [(e.where, e.code) for e in result.errors] == [("line 4", "malformed")]


def test_attribute_text_typing() -> None:
    assert cvat.typed("true") is True and cvat.typed("false") is False
    assert cvat.typed("12") == 12 and cvat.typed("-3") == -3 and cvat.typed("2.50") == 2.5
    assert cvat.typed("1e3") == 1000.0 and cvat.typed("True") == "True" and cvat.typed("nan") == "nan"
    assert cvat.typed("red car") == "red car" and cvat.typed("") == "" and cvat.typed("007") == "007"
    assert cvat.typed("0") == 0 and cvat.typed("0.5") == 0.5


def test_large_file_is_streamed() -> None:
    """Many images import one at a time: elements are cleared as the parse goes."""

    class Stream(io.RawIOBase):
        def __init__(self, count: int) -> None:
            self.parts = iter(
                [b"<annotations><version>1.1</version>"]
                + [
                    f'<image id="{n}" name="filename000.jpg" width="1600" height="1200">'
                    f'<box label="car" occluded="0" xtl="1" ytl="1" xbr="{2 + n}" ybr="2"/></image>'.encode()
                    for n in range(count)
                ]
                + [b"</annotations>"]
            )
            self.pending = b""

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            while not self.pending:
                nxt = next(self.parts, None)
                if nxt is None:
                    return 0
                self.pending = nxt
            n = min(len(buffer), len(self.pending))
            buffer[:n] = self.pending[:n]
            self.pending = self.pending[n:]
            return n

    result = cvat.import_(io.BufferedReader(Stream(3000)), CLASSES, ItemIndex(ITEMS))
    assert result.errors == [] and len(result.records) == 3000
    assert math.isclose(result.records[-1].regions[0]["geometry"]["width"], 3000.0)
