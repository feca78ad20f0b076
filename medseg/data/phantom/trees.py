"""Branching trees shared by airways and vessels: the hilum they leave from and the growth of a
tapering, asymmetrically bifurcating tree that stays inside the lungs."""

from __future__ import annotations

import math

import numpy as np

from .canvas import Canvas
from .geometry import Segment, random_perpendicular, unit


def hilum(canvas: Canvas, side: int, z: float) -> np.ndarray:
    """Medial edge of the lung on ``side`` at height ``z`` (world mm), a little inside the mediastinum."""
    k = int(np.clip(np.rint((z - canvas.origin[2]) / canvas.spacing[2]), 0, canvas.shape[2] - 1))
    j = int(np.clip(np.rint((12 * canvas.S - canvas.origin[1]) / canvas.spacing[1]), 0, canvas.shape[1] - 1))
    row = np.flatnonzero(canvas.lungs[:, j, k])
    xs = canvas.axes[0][row]
    xs = xs[np.sign(xs) == side]
    x_med = float(np.min(np.abs(xs))) if xs.size else 30 * canvas.S
    return np.array([side * max(x_med - 6 * canvas.S, 8 * canvas.S), 12 * canvas.S, z])


def grow(canvas: Canvas, rng: np.random.Generator, start: np.ndarray, direction: np.ndarray, radius: float,
         r_min: float, length: tuple[float, float], max_segments: int, origin: np.ndarray,
         in_lung_from: int = 1) -> list[Segment]:
    """Grow a tapering, asymmetrically bifurcating tree that stays inside the lungs."""
    out: list[Segment] = []
    stack = [(start, unit(direction), radius, 0)]
    while stack and len(out) < max_segments:
        p, d, r, gen = stack.pop()
        seg = None
        for attempt in range(8):
            # Retry with bent directions, then shorter, before giving up on this branch.
            dd = d if attempt == 0 else unit(d + 0.35 * attempt * random_perpendicular(rng, d))
            L = (r * rng.uniform(*length) + 2.5 * canvas.S) * (1.0, 1.0, 0.8, 0.8, 0.6, 0.6, 0.4, 0.4)[attempt]
            e = p + dd * L
            if gen < in_lung_from or (canvas.in_lung(e) and canvas.in_lung((p + e) / 2)):
                seg = Segment(p, e, r, r * 0.95)
                d = dd
                break
        if seg is None:
            continue
        out.append(seg)
        r_end = seg.r1
        out_dir = unit(seg.p1 - origin)
        for ratio, ang in ((rng.uniform(0.82, 0.9), rng.uniform(12, 28)),
                           (rng.uniform(0.62, 0.8), rng.uniform(35, 60))):
            rc = r_end * ratio
            if rc < r_min:
                continue
            u = random_perpendicular(rng, d)
            a = math.radians(ang)
            cd = unit(math.cos(a) * d + math.sin(a) * u + 0.25 * out_dir)
            stack.append((seg.p1, cd, rc, gen + 1))
    return out
