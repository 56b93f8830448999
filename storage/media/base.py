"""The shared vocabulary of media probing: what a probe returns, why a file is refused, the limits.

No Django and no third-party import beyond Pillow, so the web process can import it cheaply.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

from PIL import Image

Modality = Literal["image", "text", "audio", "video", "pointcloud", "dicom", "pdf"]
MODALITIES: tuple[Modality, ...] = get_args(Modality)

ProbeErrorCode = Literal["unsupported_type", "corrupt", "too_large", "decompression_bomb", "unsafe"]
PROBE_ERROR_CODES: tuple[ProbeErrorCode, ...] = get_args(ProbeErrorCode)


@dataclass(frozen=True)
class Probe:
    """What the content of a file really is, and the facts read from it.

    `media_type` is sniffed from the bytes, never taken from the name. `meta` holds JSON values
    only (str, int, float, bool, None, lists and dicts of them): it goes into Item.meta as it is.
    """

    modality: Modality
    media_type: str
    meta: dict[str, Any]


class ProbeError(Exception):
    """Why a file was refused: a stable `code` for machines and a `message` for people.

    The ingest job records both as the reason for that one file and goes on with the batch. The
    library error that led here, if any, is chained as `__cause__` for the logs: its text is not
    put in the message because it can name server paths.
    """

    def __init__(self, code: ProbeErrorCode, message: str) -> None:
        if code not in PROBE_ERROR_CODES:
            raise ValueError(f"unknown probe error code {code!r}")
        self.code: ProbeErrorCode = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True)
class ProbeLimits:
    """What one file may cost. Every limit is checked from headers before the work it guards."""

    # Any single file. Uploads have their own limit; this one guards files that arrive by sync.
    max_bytes: int = 16 * 2**30
    # Width x height of an image, a video frame or a DICOM frame, read from the header before
    # anything is decoded: 100 megapixels is a 400 MB RGBA buffer once decoded. For images,
    # Pillow's process-wide Image.MAX_IMAGE_PIXELS (89.5 MP unless changed) refuses too, if lower.
    max_image_pixels: int = 100_000_000
    # Files decoded line by line to count them: text, and ASCII point clouds.
    max_text_bytes: int = 256 * 2**20


DEFAULT_LIMITS = ProbeLimits()


def refuse_if_too_large(size: int, limit: int, what: str) -> None:
    if size > limit:
        raise ProbeError("too_large", f"The {what} is {size:,} bytes; at most {limit:,} are accepted.")


def refuse_if_too_many_pixels(width: int, height: int, limits: ProbeLimits) -> None:
    if width * height > limits.max_image_pixels:
        raise ProbeError(
            "decompression_bomb",
            f"The image declares {width}x{height} pixels, more than the "
            f"{limits.max_image_pixels:,} accepted: decoding it could exhaust memory.",
        )


@contextmanager
def corrupt_on(errors: tuple[type[BaseException], ...], message: str) -> Iterator[None]:
    """Turn the errors a parsing library raises on bad input into ProbeError("corrupt").

    Only the listed types are caught: anything else is a bug in Loupe and must reach the logs.
    """
    try:
        yield
    except ProbeError:
        raise
    except errors as exc:
        raise ProbeError("corrupt", message) from exc


def fit_within(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size of a thumbnail of width x height: the longer side max_side, never enlarged."""
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_webp(image: Image.Image) -> bytes:
    if image.mode not in {"RGB", "RGBA", "L"}:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    if image.mode == "L":
        image = image.convert("RGB")  # WebP has no grey mode; the encoder would do this anyway
    buffer = io.BytesIO()
    # method=0 encodes three times faster than the default 4 for ~20% more bytes (11 kB for a
    # 256 px photo), and thumbnail encoding is most of what ingesting a small photo costs.
    image.save(buffer, format="WEBP", quality=80, method=0)
    return buffer.getvalue()


def finite_or_none(value: float, digits: int = 6) -> float | None:
    """A float for JSON: NaN and infinities are not JSON, so they become null."""
    as_float = float(value)
    if as_float != as_float or as_float in (float("inf"), float("-inf")):
        return None
    return round(as_float, digits)
