"""The canvas one phantom is painted on: the canonical LPS grid, the subject's random proportions,
the volumes being painted, and the coordinate, box and tube queries every painting step uses."""

from __future__ import annotations

import numpy as np

from .geometry import Segment


class Canvas:
    """Builds one phantom on the canonical LPS grid (direction = identity, centred at 0).

    ``ct`` (float32 HU), ``lungs`` (0/1), ``anatomy`` (labels of :mod:`.tissue`) and ``labels``
    (nodule ids) are painted in place by the steps of :func:`~.make.make_phantom`; the trees
    grown on the way are kept in ``vessel_segments`` and ``airway_segments``.
    """

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                 body_fraction: float, rng: np.random.Generator) -> None:
        self.shape = shape
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.origin = -(np.asarray(shape) - 1) / 2.0 * self.spacing
        self.rng = rng
        fov = np.asarray(shape) * self.spacing
        # Anatomy is modelled for a 320 x 224 mm body; S scales it to the field of view.
        self.S = float(body_fraction * min(fov[0] / 320.0, fov[1] / 240.0))
        self.pv = float(np.prod(self.spacing) ** (1.0 / 3.0))  # partial-volume width (mm)
        self._grid = (tuple(map(float, self.origin)), tuple(map(float, self.spacing)), shape)
        self.axes = [self.origin[a] + self.spacing[a] * np.arange(shape[a]) for a in range(3)]
        # Lungs span most of the scan length, a little above centre; random per subject.
        fz = fov[2]
        self.H = float(fz * rng.uniform(0.74, 0.82))
        self.z_bot = float(self.axes[2][0] + fz * rng.uniform(0.06, 0.1))
        self.ct = np.empty(shape, dtype=np.float32)
        self.lungs = np.zeros(shape, dtype=np.uint8)
        self.anatomy = np.zeros(shape, dtype=np.uint8)
        self.labels = np.zeros(shape, dtype=np.uint16)
        self.vessel_segments: list[Segment] = []
        self.airway_segments: list[tuple[Segment, float]] = []
        j = rng.uniform
        s = self.S
        # Subject-specific proportions (mm, before scaling by S where noted).
        self.body = dict(a=160 * s * j(0.95, 1.03), b=110 * s * j(0.95, 1.03), cy=6 * s, fat=j(8, 18) * s)
        self.cavity = dict(a=124 * s, b=82 * s, cy=8 * s)
        self.lung_c = {side: dict(cx=side * 64 * s, cy=10 * s, a=60 * s * j(0.96, 1.04), b=78 * s * j(0.96, 1.04))
                       for side in (-1, 1)}
        self.dome = {-1: j(0.22, 0.3), 1: j(0.17, 0.24)}  # right (-x in LPS) dome higher: liver
        self.heart = dict(cx=14 * s, cy=-24 * s, a=62 * s, b=48 * s, zc=self.z_bot + 0.24 * self.H, c=0.27 * self.H)
        self.spine = dict(cy=62 * s, r=19 * s, canal_cy=92 * s, period=28 * s, phase=j(0, 1))

    # ----------------------------------------------------------- coordinates
    def t_of(self, z: float) -> float:
        """Relative height in the lungs: 0 at the deepest base, 1 at the apex."""
        return (z - self.z_bot) / self.H

    def to_index(self, p: np.ndarray) -> np.ndarray:
        """Continuous voxel index of the world point ``p`` (mm)."""
        return (np.asarray(p) - self.origin) / self.spacing

    def in_lung(self, p: np.ndarray) -> bool:
        """Whether the voxel nearest the world point ``p`` (mm) is lung."""
        # Plain Python arithmetic: called tens of thousands of times while growing trees.
        (ox, oy, oz), (sx, sy, sz), (nx, ny, nz) = self._grid
        i, j, k = round((p[0] - ox) / sx), round((p[1] - oy) / sy), round((p[2] - oz) / sz)
        return 0 <= i < nx and 0 <= j < ny and 0 <= k < nz and bool(self.lungs[i, j, k])

    def box(self, centre: np.ndarray, half_mm: np.ndarray | float) -> tuple[tuple[slice, ...], list[np.ndarray]] | None:
        """Index slices of the box ``centre +- half_mm`` and its voxel coordinates (mm, broadcastable)."""
        lo = np.floor((np.asarray(centre) - half_mm - self.origin) / self.spacing).astype(int)
        hi = np.ceil((np.asarray(centre) + half_mm - self.origin) / self.spacing).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.shape)
        if np.any(hi <= lo):
            return None
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        coords = [
            self.axes[0][sl[0]][:, None, None],
            self.axes[1][sl[1]][None, :, None],
            self.axes[2][sl[2]][None, None, :],
        ]
        return sl, coords

    def tube(self, seg: Segment, extra: float = 0.0) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray] | None:
        """Signed distance (mm) to a tapering tube (radius r0 -> r1, plus ``extra``) inside its box.

        Also returns the radius along the tube at each voxel's closest point.
        """
        p0, p1 = seg.p0, seg.p1
        pad = max(seg.r0, seg.r1) + extra + self.pv  # the partial-volume edge ends within pv/2
        lo = np.minimum(p0, p1) - pad
        hi = np.maximum(p0, p1) + pad
        got = self.box((lo + hi) / 2, (hi - lo) / 2)
        if got is None:
            return None
        sl, (x, y, z) = got
        d = (p1 - p0).astype(np.float32)
        L2 = float(d.dot(d)) or 1e-9
        # float32 and 1D factors where possible: there are thousands of these small boxes.
        dx, dy, dz = (x - p0[0]).astype(np.float32), (y - p0[1]).astype(np.float32), (z - p0[2]).astype(np.float32)
        vd = (dx * d[0] + dy * d[1]) + dz * d[2]
        t = np.clip(vd / L2, 0.0, 1.0)
        dist2 = (dx * dx + dy * dy) + dz * dz - t * (2 * vd - t * L2)
        dist = np.sqrt(np.maximum(dist2, 0.0))
        r = seg.r0 + t * np.float32(seg.r1 - seg.r0)
        return sl, dist - r - np.float32(extra), r

    def frac(self, sd: np.ndarray) -> np.ndarray:
        """Partial-volume fraction of an object with signed distance ``sd`` (mm) at each voxel."""
        return np.clip(np.float32(0.5) - sd * np.float32(1.0 / self.pv), 0.0, 1.0).astype(np.float32, copy=False)
