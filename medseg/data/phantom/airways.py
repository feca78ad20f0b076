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
        painted = _blend_tube(canvas, seg, wall, 20.0, brighten_only=True)
        if painted is not None:
            sl, inside = painted
            canvas.anatomy[sl][inside] = AIRWAY
            canvas.airway_segments.append((seg, wall))


def _blend_tube(canvas: Canvas, seg: Segment, extra: float, hu: float,
                brighten_only: bool) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Blend ``hu`` into the tube (radius + ``extra``) by partial volume, bone left alone; returns
    the tube's box and its non-bone voxels inside the surface, or None when it misses the grid."""
    got = canvas.tube(seg, extra=extra)
    if got is None:
        return None
    sl, sd, _ = got
    f = canvas.frac(sd)
    cur = canvas.ct[sl]
    ok = canvas.anatomy[sl] != BONE
    blended = cur + f * (hu - cur)
    canvas.ct[sl] = np.where(ok, np.maximum(cur, blended) if brighten_only else blended, cur)
    return sl, (sd <= 0) & ok


def redraw_airway_lumen(canvas: Canvas) -> None:
    """Air inside the airways, painted after the vessels so the lumen stays clear."""
    for seg, _wall in canvas.airway_segments:
        _blend_tube(canvas, seg, 0.0, -990.0, brighten_only=False)
