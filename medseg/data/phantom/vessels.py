"""Pulmonary vessels: arterial and venous trees grown from each hilum, painted as blood and
labelled small or large in the ``anatomy`` map."""

from __future__ import annotations

import math

import numpy as np

from .canvas import Canvas
from .geometry import Segment
from .tissue import HU_BLOOD, LARGE_VESSEL, LARGE_VESSEL_RADIUS, SMALL_VESSEL
from .trees import grow, hilum


def draw_vessels(canvas: Canvas, rng: np.random.Generator) -> None:
    """Grow the vessel trees into ``canvas.vessel_segments`` and paint them."""
    s = canvas.S
    r_min = max(0.35, 0.2 * canvas.spacing.min())
    for side in (-1, 1):
        # Arteries leave the hilum higher, veins lower; each tree has several roots spread
        # over the lateral half-sphere so the whole lung fills with branches.
        for zt, r0 in ((0.62, 4.2), (0.45, 4.0)):
            h = hilum(canvas, side, canvas.z_bot + zt * canvas.H)
            for m in range(6):
                dv = rng.normal(size=3)
                dv[2] = 0.9 * math.cos(math.pi * (m + 0.5) / 6) + 0.3 * dv[2]  # spread up to down
                dv[0] = side * (abs(dv[0]) + 0.5)
                canvas.vessel_segments += grow(canvas, rng, h, dv, r0 * s, r_min, (4.0, 7.0), 1000, h)
    for seg in canvas.vessel_segments:
        paint_vessel(canvas, seg)


def paint_vessel(canvas: Canvas, seg: Segment) -> None:
    """One vessel tube: blood HU (never darkening what is there), small/large label inside the lungs."""
    got = canvas.tube(seg)
    if got is None:
        return
    sl, sd, r = got
    cur = canvas.ct[sl]  # a view: painted in place (vessels stay in lungs and mediastinum)
    cur += canvas.frac(sd) * np.maximum(np.float32(HU_BLOOD) - cur, 0.0)
    inside = (sd <= 0) & (canvas.lungs[sl] > 0)
    an = canvas.anatomy[sl]
    if min(seg.r0, seg.r1) >= LARGE_VESSEL_RADIUS or max(seg.r0, seg.r1) < LARGE_VESSEL_RADIUS:
        cls = LARGE_VESSEL if seg.r0 >= LARGE_VESSEL_RADIUS else SMALL_VESSEL
    else:
        cls = np.where(r >= LARGE_VESSEL_RADIUS, LARGE_VESSEL, SMALL_VESSEL).astype(np.uint8)[inside]
    an[inside] = np.maximum(an[inside], cls)
