"""The airway tree: trachea, main and lobar bronchi and a few more generations, walls painted
before the vessels and air lumens after them."""

from __future__ import annotations

import numpy as np

from .canvas import Canvas
from .geometry import Segment
from .tissue import AIRWAY, BONE
from .trees import grow, hilum


def draw_airways(canvas: Canvas, rng: np.random.Generator) -> None:
    """Grow the airway tree and paint its walls (soft tissue) into ``ct`` and ``anatomy``."""
    s = canvas.S
    z_car = canvas.z_bot + 0.7 * canvas.H
    z_top = canvas.axes[2][-1] + canvas.spacing[2]
    trachea_r = 8.5 * s
    carina = np.array([0.0, 16 * s, z_car])
    segs = [Segment(np.array([0.0, 8 * s, z_top]), carina, trachea_r, trachea_r * 0.95)]
    for side, (dz, r) in ((-1, (0.09, 6.5 * s)), (1, (0.14, 5.8 * s))):
        h = hilum(canvas, side, z_car - dz * canvas.H)
        h[1] = 16 * s
        segs.append(Segment(carina.copy(), h, r, r * 0.9))
        for dirn in ([side * 0.3, -0.1, 1.0], [side * 0.6, -0.5, -0.6], [side * 0.4, 0.5, -1.0]):
            segs += grow(canvas, rng, h, np.asarray(dirn), r * 0.7, max(1.0 * s, 0.6 * canvas.spacing.min()),
                         (3.0, 5.5), 40, h)
    for seg in segs:
        wall = 0.6 + 0.12 * max(seg.r0, seg.r1)
        got = canvas.tube(seg, extra=wall)
        if got is None:
            continue
        sl, sd, _ = got
        f = canvas.frac(sd)
        cur = canvas.ct[sl]
        ok = canvas.anatomy[sl] != BONE
        canvas.ct[sl] = np.where(ok, np.maximum(cur, cur + f * (20.0 - cur)), cur)
        canvas.anatomy[sl][(sd <= 0) & ok] = AIRWAY
        canvas.airway_segments.append((seg, wall))


def redraw_airway_lumen(canvas: Canvas) -> None:
    """Air inside the airways, painted after the vessels so the lumen stays clear."""
    for seg, _wall in canvas.airway_segments:
        got = canvas.tube(seg)
        if got is None:
            continue
        sl, sd, _ = got
        f = canvas.frac(sd)
        cur = canvas.ct[sl]
        ok = canvas.anatomy[sl] != BONE
        canvas.ct[sl] = np.where(ok, cur + f * (-990.0 - cur), cur)
