"""Images with Pillow: size facts from the header, thumbnails and perceptual hashes decoded small.

Speed is the point here, since a dataset is mostly small photos: nothing decodes the full image.
The probe reads headers only; the thumbnail asks the JPEG decoder for 1/2, 1/4 or 1/8 scale
(Image.draft: the IDCT runs at that size) and the hash asks for luma at ≥ 64 px, which libjpeg
decodes at 1/8 scale from the DCT coefficients. A full-size decode happens only for formats
without reduced decoding (PNG, GIF…).

The decompression-bomb limit is ours (ProbeLimits.max_image_pixels), checked on the header's
size before any pixel is decoded; Pillow's own process-wide check (Image.MAX_IMAGE_PIXELS) stays
on as a second net, and its warning is turned into the same refusal.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from storage.media.base import (
    DEFAULT_LIMITS,
    Probe,
    ProbeError,
    ProbeLimits,
    encode_webp,
    fit_within,
    refuse_if_too_many_pixels,
)

# Pillow's bomb warning is always an error in Loupe, in every thread: set once for the process
# (a catch_warnings() per call would save and restore global state that ingest threads share).
warnings.simplefilter("error", Image.DecompressionBombWarning)

# Only these plugins may open uploads: Pillow would otherwise try every format it knows,
# including EPS, which runs Ghostscript on the file. (The JPEG opener also opens MPO files.)
_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")

# What Pillow raises on damaged or truncated files (SyntaxError, IndexError and struct.error are
# real cases: a GIF with a damaged palette raises IndexError).
_PILLOW_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
)

# EXIF orientation → the transpose that shows the image upright (what ImageOps.exif_transpose does).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIDEWAYS = {5, 6, 7, 8}  # orientations that swap width and height

_PHASH_DECODE_SIDE = 64  # imagehash.phash looks at 32 x 32; twice that keeps its resize smooth
_PHASH_MAX_SIDE = 256  # formats without reduced decoding are shrunk to this before hashing
_SIGNED_64 = 1 << 63


def probe_image(path: Path, *, media_type: str, limits: ProbeLimits) -> Probe:
    with pillow_errors(), open_image(path, limits) as image:
        orientation = exif_orientation(image)
        width, height = image.size
        if orientation in _SIDEWAYS:
            width, height = height, width
        meta = {
            # A phone's MPO is a JPEG with extra preview or depth frames, not an animation.
            "format": "JPEG" if image.format == "MPO" else image.format,
            "width": width,
            "height": height,
            "exif_orientation": orientation,
            "mode": image.mode,
            "frames": 1 if image.format == "MPO" else getattr(image, "n_frames", 1),
        }
    return Probe("image", media_type, meta)


def image_thumbnail(path: Path, *, max_side: int, limits: ProbeLimits) -> bytes:
    with pillow_errors(), open_image(path, limits) as image:
        orientation = exif_orientation(image)
        image.draft(None, fit_within(*image.size, max_side))
        return encode_webp(thumbnail_upright(image, orientation=orientation, max_side=max_side))


def image_phash(path: Path, *, limits: ProbeLimits = DEFAULT_LIMITS) -> int:
    """The 64-bit perceptual hash (imagehash.phash) of the upright image, as a signed integer.

    Signed so it fits a PostgreSQL bigint; compare two with phash_distance. Re-encoding and
    resizing a photo moves a few bits; different photos differ in about half of them.
    """
    import imagehash  # imports scipy: only the workers that hash pay for it

    with pillow_errors(), open_image(path, limits) as image:
        orientation = exif_orientation(image)
        image.draft("L", (_PHASH_DECODE_SIDE, _PHASH_DECODE_SIDE))
        small = thumbnail_upright(image, orientation=orientation, max_side=_PHASH_MAX_SIDE)
        bits = imagehash.phash(small).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big", signed=True)


def phash_distance(a: int, b: int) -> int:
    """How many of the 64 bits differ between two hashes from image_phash (0 = same picture)."""
    return ((a ^ b) & (2 * _SIGNED_64 - 1)).bit_count()


def image_gray(data: bytes, *, size: int, limits: ProbeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """An image as a size x size grayscale array in [0, 1] (area-averaged, upright), the raw
    material of quality's pixel features for images with no embedding model."""
    with pillow_errors(), Image.open(io.BytesIO(data), formats=_available_formats()) as image:
        refuse_if_too_many_pixels(*image.size, limits)
        upright = ImageOps.exif_transpose(image) or image
        gray = upright.convert("L").resize((size, size), Image.Resampling.BOX)
        return np.asarray(gray, dtype=np.float32) / 255.0


@contextmanager
def pillow_errors() -> Iterator[None]:
    """Pillow's bomb warning and error become ProbeError("decompression_bomb"), damage "corrupt"."""
    try:
        yield
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ProbeError("decompression_bomb", "The image is too large to decode safely.") from exc
    except _PILLOW_ERRORS as exc:
        raise ProbeError("corrupt", "The image is damaged or truncated and cannot be decoded.") from exc


def open_image(path: Path, limits: ProbeLimits) -> Image.Image:
    """Open lazily (header only) and refuse a bomb before anything is decoded."""
    image = Image.open(path, formats=_available_formats())
    try:
        refuse_if_too_many_pixels(*image.size, limits)
    except ProbeError:
        image.close()
        raise
    return image


@cache
def _available_formats() -> tuple[str, ...]:
    Image.init()
    # AVIF came with Pillow 11.2 wheels; an older Pillow refuses AVIF files as unreadable.
    return tuple(name for name in _FORMATS if name in Image.OPEN)


def exif_orientation(image: Image.Image) -> int:
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return orientation if orientation in _UPRIGHT else 1


def thumbnail_upright(image: Image.Image, *, orientation: int, max_side: int) -> Image.Image:
    """An 8-bit copy at most max_side on its longer side, turned upright."""
    displayable = to_8bit(image)
    # Bilinear: Pillow's filters are antialiased when shrinking, and after draft() the shrink is
    # at most 2x, where bicubic looks no better and costs 40% more.
    displayable.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    if orientation in _UPRIGHT:
        displayable = displayable.transpose(_UPRIGHT[orientation])
    return displayable


def to_8bit(image: Image.Image) -> Image.Image:
    """RGB, RGBA or L, which thumbnails and hashes can use. Decodes the image if not yet done."""
    if image.mode in {"RGB", "RGBA", "L"}:
        return image
    if image.mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        return stretch_to_8bit(np.asarray(image, dtype=np.float32))
    if image.mode in {"P", "PA"}:
        has_alpha = image.mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    return image.convert("RGBA" if "A" in image.getbands() else "RGB")


def stretch_to_8bit(values: np.ndarray, window: tuple[float, float] | None = None) -> Image.Image:
    """Grey levels from window's low to high (the data's range by default) spread over 0..255."""
    if window is None:
        finite = values[np.isfinite(values)]
        window = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    low, high = window
    scale = 255.0 / (high - low) if high > low else 0.0
    grey = np.clip((np.nan_to_num(values, nan=low) - low) * scale, 0, 255).astype(np.uint8)
    return Image.fromarray(grey)
