"""Geometry helpers for region validation: COCO RLE reading and clipping to the item.

COCO compressed RLE is read here rather than by pycocotools because pycocotools trusts the runs:
decoding a mask whose runs add up to more than height x width writes past its buffer. Every mask
that is stored has been checked to cover its size exactly, so anything decoding it later is safe.
"""

from __future__ import annotations

from typing import Any

import shapely
from shapely.geometry import LineString, Polygon, box

# A run needs at most 7 chunks of 5 bits (a 32-bit count plus sign); more means garbage.
_MAX_CHUNKS = 7


def rle_runs(counts: str) -> list[int] | None:
    """The runs of a COCO compressed RLE string, or None when the string is not one.

    Same reading as pycocotools' rleFrString: 5-bit chunks offset by 48, 0x20 marks "more",
    0x10 the sign of the last chunk, and from the third run on each value is a delta to the run
    two places back.
    """
    runs: list[int] = []
    append = runs.append
    position, size = 0, len(counts)
    while position < size:
        value = shift = chunks = 0
        more = True
        while more:
            if position >= size or chunks >= _MAX_CHUNKS:
                return None
            chunk = ord(counts[position]) - 48
            if not 0 <= chunk < 64:
                return None
            value |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            position += 1
            shift += 5
            chunks += 1
            if not more and chunk & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        append(value)
    return runs


def rle_string(runs: list[int], height: int, width: int) -> str:
    """COCO compressed RLE string of runs (which must already cover height x width)."""
    from pycocotools import mask as coco_mask

    encoded = coco_mask.frPyObjects({"size": [height, width], "counts": runs}, height, width)
    counts = encoded["counts"]
    return counts.decode("ascii") if isinstance(counts, bytes) else str(counts)


def clip_polygon(
    shell: list[list[float]], holes: list[list[list[float]]], width: float, height: float
) -> Any:
    """The polygon cut to the item rectangle: (shell, holes), or a message saying why it cannot be.

    Clipping must leave one piece with an area: a polygon the edge cuts in two would become two
    regions, which is for the person labelling to decide, not for the server.
    """
    clipped = shapely.intersection(Polygon(shell, holes), box(0.0, 0.0, width, height))
    pieces = [part for part in shapely.get_parts(clipped) if part.geom_type == "Polygon" and part.area > 0]
    if not pieces:
        return f"The polygon lies outside the image ({_size(width, height)}); nothing is left after clipping."
    if len(pieces) > 1:
        return (
            f"Clipped to the image ({_size(width, height)}) the polygon falls into {len(pieces)} pieces; "
            "draw each piece as its own polygon."
        )
    piece = pieces[0]
    return (
        _ring_points(piece.exterior.coords, width, height),
        [_ring_points(interior.coords, width, height) for interior in piece.interiors],
    )


def clip_polyline(points: list[list[float]], width: float, height: float) -> Any:
    """The polyline cut to the item rectangle (points), or a message saying why it cannot be."""
    clipped = shapely.intersection(LineString(points), box(0.0, 0.0, width, height))
    pieces = [
        part for part in shapely.get_parts(clipped) if part.geom_type == "LineString" and part.length > 0
    ]
    if not pieces:
        return (
            f"The polyline lies outside the image ({_size(width, height)}); nothing is left after clipping."
        )
    if len(pieces) > 1:
        return (
            f"The polyline leaves the image ({_size(width, height)}) and comes back: clipped it would fall "
            f"into {len(pieces)} pieces; draw each piece as its own polyline."
        )
    return clamp_points(pieces[0].coords, width, height)


def clamp_points(coords: Any, width: float, height: float) -> list[list[float]]:
    """Points held to the item rectangle: for clipped geometry, where GEOS may keep a vertex a
    rounding error outside (y = -1.8e-147), and for points within the bounds' tolerance."""
    return [[min(max(float(x), 0.0), width), min(max(float(y), 0.0), height)] for x, y in coords]


def _ring_points(coords: Any, width: float, height: float) -> list[list[float]]:
    points = clamp_points(coords, width, height)
    return points[:-1] if len(points) > 1 and points[0] == points[-1] else points


def _size(width: float, height: float) -> str:
    return f"{width:g}x{height:g}"
