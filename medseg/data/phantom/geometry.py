"""Small geometry helpers: vectors and rotations, 2D shapes, interpolation weights, tube segments."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Segment:
    """A tapering tube from ``p0`` (radius ``r0``) to ``p1`` (radius ``r1``), world mm."""

    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float


def unit(v: np.ndarray) -> np.ndarray:
    """``v`` scaled to length 1 (unchanged if it is zero)."""
    n = math.sqrt(float(v.dot(v)))
    return v / n if n > 0 else v


def random_perpendicular(rng: np.random.Generator, d: np.ndarray) -> np.ndarray:
    """A random unit vector perpendicular to the unit vector ``d``."""
    while True:
        u = rng.normal(size=3)
        u -= u.dot(d) * d
        if u.dot(u) > 1e-6:
            return unit(u)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A random 3x3 orthogonal matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def interp_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower neighbour index and weight for linear interpolation of ``n_in`` samples onto ``n_out``."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    return lo, (pos - lo).astype(np.float32)


def upsample2d(c: np.ndarray, ix: tuple[np.ndarray, np.ndarray], iy: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Bilinear upsampling by gathers (no BLAS: its threads crawl on a busy machine)."""
    (lx, wx), (ly, wy) = ix, iy
    cx = c[lx] * (1 - wx)[:, None] + c[lx + 1] * wx[:, None]
    return cx[:, ly] * (1 - wy)[None, :] + cx[:, ly + 1] * wy[None, :]


def ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    """Squared normalised radius of an axis-aligned ellipse (<= 1 inside)."""
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2


def seg_dist2d(x: np.ndarray, y: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """Distance (mm) from grid points to the 2D segment a-b."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    L2 = dx * dx + dy * dy
    t = np.clip(((x - a[0]) * dx + (y - a[1]) * dy) / L2, 0.0, 1.0) if L2 > 0 else 0.0
    return np.sqrt((x - a[0] - t * dx) ** 2 + (y - a[1] - t * dy) ** 2)
