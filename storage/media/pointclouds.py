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
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.media.base import Probe, ProbeError, ProbeLimits, corrupt_on, finite_or_none, refuse_if_too_large

_CHUNK_POINTS = 1 << 20  # 16-32 MB of binary records at a time
_ASCII_BATCH_LINES = 100_000  # as Python strings, lines cost ~10x their bytes
_PCD_TYPES = {("F", 4), ("F", 8), *((kind, size) for kind in "IU" for size in (1, 2, 4, 8))}
_KITTI_FIELDS = ["x", "y", "z", "intensity"]
KITTI_RECORD_BYTES = 16  # float32 x, y, z, reflectance
# LAS public header: size, offset to the points and count of VLRs at byte 94; LAS 1.4 adds the
# start and count of extended VLRs at byte 235 (ASPRS LAS 1.4 R15, table 4).
_LAS_LAYOUT = struct.Struct("<HII")
_LAS14_EVLRS = struct.Struct("<QI")
_LAS_MIN_HEADER_BYTES, _LAS14_MIN_HEADER_BYTES = 227, 375
_VLR_HEADER_BYTES, _EVLR_HEADER_BYTES = 54, 60
_LAZ_CHUNK_TABLE_HEADER_BYTES = 8  # version and number of chunks
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
        meta = _probe_las(path, head=head, size=size, compressed=media_type == "application/vnd.laszip")
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
        while batch := list(itertools.islice(lines, _ASCII_BATCH_LINES)):
            values = np.loadtxt(batch, dtype=np.float64, ndmin=2, comments=None)
            if values.shape[1] != numbers_per_line:
                raise ProbeError("corrupt", _CORRUPT_PCD)
            seen += len(values)
            if len(xyz) == 3:
                yield values[:, xyz]
    if seen != header.points:
        raise ProbeError("corrupt", f"The PCD file declares {header.points} points but holds {seen}.")


def _probe_las(path: Path, *, head: bytes, size: int, compressed: bool) -> dict[str, Any]:
    import laspy

    check_las_layout(head, size)
    # lazrs raises RuntimeError subclasses on a damaged LAZ stream.
    errors = (laspy.LaspyException, OSError, ValueError, RuntimeError, struct.error)
    with corrupt_on(errors, "The LAS/LAZ file is damaged."), laspy.open(path) as reader:
        header = reader.header
        points = int(header.point_count)
    if compressed:
        _check_laz_chunk_table(path, point_offset=header.offset_to_point_data, size=size)
    elif size < header.offset_to_point_data + points * header.point_format.size:
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


def check_las_layout(head: bytes, size: int) -> None:
    """Refuse a LAS header whose counts point past the file, before laspy reads it.

    laspy trusts the header: a forged count of variable-length records makes it build records
    from nothing until memory runs out (tens of GB from a 300-byte file).
    """
    is_las14 = head[24:26] >= b"\x01\x04"  # version major, minor
    if len(head) < (_LAS14_MIN_HEADER_BYTES if is_las14 else _LAS_MIN_HEADER_BYTES):
        raise ProbeError("corrupt", "The LAS file is shorter than its header.")
    header_size, point_offset, vlr_count = _LAS_LAYOUT.unpack_from(head, 94)
    vlr_room = point_offset - header_size
    evlr_start, evlr_count = _LAS14_EVLRS.unpack_from(head, 235) if is_las14 else (0, 0)
    if (
        not _LAS_MIN_HEADER_BYTES <= header_size <= point_offset <= size
        or vlr_count * _VLR_HEADER_BYTES > vlr_room
        or (evlr_count and (evlr_start > size or evlr_count * _EVLR_HEADER_BYTES > size - evlr_start))
    ):
        raise ProbeError("corrupt", "The LAS header points past the end of the file.")


def _check_laz_chunk_table(path: Path, *, point_offset: int, size: int) -> None:
    """A LAZ file ends with its chunk table; the 8 bytes before the points say where it starts.

    Checking the offset catches truncation without decoding: lazrs trusts the sizes inside the
    table and aborts the whole process (a Rust allocation failure, not an exception) when a
    damaged one asks for gigabytes. So no point is decoded here, and whatever decodes LAZ
    from uploads later must do it in a child process with a memory limit.
    """
    with path.open("rb") as file:
        file.seek(point_offset)
        (table_offset,) = struct.unpack("<q", file.read(8).ljust(8, b"\xff"))
        if table_offset == -1:  # written as a stream: the offset is repeated in the last 8 bytes
            file.seek(max(size - 8, 0))
            (table_offset,) = struct.unpack("<q", file.read(8).ljust(8, b"\xff"))
    if not point_offset + 8 <= table_offset <= size - _LAZ_CHUNK_TABLE_HEADER_BYTES:
        raise ProbeError("corrupt", "The LAZ file is truncated: its chunk table is missing.")


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
