"""Built-in detectors that run on the worker's CPU with OpenCV: Haar-cascade faces and HOG people.

Both are classic detectors whose weights ship inside opencv-python-headless (the cascade XML in
`cv2.data`, the people SVM compiled into the library), so they need no download, no GPU and a few
hundred milliseconds per photo. They are rough: pre-labels for a person to correct. OpenCV 5
removed both, hence the `<5` pin of the `vision` extra.

Every image is decoded with Pillow and turned upright by its EXIF orientation first (see
`decode_upright`, which the OCR models share), so boxes are in pixels of the image as shown, as
docs/annotations.md wants. A predictor holds one loaded detector and is used by one thread at a
time; the pre-label job loads one per worker thread.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps

from labeling.inference.base import (
    BuiltinModel,
    ModelInput,
    ModelOutput,
    ModelUnavailable,
    PredictionFailed,
    float_param,
    int_param,
    predict_each,
    region_id,
    register,
)
from storage.media.base import ProbeError, fit_within
from storage.media.images import exif_orientation, pillow_errors, to_8bit

INSTALL_HINT = "install 'loupe[vision]' (opencv-python-headless>=4.8,<5)"

# Only these Pillow plugins may open items: Pillow would otherwise try every format it knows,
# including EPS, which runs Ghostscript (the same list storage/media/images.py probes with).
_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")
_SIDEWAYS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height

# Haar: detectMultiScale3 reports, per face, the largest sum of the cascade's last stage over the
# windows merged into it (the stage passes at -2.99 for the frontal-face cascade). That sum is a
# margin, not a probability: squashed through a logistic centred at 3.5 with spread 1.5. Measured
# on scikit-image's LFW subset (100 faces, upscaled 4x) and on its 20 face-free sample images: at
# the default parameters 97 faces are found with sums 1.5-12.1 (median 7.5, so score 0.94), and
# the 8 false positives (coins and cells) have sums 0.15-3.5 (score 0.1-0.5).
HAAR_SUM_CENTRE = 3.5
HAAR_SUM_SPREAD = 1.5
# HOG: the linear SVM's margin (0 is its decision boundary, what hit_threshold 0 keeps), squashed
# through a logistic centred at 1.0 with spread 0.5. No photograph of a standing person ships
# offline to calibrate it: false positives on scikit-image's sample images have margins 0.2-1.5
# (median 0.7, score 0.35) and drawn human silhouettes 1.5-2.4 (score 0.7-0.95).
HOG_MARGIN_CENTRE = 1.0
HOG_MARGIN_SPREAD = 0.5
HOG_WINDOW = (64, 128)  # the default people detector's window: smaller people are not found


@dataclass(frozen=True)
class UprightImage:
    """An item's pixels as shown upright, possibly reduced; regions are in the full image's pixels."""

    pixels: np.ndarray  # uint8, height x width (grey) or height x width x 3 (RGB), C-contiguous
    width: int  # of the full-size upright image: what region coordinates refer to
    height: int

    @property
    def scale(self) -> tuple[float, float]:
        """Multipliers from `pixels` coordinates to full-image coordinates (x, y)."""
        return self.width / self.pixels.shape[1], self.height / self.pixels.shape[0]


def decode_upright(
    item: ModelInput, *, mode: Literal["L", "RGB"], max_side: int | None = None
) -> UprightImage:
    """The item's image, turned upright by its EXIF orientation, as 8-bit grey ("L") or RGB.

    Transparency is flattened onto white (text and faces on a transparent background stay
    visible); a GIF or multi-page TIFF gives its first frame. With `max_side`, the longer side is
    reduced to it, JPEGs by decoding at 1/2, 1/4 or 1/8 scale (Image.draft) so a 12-megapixel photo
    is never decoded whole. Pillow's decompression-bomb limit stays on (storage.media.images makes
    its warning an error). Raises PredictionFailed when the item is not an image that decodes.
    """
    if item.modality != "image":
        raise PredictionFailed(f"This model reads images, not {item.modality} items.")
    data = item.read()
    try:
        with pillow_errors(), Image.open(io.BytesIO(data), formats=_formats()) as image:
            width, height = image.size
            if exif_orientation(image) in _SIDEWAYS:
                width, height = height, width
            if max_side is not None:
                image.draft(mode, fit_within(*image.size, max_side))
            shown = _flatten(to_8bit(ImageOps.exif_transpose(image)), mode)
            if max_side is not None and max(shown.size) > max_side:
                # Bilinear in Pillow is antialiased when shrinking, and after draft() the shrink is
                # at most 2x.
                shown = shown.resize(fit_within(*shown.size, max_side), Image.Resampling.BILINEAR)
            pixels = np.array(shown, dtype=np.uint8)
    except ProbeError as exc:
        raise PredictionFailed(exc.message) from exc
    return UprightImage(pixels, width, height)


@cache
def _formats() -> tuple[str, ...]:
    Image.init()
    # Pillow raises KeyError for a format it lacks (AVIF came with Pillow 11.2 wheels).
    return tuple(name for name in _FORMATS if name in Image.OPEN)


def _flatten(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in {"RGBA", "LA"} or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image if image.mode == mode else image.convert(mode)


def squash(value: float, centre: float, spread: float) -> float:
    """A detector's raw margin mapped monotonically into [0, 1] (a logistic); not a probability."""
    exponent = -(value - centre) / spread
    return 0.0 if exponent > 700 else 1.0 / (1.0 + math.exp(exponent))


