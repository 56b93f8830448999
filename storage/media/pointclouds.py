"""Point clouds: PCD (ASCII and binary), LAS/LAZ and KITTI .bin scans.

Facts: points, fields and the x/y/z bounds. PCD and KITTI bounds are computed from the data
(streamed in chunks of _CHUNK_POINTS, so memory stays flat whatever the size); LAS/LAZ bounds
come from the header, where the format requires them, since computing them would mean
decompressing every point of a LAZ file.

PCD binary_compressed (LZF) files get header facts but no bounds: decompressing LZF needs a
native library Loupe does not carry.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.media.base import Probe, ProbeError, ProbeLimits, corrupt_on, finite_or_none, refuse_if_too_large

_CHUNK_POINTS = 1 << 20
_PCD_TYPES = {("F", 4), ("F", 8), *((kind, size) for kind in "IU" for size in (1, 2, 4, 8))}
_KITTI_FIELDS = ["x", "y", "z", "intensity"]
KITTI_RECORD_BYTES = 16  # float32 x, y, z, reflectance
_CORRUPT_PCD = "The PCD file is damaged: its header and its data do not agree."


@dataclass(frozen=True)
class PcdHeader:
    version: str
    fields: list[str]
    types: list[str]
    sizes: list[int]
    counts: list[int]
    width: int
    height: int
    points: int
    data: str  # ascii, binary or binary_compressed
    data_offset: int  # where the points start in the file

    def dtype(self) -> np.dtype[Any]:
        """One binary record. PCL pads with fields named "_", which numpy wants unique."""
        names = [name if name != "_" else f"_pad{index}" for index, name in enumerate(self.fields)]
        formats = [
            (f"<{kind.lower()}{size}", (count,)) if count > 1 else f"<{kind.lower()}{size}"
            for kind, size, count in zip(self.types, self.sizes, self.counts, strict=True)
        ]
        return np.dtype({"names": names, "formats": formats})

    def column(self, field: str) -> int | None:
        """Where a scalar field's value is among an ASCII line's numbers (None: absent or not scalar)."""
        if field not in self.fields or self.counts[self.fields.index(field)] != 1:
            return None
        return sum(self.counts[: self.fields.index(field)])


def probe_pointcloud(path: Path, *, head: bytes, size: int, media_type: str, limits: ProbeLimits) -> Probe:
    if media_type == "application/x-pcd":
        meta = _probe_pcd(path, head=head, size=size, limits=limits)
    elif media_type in ("application/vnd.las", "application/vnd.laszip"):
        meta = _probe_las(path, size=size, compressed=media_type == "application/vnd.laszip")
    else:
        meta = _probe_kitti(path, size=size)
    return Probe("pointcloud", media_type, meta)


def parse_pcd_header(head: bytes) -> PcdHeader:
    entries: dict[str, list[str]] = {}
    offset = 0
    for raw_line in io.BytesIO(head):
        offset += len(raw_line)
        line = raw_line.decode("ascii").strip()
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        entries[key.upper()] = values
        if key.upper() == "DATA":
            break
    else:
        raise ProbeError("corrupt", "The PCD header has no DATA line.")
    fields = entries["FIELDS"]
    types = [kind.upper() for kind in entries["TYPE"]]
    sizes = [int(size) for size in entries["SIZE"]]
    counts = [int(count) for count in entries.get("COUNT", ["1"] * len(fields))]
    width, height = int(entries["WIDTH"][0]), int(entries.get("HEIGHT", ["1"])[0])
    points = int(entries.get("POINTS", [str(width * height)])[0])
    data = entries["DATA"][0].lower()
    if (
        not len(fields) == len(types) == len(sizes) == len(counts)
        or not set(zip(types, sizes, strict=True)) <= _PCD_TYPES
        or min(counts, default=0) < 1
        or points != width * height
        or points < 0
        or data not in ("ascii", "binary", "binary_compressed")
    ):
        raise ProbeError("corrupt", "The PCD header is inconsistent.")
    version = entries.get("VERSION", [""])[0]
    return PcdHeader(version, fields, types, sizes, counts, width, height, points, data, offset)


def _probe_pcd(path: Path, *, head: bytes, size: int, limits: ProbeLimits) -> dict[str, Any]:
    with corrupt_on((KeyError, IndexError, ValueError, UnicodeDecodeError), "The PCD header cannot be read."):
        header = parse_pcd_header(head)
    bounds: dict[str, list[float | None]] | None = None
    if header.data == "binary":
        if size < header.data_offset + header.points * header.dtype().itemsize:
            raise ProbeError("corrupt", "The PCD file is truncated: it holds fewer points than it declares.")
        bounds = _bounds(_pcd_binary_xyz(path, header))
    elif header.data == "ascii":
        refuse_if_too_large(size, limits.max_text_bytes, "ASCII point cloud")
        with corrupt_on((ValueError, UnicodeDecodeError), _CORRUPT_PCD):
            bounds = _bounds(_pcd_ascii_xyz(path, header))
    return {
        "format": "pcd",
        "version": header.version,
        "data": header.data,
        "points": header.points,
        "fields": [field for field in header.fields if field != "_"],
        "width": header.width,
        "height": header.height,
        "bounds": bounds,
    }


def _pcd_binary_xyz(path: Path, header: PcdHeader) -> Iterator[np.ndarray]:
    if any(header.column(axis) is None for axis in "xyz"):
        return  # no scalar x, y and z: no bounds to compute
    dtype = header.dtype()
    with path.open("rb") as file:
        file.seek(header.data_offset)
        for start in range(0, header.points, _CHUNK_POINTS):
            records = np.fromfile(file, dtype=dtype, count=min(_CHUNK_POINTS, header.points - start))
            yield np.column_stack([records["x"], records["y"], records["z"]])


def _pcd_ascii_xyz(path: Path, header: PcdHeader) -> Iterator[np.ndarray]:
    """Every line must hold one number per field value; the lines must number POINTS."""
    numbers_per_line = sum(header.counts)
    columns = [header.column(axis) for axis in "xyz"]
    xyz = [column for column in columns if column is not None]
    seen = 0
    with path.open("rb") as raw:
        raw.seek(header.data_offset)
        lines = (line for line in io.TextIOWrapper(raw, encoding="ascii") if line.strip())
        while batch := list(itertools.islice(lines, _CHUNK_POINTS)):
            values = np.loadtxt(batch, dtype=np.float64, ndmin=2, comments=None)
            if values.shape[1] != numbers_per_line:
                raise ProbeError("corrupt", _CORRUPT_PCD)
            seen += len(values)
            if len(xyz) == 3:
                yield values[:, xyz]
    if seen != header.points:
        raise ProbeError("corrupt", f"The PCD file declares {header.points} points but holds {seen}.")


def _probe_las(path: Path, *, size: int, compressed: bool) -> dict[str, Any]:
    import laspy

    # lazrs raises RuntimeError subclasses on a damaged LAZ stream.
    with (
        corrupt_on((laspy.LaspyException, OSError, ValueError, RuntimeError), "The LAS/LAZ file is damaged."),
        laspy.open(path) as reader,
    ):
        header = reader.header
        points = int(header.point_count)
        if compressed and points:
            # Decoding one point reads the chunk table at the end: a truncated LAZ fails here.
            reader.read_points(1)
    if not compressed and size < header.offset_to_point_data + points * header.point_format.size:
        raise ProbeError("corrupt", "The LAS file is truncated: it holds fewer points than it declares.")
    bounds = None
    if points:
        bounds = {
            "min": [finite_or_none(value) for value in header.mins],
            "max": [finite_or_none(value) for value in header.maxs],
        }
    return {
        "format": "laz" if compressed else "las",
        "version": str(header.version),
        "point_format": int(header.point_format.id),
        "points": points,
        "fields": list(header.point_format.dimension_names),
        "bounds": bounds,
    }


def _probe_kitti(path: Path, *, size: int) -> dict[str, Any]:
    points = size // KITTI_RECORD_BYTES

    def xyz() -> Iterator[np.ndarray]:
        with path.open("rb") as file:
            for start in range(0, points, _CHUNK_POINTS):
                records = np.fromfile(file, dtype="<f4", count=4 * min(_CHUNK_POINTS, points - start))
                yield records.reshape(-1, 4)[:, :3]

    return {"format": "kitti", "points": points, "fields": _KITTI_FIELDS, "bounds": _bounds(xyz())}


def _bounds(chunks: Iterable[np.ndarray]) -> dict[str, list[float | None]] | None:
    """Min and max of x, y, z over (n, 3) chunks, ignoring NaN (organized clouds mark holes so)."""
    low = np.full(3, np.nan)
    high = np.full(3, np.nan)
    for chunk in chunks:
        if len(chunk):
            low = np.fmin(low, np.fmin.reduce(chunk, axis=0))
            high = np.fmax(high, np.fmax.reduce(chunk, axis=0))
    if np.isnan(low).any():
        return None  # no points, no x/y/z fields, or every point a hole
    return {"min": [finite_or_none(value) for value in low], "max": [finite_or_none(value) for value in high]}
