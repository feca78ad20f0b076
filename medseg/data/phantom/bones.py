"""Bone: spine (vertebrae, discs, arches) and sternum templates for the dense pass, and the ribs."""

from __future__ import annotations

import math

import numpy as np

from .canvas import Canvas
from .geometry import Segment, seg_dist2d
from .tissue import BONE

#: Flat indices into a body-box slice, their HU, and the indices that count as (hard) bone.
BoneSlice = tuple[np.ndarray, np.ndarray, np.ndarray]


class SpineBones:
    """Sparse 2D templates (flat indices and HU) of vertebra / disc, arch and sternum on the body
    box, combined per slice by where the slice falls in the spine's period."""

    def __init__(self, canvas: Canvas, x: np.ndarray, y: np.ndarray) -> None:
        s, sp = canvas.S, canvas.spine
        self.period, self.phase = sp["period"], sp["phase"]
        dv = np.sqrt(x ** 2 + (y - sp["cy"]) ** 2)
        dc = np.sqrt(x ** 2 + (y - sp["canal_cy"]) ** 2)
        layers = {
            "vertebra": [(dv <= sp["r"] - 2.0, 260.0), (dv <= sp["r"], 750.0)],
            "disc": [(dv <= sp["r"], 90.0)],
            "arch": [(dc <= 8 * s, 25.0), (dc <= 13.5 * s, 600.0),
                     (seg_dist2d(x, y, (0, 100 * s), (0, 114 * s)) <= 4.5 * s, 600.0)]
            + [(seg_dist2d(x, y, (side * 9 * s, 86 * s), (side * 30 * s, 80 * s)) <= 5 * s, 550.0)
               for side in (-1, 1)],
        }
        st = seg_dist2d(x, y, (-13 * s, -92 * s), (13 * s, -92 * s))
        layers["sternum"] = [(st <= 3.0 * s, 250.0), (st <= 5.5 * s, 650.0)]
        self.sparse: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, parts in layers.items():
            val = np.full(x.shape[:1] + y.shape[1:], np.nan, np.float32)
            for m, v in parts:
                val[m & np.isnan(val)] = v
            idx = np.flatnonzero(~np.isnan(val))
            self.sparse[name] = (idx, val.ravel()[idx])
        self._cache: dict[tuple[str, ...], BoneSlice] = {}

    def combine(self, names: tuple[str, ...]) -> BoneSlice:
        """The templates ``names`` merged into one (earlier layers win), cached."""
        if names not in self._cache:
            idx = np.concatenate([self.sparse[n][0] for n in names])
            val = np.concatenate([self.sparse[n][1] for n in names])
            idx, first = np.unique(idx, return_index=True)  # earlier layers win
            val = val[first]
            self._cache[names] = (idx, val, idx[val > 200])
        return self._cache[names]

    def paint(self, z: float, t: float, out: np.ndarray, bone_out: np.ndarray) -> None:
        """Spine every slice (vertebra or disc, arch part of the time), sternum along the lungs.

        ``out`` (HU) and ``bone_out`` (anatomy labels) are one contiguous body-box slice each.
        """
        phase = ((z / self.period) + self.phase) % 1.0
        key = ("disc",) if phase < 0.18 else ("vertebra",)
        if 0.3 < phase < 0.92:
            key += ("arch",)
        if 0.3 <= t <= 1.05:
            key += ("sternum",)
        idx, val, hard = self.combine(key)
        out.ravel()[idx] = val
        bone_out.ravel()[hard] = BONE


def draw_ribs(canvas: Canvas) -> None:
    """Twelve pairs of ribs, each a chain of tubes from the spine round the chest wall, sloping down."""
    s, rng = canvas.S, canvas.rng
    top = canvas.z_bot + 1.02 * canvas.H
    step = 1.15 * canvas.H / 11.0
    for n in range(12):
        z_post = top - n * step + rng.uniform(-0.1, 0.1) * step
        small = 0.78 + 0.22 * min(1.0, n / 3.0)
        a, b = 134 * s * small, 90 * s * small
        drop = (0.18 + 0.1 * min(1.0, n / 4.0)) * canvas.H
        for side in (-1, 1):
            thetas = np.deg2rad(np.linspace(80, -45 if n < 7 else -20, 16))
            pts = []
            for th in thetas:
                frac = (np.deg2rad(80) - th) / np.deg2rad(125)
                pts.append([side * a * math.cos(th), 8 * s + b * math.sin(th), z_post - drop * frac ** 1.3])
            neck = [side * 26 * s, 82 * s, z_post + 2 * s]
            pts = [neck, *pts]
            r = 4.2 * s
            for p0, p1 in zip(pts[:-1], pts[1:]):
                paint_bone(canvas, Segment(np.asarray(p0), np.asarray(p1), r, r))


def paint_bone(canvas: Canvas, seg: Segment) -> None:
    """One bone tube (cortex 850 HU, marrow 320 HU), outside the lungs."""
    got = canvas.tube(seg)
    if got is None:
        return
    sl, sd, _ = got
    f = canvas.frac(sd)
    val = np.where(sd > -1.5, 850.0, 320.0).astype(np.float32)
    ok = canvas.lungs[sl] == 0
    cur = canvas.ct[sl]
    canvas.ct[sl] = np.where(ok, np.maximum(cur, cur + f * (val - cur)), cur)
    an = canvas.anatomy[sl]
    an[(sd <= 0) & ok] = BONE