def clipped_bbox(
    x: float, y: float, width: float, height: float, image_width: int, image_height: int
) -> dict[str, float] | None:
    """A box cut to the image, in pixels rounded to 0.01; None when nothing is left."""
    left, top = max(0.0, float(x)), max(0.0, float(y))
    right, bottom = min(float(image_width), float(x + width)), min(float(image_height), float(y + height))
    box = {
        "x": round(left, 2),
        "y": round(top, 2),
        "width": round(right - left, 2),
        "height": round(bottom - top, 2),
    }
    if box["width"] <= 0 or box["height"] <= 0:
        return None
    # Rounding may push the far edge a hair past the image.
    box["width"] = min(box["width"], round(image_width - box["x"], 2))
    box["height"] = min(box["height"], round(image_height - box["y"], 2))
    return box


def bbox_regions(
    label: str, boxes: np.ndarray, scores: Sequence[float], image: UprightImage
) -> list[dict[str, Any]]:
    """Regions of boxes (x, y, width, height rows) found in `image.pixels`, best first, scaled to
    the full image and clipped to it."""
    scale_x, scale_y = image.scale
    regions: list[dict[str, Any]] = []
    for index in sorted(range(len(scores)), key=lambda index: -scores[index]):
        x, y, width, height = (float(value) for value in boxes[index])
        geometry = clipped_bbox(
            x * scale_x, y * scale_y, width * scale_x, height * scale_y, image.width, image.height
        )
        if geometry is None:
            continue
        regions.append(
            {
                "id": region_id(len(regions)),
                "type": "bbox",
                "label": label,
                "attributes": {},
                "geometry": geometry,
                "score": round(scores[index], 4),
            }
        )
    return regions


def _import_cv2() -> ModuleType:
    try:
        import cv2
    except ImportError as exc:
        raise ModelUnavailable(f"OpenCV is not installed: {INSTALL_HINT}.") from exc
    major = int(cv2.__version__.split(".")[0])
    if major >= 5:
        raise ModelUnavailable(
            f"OpenCV {cv2.__version__} has no Haar cascades or HOG people detector: {INSTALL_HINT}."
        )
    return cv2


# -- faces ---------------------------------------------------------------------------------------

HAAR_DEFAULTS: dict[str, Any] = {"scale_factor": 1.1, "min_neighbors": 5, "min_size": 24, "max_side": 1280}


