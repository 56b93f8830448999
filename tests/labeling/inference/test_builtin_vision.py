"""The built-in OpenCV detectors on real photographs: scikit-image's and Matplotlib's sample images.

No database and no network. The detectors load once per module; OpenCV runs on one thread, as in
a worker process.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image, ImageDraw, ImageFilter
from skimage import data

from labeling.inference.base import REGISTRY, ModelInput, ModelOutput, Predictor
from labeling.inference.builtin import vision
from labeling.regions import ItemFacts, parse_schema, validate_regions

SCHEMA = parse_schema(
    {
        "classes": [
            {"name": "face", "color": "#ff0000", "tools": ["bbox"]},
            {"name": "person", "color": "#00ff00", "tools": ["bbox"]},
            {"name": "text_line", "color": "#0000ff", "tools": ["polygon"]},
            {"name": "word", "color": "#ffff00", "tools": ["bbox"]},
            {"name": "text", "color": "#00ffff", "tools": ["transcription"]},
        ]
    }
)


pytestmark = pytest.mark.usefixtures("one_opencv_thread")


@pytest.fixture(scope="module")
def faces() -> Predictor:
    return REGISTRY["opencv-haar-faces"].load({})


@pytest.fixture(scope="module")
def people() -> Predictor:
    return REGISTRY["opencv-hog-people"].load({})


def encode(image: Image.Image | np.ndarray, kind: str = "JPEG", **options: Any) -> bytes:
    picture = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    picture.save(buffer, kind, **options)
    return buffer.getvalue()


def image_item(key: str, content: bytes) -> ModelInput:
    """An item as the pre-label job hands it over, with the probe's facts of the upright image."""
    try:
        with Image.open(io.BytesIO(content)) as image:
            width, height = image.size
            if image.getexif().get(0x0112) in {5, 6, 7, 8}:  # EXIF Orientation: shown sideways
                width, height = height, width
        meta = {"width": width, "height": height}
    except OSError:
        meta = {}
    return ModelInput(key=key, modality="image", media_type="image/jpeg", meta=meta, read=lambda: content)


def predict_valid(model: Predictor, items: list[ModelInput]) -> list[ModelOutput]:
    """The model's outputs, each region list checked by Loupe's own validator."""
    outputs = model.predict(items)
    assert len(outputs) == len(items)
    for item, output in zip(items, outputs, strict=True):
        if output.error is None:
            facts = ItemFacts.from_item("image", item.meta)
            assert validate_regions(output.regions, SCHEMA, facts, prediction=True) is not None
    return outputs


def box_contains(geometry: dict[str, float], x: float, y: float) -> bool:
    return (
        geometry["x"] <= x <= geometry["x"] + geometry["width"]
        and geometry["y"] <= y <= geometry["y"] + geometry["height"]
    )


def hopper_jpeg() -> bytes:
    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()


# -- faces ---------------------------------------------------------------------------------------


def test_it_finds_the_one_face_of_the_astronaut(faces: Predictor) -> None:
    [output] = predict_valid(faces, [image_item("astronaut", encode(data.astronaut(), quality=90))])

    assert output.error is None
    [face] = output.regions
    assert face["type"] == "bbox" and face["label"] == "face"
    # Eileen Collins' face spans about x 175-270, y 65-160 of the 512 x 512 picture.
    assert box_contains(face["geometry"], 220, 110)
    assert 60 <= face["geometry"]["width"] <= 140
    assert 0.5 < face["score"] <= 1


def test_it_finds_the_one_face_of_grace_hopper(faces: Predictor) -> None:
    [output] = predict_valid(faces, [image_item("hopper", hopper_jpeg())])

    [face] = output.regions
    # Her face fills about x 160-370, y 110-330 of the 512 x 600 portrait.
    assert box_contains(face["geometry"], 265, 215)
    assert 150 <= face["geometry"]["width"] <= 300
    assert 0 < face["score"] <= 1


def test_photos_without_people_give_no_faces(faces: Predictor) -> None:
    photos = {"coffee": data.coffee(), "chelsea": data.chelsea(), "rocket": data.rocket()}
    items = [image_item(name, encode(pixels, quality=90)) for name, pixels in photos.items()]

    outputs = predict_valid(faces, items)

    assert [output.regions for output in outputs] == [[], [], []]


