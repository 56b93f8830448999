"""Feature vectors of items, for the linear classifiers Loupe fits: the models trained on a release
(labeling.training) and label-error detection (quality). One place, so a model reads at
prediction time exactly the features it was trained on.

- `minilm` (text, 384 numbers): all-MiniLM-L6-v2 sentence embeddings of the first 4,000
  characters (the `embeddings` extra);
- `pixels` (image, 256): the picture as 16 x 16 grayscale pixels (area-averaged), standardized;
- `hog` (image, 324): histograms of oriented gradients of the picture at 32 x 32 grayscale;
- `pixels+hog` (image, 580): both, side by side.

No pretrained image model ships inside a PyPI wheel Loupe can rely on offline, so the image
features are computed from the pixels alone. They separate classes that differ in shape and
layout (digits, icons, symbols, documents by layout) and will not tell apart classes that differ
in texture, colour or fine detail (dog breeds, defects, species): colour is dropped, and 32 pixels a
side keep only the coarse shape. `pixels` expects the object centred and filling the picture; `hog`
keeps where edges run, not exactly where they are, so it tolerates shifts of a few pixels (8 x 8
cells). Measured with 5-fold cross-validation of the `image-logreg` recipe on scikit-learn's 1,797
digits (docs/training.md): centred, 0.969 accuracy on `pixels`, 0.971 on `hog`, 0.985 on both;
each digit drawn at a random place in a 12 x 12 canvas, 0.368, 0.756 and 0.782.

Plain code with no Django: bytes and texts in, float32 arrays out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from storage.media.images import image_gray

MAX_TEXT_CHARS = 4000
PIXELS = 16  # side of the `pixels` picture
HOG_SIDE, HOG_CELL, HOG_BINS = 32, 8, 9  # picture side, cell side (pixels), orientation bins

# Feature kind → the modality it reads.
FEATURE_KINDS: dict[str, str] = {"minilm": "text", "pixels": "image", "hog": "image", "pixels+hog": "image"}
IMAGE_FEATURES = ("pixels", "hog", "pixels+hog")


class FeaturesUnavailable(RuntimeError):
    """The features cannot be computed for these items (a modality no feature kind reads)."""


def dimensions(kind: str) -> int:
    """How many numbers a feature vector of `kind` has."""
    cells = HOG_SIDE // HOG_CELL
    hog = (cells - 1) ** 2 * 4 * HOG_BINS
    return {"minilm": 384, "pixels": PIXELS * PIXELS, "hog": hog, "pixels+hog": PIXELS * PIXELS + hog}[kind]


def text_features(texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
    """MiniLM embeddings (n by 384, unit length) of the texts' first MAX_TEXT_CHARS characters.

    Raises ModelUnavailable, naming the `embeddings` extra, when it is not installed."""
    from labeling.inference.builtin.embeddings import embed

    if not texts:
        return np.zeros((0, dimensions("minilm")), dtype=np.float32)
    return embed([text[:MAX_TEXT_CHARS] for text in texts], batch_size=batch_size)


def image_vector(data: bytes, kind: str) -> np.ndarray:
    """The features of one encoded image (PNG, JPEG…). Raises ProbeError (storage.media) for bytes
    that are not a decodable image or would be a decompression bomb."""
    if kind == "pixels":
        return pixel_vector(image_gray(data, size=PIXELS))
    if kind == "hog":
        return hog_vector(image_gray(data, size=HOG_SIDE))
    if kind == "pixels+hog":
        return np.concatenate([image_vector(data, "pixels"), image_vector(data, "hog")])
    raise FeaturesUnavailable(f"{kind!r} is not a kind of image features ({', '.join(IMAGE_FEATURES)}).")


def image_features(contents: Sequence[bytes], kind: str = "pixels") -> np.ndarray:
    """One row per encoded image (see `image_vector`)."""
    if not contents:
        return np.zeros((0, dimensions(kind)), dtype=np.float32)
    return np.stack([image_vector(data, kind) for data in contents])


def pixel_vector(gray: np.ndarray) -> np.ndarray:
    """A grayscale picture as one vector, centred and scaled to unit variance so that exposure and
    contrast do not count (a picture of one flat colour becomes all zeros)."""
    pixels = np.asarray(gray, dtype=np.float64)
    pixels = pixels - pixels.mean()
    spread = pixels.std()
    return np.asarray((pixels / spread if spread > 1e-12 else pixels * 0.0).ravel(), dtype=np.float32)


def hog_vector(gray: np.ndarray, *, cell: int = HOG_CELL, bins: int = HOG_BINS) -> np.ndarray:
    """Histograms of oriented gradients (Dalal and Triggs) of a grayscale picture, computed as
    scikit-image's `hog(orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
    block_norm="L2-Hys")` computes them (the tests compare the two).

    Gradients by central differences; each pixel adds its gradient magnitude to the orientation
    bin (of `bins` over 0-180 degrees, unsigned) of its `cell` x `cell` cell; blocks of 2 x 2
    cells, overlapping by one cell, are normalized with L2-Hys (L2, clipped at 0.2, L2 again) so
    that lighting and contrast count little.
    """
    pixels = np.asarray(gray, dtype=np.float64)
    rows, cols = pixels.shape
    n_rows, n_cols = rows // cell, cols // cell
    if n_rows < 2 or n_cols < 2:
        raise ValueError(f"A {rows} x {cols} picture has fewer than 2 x 2 cells of {cell} pixels.")
    gy, gx = np.zeros_like(pixels), np.zeros_like(pixels)
    gy[1:-1, :] = pixels[2:, :] - pixels[:-2, :]
    gx[:, 1:-1] = pixels[:, 2:] - pixels[:, :-2]
    magnitude = np.hypot(gx, gy)[: n_rows * cell, : n_cols * cell]
    orientation = (np.rad2deg(np.arctan2(gy, gx)) % 180.0)[: n_rows * cell, : n_cols * cell]
    which = np.minimum((orientation // (180.0 / bins)).astype(np.int64), bins - 1)
    cell_row = (np.arange(n_rows * cell) // cell)[:, None].repeat(n_cols * cell, axis=1)
    cell_col = (np.arange(n_cols * cell) // cell)[None, :].repeat(n_rows * cell, axis=0)
    histograms = np.zeros((n_rows, n_cols, bins))
    np.add.at(histograms, (cell_row, cell_col, which), magnitude)
    histograms /= cell * cell
    eps = 1e-5
    blocks = []
    for i in range(n_rows - 1):
        for j in range(n_cols - 1):
            block = histograms[i : i + 2, j : j + 2].ravel()
            block = np.minimum(block / np.sqrt(np.sum(block**2) + eps**2), 0.2)
            blocks.append(block / np.sqrt(np.sum(block**2) + eps**2))
    return np.asarray(np.concatenate(blocks), dtype=np.float32)