class HaarFaces:
    """OpenCV's frontal-face Haar cascade. Not thread-safe: one predictor per thread."""

    def __init__(self, cv2: ModuleType, params: dict[str, Any]) -> None:
        self._cv2 = cv2
        self.scale_factor = float_param(params, "scale_factor", 1.0, 2.0, low_open=True)
        self.min_neighbors = int_param(params, "min_neighbors", 0, 100)
        self.min_size = int_param(params, "min_size", 1)
        self.max_side = int_param(params, "max_side", 64)
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise ModelUnavailable(f"OpenCV could not load its face cascade {path}: {INSTALL_HINT}.")

    def predict(self, batch: Sequence[ModelInput]) -> list[ModelOutput]:
        return predict_each(batch, self._predict_one)

    def _predict_one(self, item: ModelInput) -> ModelOutput:
        image = decode_upright(item, mode="L", max_side=self.max_side)
        # min_size is in pixels of the full image; the cascade's own window is 24 px anyway.
        side = max(1, round(self.min_size / max(image.scale)))
        boxes, _, sums = self._cascade.detectMultiScale3(
            image.pixels,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(side, side),
            outputRejectLevels=True,
        )
        found = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = [
            squash(float(value), HAAR_SUM_CENTRE, HAAR_SUM_SPREAD) for value in np.asarray(sums).ravel()
        ]
        return ModelOutput(regions=bbox_regions("face", found, scores, image))


def load_haar_faces(params: dict[str, Any]) -> HaarFaces:
    return HaarFaces(_import_cv2(), {**HAAR_DEFAULTS, **params})


register(
    BuiltinModel(
        name="opencv-haar-faces",
        title="Faces (OpenCV Haar cascade, frontal)",
        task_type="detection",
        modalities=("image",),
        outputs=("bbox",),
        labels=("face",),
        params=HAAR_DEFAULTS,
        extra="vision",
        load=load_haar_faces,
    )
)


# -- people --------------------------------------------------------------------------------------

HOG_DEFAULTS: dict[str, Any] = {
    "win_stride": 8,
    "scale": 1.05,
    "hit_threshold": 0.0,
    "nms_threshold": 0.4,
    "max_side": 1024,
}


class HogPeople:
    """OpenCV's HOG + linear SVM pedestrian detector (Dalal-Triggs, trained on upright people at
    least 64 x 128 px in the analysed image). Not thread-safe: one predictor per thread."""

    def __init__(self, cv2: ModuleType, params: dict[str, Any]) -> None:
        self._cv2 = cv2
        self.win_stride = int_param(params, "win_stride", 1, 64)
        self.scale = float_param(params, "scale", 1.0, 2.0, low_open=True)
        self.hit_threshold = float_param(params, "hit_threshold", -10.0, 10.0)
        self.nms_threshold = float_param(params, "nms_threshold", 0.0, 1.0, low_open=True)
        self.max_side = int_param(params, "max_side", max(HOG_WINDOW))
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def predict(self, batch: Sequence[ModelInput]) -> list[ModelOutput]:
        return predict_each(batch, self._predict_one)

    def _predict_one(self, item: ModelInput) -> ModelOutput:
        image = decode_upright(item, mode="RGB", max_side=self.max_side)
        height, width = image.pixels.shape[:2]
        if width < HOG_WINDOW[0] or height < HOG_WINDOW[1]:
            return ModelOutput()  # no window fits: nobody can be found
        stride = (self.win_stride, self.win_stride)
        boxes, margins = self._hog.detectMultiScale(
            image.pixels, hitThreshold=self.hit_threshold, winStride=stride, padding=(8, 8), scale=self.scale
        )
        found = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = [
            squash(float(value), HOG_MARGIN_CENTRE, HOG_MARGIN_SPREAD)
            for value in np.asarray(margins).ravel()
        ]
        if not scores:
            return ModelOutput()
        # detectMultiScale merges overlapping windows only roughly: a person often comes back as a
        # box plus a larger box around it. Keep the best of boxes that overlap by more than
        # nms_threshold (intersection over union).
        kept = np.asarray(
            self._cv2.dnn.NMSBoxes(found.tolist(), scores, 0.0, self.nms_threshold), dtype=np.intp
        )
        kept = kept.ravel()
        return ModelOutput(
            regions=bbox_regions("person", found[kept], [scores[int(index)] for index in kept], image)
        )


def load_hog_people(params: dict[str, Any]) -> HogPeople:
    return HogPeople(_import_cv2(), {**HOG_DEFAULTS, **params})


register(
    BuiltinModel(
        name="opencv-hog-people",
        title="People (OpenCV HOG pedestrian detector)",
        task_type="detection",
        modalities=("image",),
        outputs=("bbox",),
        labels=("person",),
        params=HOG_DEFAULTS,
        extra="vision",
        load=load_hog_people,
    )
)