def test_boxes_are_in_the_upright_image_when_exif_says_the_photo_is_turned(faces: Predictor) -> None:
    upright = Image.fromarray(data.astronaut())
    # Stored turned a quarter counter-clockwise, with Orientation 6 telling viewers to turn it back
    # clockwise: what a phone held upright writes.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = image_item("turned", encode(stored, exif=exif.tobytes(), quality=90))
    plain = image_item("plain", encode(upright, quality=90))

    turned_output, plain_output = predict_valid(faces, [turned, plain])

    [face] = turned_output.regions
    [expected] = plain_output.regions
    for key in ("x", "y", "width", "height"):
        assert face["geometry"][key] == pytest.approx(expected["geometry"][key], abs=4)
    # Read as stored, the face lies on its side and the cascade would not find it.
    sideways = image_item("sideways", encode(stored, quality=90))
    assert predict_valid(faces, [sideways])[0].regions == []


def test_a_large_photo_is_searched_reduced_and_its_boxes_come_back_full_size(faces: Predictor) -> None:
    large = Image.fromarray(data.astronaut()).resize((2048, 2048), Image.Resampling.BICUBIC)

    [output] = predict_valid(faces, [image_item("large", encode(large, quality=90))])

    # Searched at 1280 px (max_side), reported in the 2048 px image. Enlarging the photo 4x made
    # its texture blocky enough for a couple of small, low-scored false faces: the face ranks first.
    face, *others = output.regions
    assert box_contains(face["geometry"], 4 * 220, 4 * 110)
    assert 4 * 60 <= face["geometry"]["width"] <= 4 * 140
    assert all(other["score"] < face["score"] and other["geometry"]["width"] < 150 for other in others)


