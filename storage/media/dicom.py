"""DICOM with pydicom: image facts without a byte of patient identity, and a windowed thumbnail.

Meta is built from an allowlist (_KEPT_TAGS), never by removing tags: nothing about the patient
(PS3.15 Annex E basic profile: names, IDs, birth dates, addresses, other IDs, institutions,
physicians, accession numbers, free-text descriptions, device serial numbers, dates and times)
can reach meta, however a file is filled in. Study and series UIDs are replaced by hashes so
items can still be grouped by series.

The probe never loads pixel data (it is deferred: read lazily if at all), so a 2 GB multi-frame
file costs its header.
"""

from __future__ import annotations

import hashlib
import struct
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from storage.media.base import (
    Probe,
    ProbeError,
    ProbeLimits,
    corrupt_on,
    encode_webp,
    finite_or_none,
    refuse_if_too_many_pixels,
)
from storage.media.images import stretch_to_8bit

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# DICOM keyword → meta key. Only these are ever copied; each is a fact about the acquisition.
_KEPT_TAGS = {
    "Modality": "modality",
    "Manufacturer": "manufacturer",
    "SOPClassUID": "sop_class_uid",  # the kind of object (e.g. CT Image Storage), not an instance
    "PhotometricInterpretation": "photometric_interpretation",
    "SamplesPerPixel": "samples_per_pixel",
    "BitsAllocated": "bits_allocated",
    "BitsStored": "bits_stored",
    "PixelSpacing": "pixel_spacing",  # mm between pixel centres: what measurements need
    "SliceThickness": "slice_thickness",
}
_HASHED_UIDS = {"StudyInstanceUID": "study_uid_hash", "SeriesInstanceUID": "series_uid_hash"}
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_UNDEFINED_LENGTH = 0xFFFFFFFF  # encapsulated (compressed) pixel data has no length up front
_DEFER_BYTES = 4096  # values larger than this are left on disk unless asked for
_CORRUPT = "The DICOM file is damaged or truncated and cannot be read."


def _corrupt_on_dicom_errors() -> AbstractContextManager[None]:
    from pydicom.errors import InvalidDicomError

    # pydicom raises NotImplementedError for a value representation it does not know.
    errors = (
        InvalidDicomError,
        OSError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        NotImplementedError,
        struct.error,
    )
    return corrupt_on(errors, _CORRUPT)


def probe_dicom(path: Path, *, size: int, limits: ProbeLimits) -> Probe:
    import pydicom

    with _corrupt_on_dicom_errors():
        dataset = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
        meta = _image_facts(dataset, size=size, limits=limits)
        for keyword, key in _KEPT_TAGS.items():
            value = _json_value(dataset.get(keyword))
            if value is not None:
                meta[key] = value
        for keyword, key in _HASHED_UIDS.items():
            uid = dataset.get(keyword)
            if uid:
                meta[key] = hash_uid(str(uid))
    return Probe("dicom", "application/dicom", meta)


def dicom_thumbnail(path: Path, *, max_side: int, limits: ProbeLimits) -> bytes | None:
    """The first frame, windowed to 8 bits; None when no decoder for its compression is installed."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, get_decoder, pixel_array

    with _corrupt_on_dicom_errors():
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        refuse_if_too_many_pixels(int(dataset.Columns), int(dataset.Rows), limits)
        if not get_decoder(dataset.file_meta.TransferSyntaxUID).is_available:
            return None  # e.g. JPEG-LS needs pylibjpeg; the item is still usable without a picture
        frame = pixel_array(path, index=0)
        if int(dataset.get("SamplesPerPixel", 1)) == 1:
            values = np.asarray(apply_modality_lut(frame, dataset), dtype=np.float32)
            image = stretch_to_8bit(values, _window(dataset))
            if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
                image = ImageOps.invert(image)  # MONOCHROME1 shows low values white
        else:
            image = Image.fromarray(_rgb_to_8bit(frame))  # pydicom has converted YBR to RGB
    image.thumbnail((max_side, max_side))
    return encode_webp(image)


def hash_uid(uid: str) -> str:
    """A stable stand-in for a study or series UID: equal UIDs give equal hashes, and the UID
    cannot be read back from it."""
    return hashlib.sha256(f"loupe/dicom-uid/{uid}".encode()).hexdigest()[:32]


def _image_facts(dataset: Dataset, *, size: int, limits: ProbeLimits) -> dict[str, Any]:
    from pydicom.dataelem import RawDataElement

    if not len(dataset) or "TransferSyntaxUID" not in dataset.file_meta:
        raise ProbeError("corrupt", "The DICOM file has no file meta information or no data elements.")
    pixels = next((dataset.get_item(tag, keep_deferred=True) for tag in _PIXEL_TAGS if tag in dataset), None)
    if pixels is None:
        raise ProbeError(
            "unsupported_type", "The DICOM file holds no image (a report, a plan or a directory)."
        )
    if "Rows" not in dataset or "Columns" not in dataset:
        raise ProbeError("corrupt", "The DICOM image has no Rows or Columns.")
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    refuse_if_too_many_pixels(columns, rows, limits)
    # Deferred, the element is still raw: where its value starts and how long it says it is.
    if (
        isinstance(pixels, RawDataElement)
        and pixels.length != _UNDEFINED_LENGTH
        and pixels.value_tell + pixels.length > size
    ):
        raise ProbeError("corrupt", "The DICOM file is truncated: its pixel data is cut short.")
    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID")
    return {
        "rows": rows,
        "columns": columns,
        "frames": int(dataset.get("NumberOfFrames") or 1),
        "transfer_syntax": str(transfer_syntax) if transfer_syntax else None,
        "compressed": bool(transfer_syntax and transfer_syntax.is_compressed),
    }


def _json_value(value: Any) -> Any:
    """A DICOM value as JSON: numbers stay numbers, multi-values become lists, empty becomes None."""
    from pydicom.multival import MultiValue

    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        return [_json_value(item) for item in value]
    if isinstance(value, int):  # IS is an int
        return int(value)
    if isinstance(value, float):  # DS is a float
        return finite_or_none(value)
    return str(value)


def _window(dataset: Dataset) -> tuple[float, float] | None:
    """The first VOI window the file suggests, as (low, high); None lets the data set its range."""
    center, width = _first(dataset.get("WindowCenter")), _first(dataset.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    return center - width / 2, center + width / 2


def _first(value: Any) -> float | None:
    """Window tags may suggest several windows; the first is the default one."""
    from pydicom.multival import MultiValue

    if isinstance(value, MultiValue | list):
        value = value[0] if value else None
    return None if value is None or value == "" else float(value)


def _rgb_to_8bit(frame: np.ndarray) -> np.ndarray:
    if frame.dtype == np.uint8:
        return frame
    peak = float(frame.max()) or 1.0
    return np.clip(frame.astype(np.float32) * (255.0 / peak), 0, 255).astype(np.uint8)
