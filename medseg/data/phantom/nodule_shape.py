"""What a nodule looks like: a lobulated ellipsoid's signed distance, and its intensity and
texture (solid, ground-glass, part-solid with a solid core)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .canvas import Canvas
from .geometry import random_perpendicular, random_rotation, unit
from .specs import NoduleSpec


def lobulated_shape(rng: np.random.Generator, c: np.ndarray, R: float, coords: list[np.ndarray],
                    margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Lobulated ellipsoid of radius about ``R`` (mm) at ``c``: random rotation and axis ratios,
    plus a few surface bumps.

    Returns its signed distance (mm, float32) on the box with voxel coordinates ``coords`` and
    the ball of radius ``1.2 R + margin`` (where other things must keep clear).
    """
    x, y, z = coords
    Q = random_rotation(rng)
    axes_scale = np.exp(rng.uniform(-0.12, 0.12, 3))
    axes_scale /= np.prod(axes_scale) ** (1 / 3)
    v = [x - c[0], y - c[1], z - c[2]]
    w = [(Q[0, a] * v[0] + Q[1, a] * v[1] + Q[2, a] * v[2]) / axes_scale[a] for a in range(3)]
    dist = np.sqrt(w[0] ** 2 + w[1] ** 2 + w[2] ** 2) + 1e-6
    lob = np.zeros_like(dist)
    for _ in range(int(rng.integers(2, 6))):
        u = unit(rng.normal(size=3))
        cosang = (w[0] * u[0] + w[1] * u[1] + w[2] * u[2]) / dist
        lob += rng.uniform(0.04, 0.13) * np.exp((cosang - 1.0) / 0.15)
    sd = (dist - R * 0.97 * (1.0 + lob)).astype(np.float32)
    return sd, dist <= R * 1.2 + margin


def paint_nodule(canvas: Canvas, rng: np.random.Generator, spec: NoduleSpec, sl: tuple[slice, ...],
                 sd: np.ndarray, allowed: np.ndarray, label: np.ndarray, c: np.ndarray, R: float,
                 coords: list[np.ndarray]) -> None:
    """Paint the nodule into ``canvas.ct[sl]`` where ``allowed``.

    Max-composite, so vessels through ground glass stay visible.
    """
    f = canvas.frac(sd) * allowed
    cur = canvas.ct[sl]
    tex = ndimage.gaussian_filter(rng.standard_normal(sd.shape).astype(np.float32), 1.0)
    tex /= tex.std() or 1.0
    if spec.kind == "solid":
        val = rng.uniform(0.0, 50.0) + 10.0 * tex
        new = cur + f * (val - cur)
    else:
        val = rng.uniform(-650.0, -560.0) + 35.0 * tex
        new = cur + f * (val - cur)
        if spec.kind == "part-solid":
            new = np.maximum(new, _solid_core(canvas, rng, c, R, coords, label, cur, tex))
    canvas.ct[sl] = np.maximum(cur, new)


def _solid_core(canvas: Canvas, rng: np.random.Generator, c: np.ndarray, R: float, coords: list[np.ndarray],
                label: np.ndarray, cur: np.ndarray, tex: np.ndarray) -> np.ndarray:
    """A part-solid nodule's solid core: a ball a little off centre, within the nodule's label."""
    x, y, z = coords
    rc = R * rng.uniform(0.35, 0.6)
    off = random_perpendicular(rng, unit(rng.normal(size=3))) * rng.uniform(0, 0.4) * (R - rc)
    dc = np.sqrt((x - c[0] - off[0]) ** 2 + (y - c[1] - off[1]) ** 2 + (z - c[2] - off[2]) ** 2)
    fc = canvas.frac((dc - rc).astype(np.float32)) * label
    core = rng.uniform(10.0, 45.0) + 8.0 * tex
    return cur + fc * (core - cur)