def test_a_corrupt_image_fails_alone_while_the_rest_of_the_batch_succeeds(faces: Predictor) -> None:
    astronaut = encode(data.astronaut(), quality=90)
    items = [
        image_item("astronaut", astronaut),
        image_item("truncated", astronaut[: len(astronaut) // 2]),
        image_item("not-an-image", b"%PDF-1.7 this is no picture"),
        image_item("hopper", hopper_jpeg()),
    ]

    outputs = predict_valid(faces, items)

    assert [output.error is None for output in outputs] == [True, False, False, True]
    assert outputs[1].error and outputs[1].regions == []
    assert outputs[2].error and outputs[2].regions == []
    assert len(outputs[0].regions) == 1 and len(outputs[3].regions) == 1


def test_an_image_of_too_many_pixels_is_refused_before_decoding(faces: Predictor) -> None:
    # 100 megapixels, over Pillow's limit of 89.5: 12 kB of PNG that would take 100 MB as grey.
    bomb = encode(Image.new("1", (10_000, 10_000)), "PNG")

    item = ModelInput("bomb", "image", "image/png", {"width": 10_000, "height": 10_000}, lambda: bomb)

    [output] = faces.predict([item])

    assert output.error == "The image is too large to decode safely."


def test_items_that_are_not_images_get_an_error(faces: Predictor) -> None:
    text = ModelInput(key="t", modality="text", media_type="text/plain", meta={}, read=lambda: b"hello")

    [output] = faces.predict([text])

    assert output.error is not None and "image" in output.error


def test_transparent_and_grey_images_decode_upright() -> None:
    rgba = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle([10, 10, 20, 20], fill=(0, 0, 0, 255))
    sixteen_bit = Image.fromarray(np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50)

    flat = vision.decode_upright(image_item("rgba", encode(rgba, "PNG")), mode="L")
    grey = vision.decode_upright(image_item("16", encode(sixteen_bit, "PNG")), mode="RGB")

    assert flat.pixels.shape == (30, 40) and (flat.width, flat.height) == (40, 30)
    assert flat.pixels[0, 0] == 255 and flat.pixels[15, 15] == 0  # transparency is white
    assert grey.pixels.shape == (30, 40, 3) and grey.pixels.dtype == np.uint8


def test_bad_parameters_are_refused_when_loading() -> None:
    with pytest.raises(ValueError, match="min_neighbors"):
        REGISTRY["opencv-haar-faces"].load({"min_neighbors": -1})
    with pytest.raises(ValueError, match="scale"):
        REGISTRY["opencv-hog-people"].load({"scale": 1.0})


# -- people --------------------------------------------------------------------------------------


def draw_figure(draw: ImageDraw.ImageDraw, centre: float, top: float, height: float, fill: Any) -> None:
    """A standing person's silhouette, `height` px tall, about 8 heads high as adults are."""
    u = height / 8
    draw.ellipse([centre - 0.4 * u, top, centre + 0.4 * u, top + u], fill=fill)
    draw.rectangle([centre - 0.15 * u, top + 0.9 * u, centre + 0.15 * u, top + 1.25 * u], fill=fill)
    shoulders, hips = top + 1.3 * u, top + 4 * u
    draw.polygon(
        [
            (centre - u, shoulders),
            (centre + u, shoulders),
            (centre + 0.75 * u, hips),
            (centre - 0.75 * u, hips),
        ],
        fill=fill,
    )
    for side in (-1, 1):
        arm = [(1.0, 1.3), (1.35, 1.6), (1.25, 4.4), (0.95, 4.4), (0.85, 1.9)]
        leg = [(0.75, 3.9), (0.05, 3.9), (0.15, 8.0), (0.6, 8.0)]
        for limb in (arm, leg):
            draw.polygon([(centre + side * dx * u, top + dy * u) for dx, dy in limb], fill=fill)


def test_it_finds_each_person_standing_in_a_photo_once(people: Predictor) -> None:
    """No photograph of a whole standing person ships with the installed packages (scikit-image's
    and Matplotlib's people are busts), so this one is composed: two human silhouettes, a dark one
    200 px tall and a light one 150 px tall, drawn into scikit-image's real photograph of a rocket
    on its launch pad at dusk, whose towers and rocket are the upright clutter HOG mistakes for
    people."""
    scene = Image.fromarray(data.rocket()).resize((640, 480), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(scene)
    draw_figure(draw, 180, 120, 200, (30, 30, 40))
    draw_figure(draw, 460, 200, 150, (235, 235, 225))
    scene = scene.filter(ImageFilter.GaussianBlur(1.0))

    [output] = predict_valid(people, [image_item("scene", encode(scene, quality=90))])

    confident = [region for region in output.regions if region["score"] >= 0.5]
    assert len(confident) == 2
    for centre_x, top, height in ((180, 120, 200), (460, 200, 150)):
        covering = [r for r in output.regions if box_contains(r["geometry"], centre_x, top + height / 2)]
        assert len(covering) == 1  # non-maximum suppression left one box per person
        box = covering[0]["geometry"]
        assert box["y"] <= top + 5 and box["y"] + box["height"] >= top + height - 5
        assert covering[0]["label"] == "person" and covering[0]["score"] >= 0.5


def test_photos_without_people_give_no_people(people: Predictor) -> None:
    photos = {"coffee": data.coffee(), "chelsea": data.chelsea(), "coins": data.coins(), "moon": data.moon()}
    items = [image_item(name, encode(pixels, quality=90)) for name, pixels in photos.items()]

    outputs = predict_valid(people, items)

    assert [output.regions for output in outputs] == [[], [], [], []]


def test_an_image_smaller_than_the_detection_window_gives_no_people(people: Predictor) -> None:
    [output] = predict_valid(people, [image_item("tiny", encode(np.zeros((40, 30, 3), np.uint8), "PNG"))])

    assert output.error is None and output.regions == []


# -- registration --------------------------------------------------------------------------------


def test_both_detectors_are_registered_as_image_detection_models() -> None:
    for name, label in (("opencv-haar-faces", "face"), ("opencv-hog-people", "person")):
        model = REGISTRY[name]
        assert (model.task_type, model.modalities, model.outputs) == ("detection", ("image",), ("bbox",))
        assert model.labels == (label,) and model.extra == "vision"
    assert REGISTRY["opencv-hog-people"].params["win_stride"] == 8


def test_importing_the_module_does_not_import_opencv() -> None:
    code = "import sys, labeling.inference.builtin.vision; print('cv2' in sys.modules)"
    root = Path(__file__).resolve().parents[3]

    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "False"
