"""Box geometry shared by the scene captioner and the GenEval scorer."""

from __future__ import annotations

import math
from collections.abc import Sequence

Box = Sequence[float]  # x0, y0, x1, y1; image y grows downward


def center(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def size(box: Box) -> tuple[float, float]:
    return box[2] - box[0], box[3] - box[1]


def relative_position(box_a: Box, box_b: Box) -> set[str]:
    """Relations of A to B by GenEval's rule (djghosh13/geneval, evaluation/evaluate_images.py).

    offset = cA - cB; each axis is shrunk by 0.1 x (dA + dB) towards zero; if both shrunk
    components are below 1e-3 there is no relation. Otherwise the shrunk offset is divided by the
    norm of the *raw* offset and a relation holds where a component passes +-0.5.
    """
    (ax, ay), (bx, by) = center(box_a), center(box_b)
    (aw, ah), (bw, bh) = size(box_a), size(box_b)
    offset = (ax - bx, ay - by)
    revised = [
        max(abs(o) - 0.1 * (da + db), 0.0) * math.copysign(1.0, o)
        for o, da, db in zip(offset, (aw, ah), (bw, bh), strict=True)
    ]
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    norm = math.hypot(*offset)
    dx, dy = revised[0] / norm, revised[1] / norm
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def region(box: Box) -> str:
    """Coarse location of a box in a unit square, as a caption would say it."""
    cx, cy = center(box)
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    row = "upper" if cy < 1 / 3 else "lower" if cy > 2 / 3 else ""
    if row and col:
        return f"{row} {col}"
    if row:
        return {"upper": "top centre", "lower": "bottom centre"}[row]
    if col:
        return f"middle {col}"
    return "centre"
