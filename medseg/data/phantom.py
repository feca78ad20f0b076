"""Deterministic chest-CT phantoms with exact ground truth (nodule labels, lung mask, JSON facts).

A phantom is a synthetic chest CT: body with subcutaneous fat, muscle, ribs, spine and sternum;
mediastinum with heart and aorta; two lungs (about -850 HU, smooth texture, denser posteriorly);
tapering branching vessel trees from the hila; an airway tree (trachea, main and lobar bronchi,
a few more generations); and nodules of known kind (solid, part-solid, ground-glass) and location
(isolated, juxta-vascular, juxta-pleural), 3-30 mm, lobulated. CT noise is correlated Gaussian.

Everything is modelled in world millimetres, so any (anisotropic) spacing and orientation gives
the same anatomy. The label map is the ground truth: each nodule's ``volume_mm3`` in ``info`` is
its voxel count on that map times the voxel volume, and its centre maps to one of its voxels.

Speed: dense work runs slice by slice on 2D maps; every tube and nodule is drawn only inside its
own bounding box, so a 512x512x300 phantom takes seconds, not minutes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medseg.io.atomic import write_json_atomic
from medseg.io.volume import Volume
from medseg.io.writers import write_volume

__all__ = [
    "KINDS",
    "LOCATIONS",
    "NoduleSpec",
    "Phantom",
    "make_phantom",
    "save_phantom",
]

KINDS = ("solid", "part-solid", "ground-glass")
LOCATIONS = ("isolated", "juxta-vascular", "juxta-pleural")

#: Labels of the (in-memory only) ``anatomy`` map.
SMALL_VESSEL, LARGE_VESSEL, AIRWAY, BONE = 1, 2, 3, 4
#: Vessels at least this thick (radius, mm) count as "large": isolated nodules keep clear of them.
_LARGE_VESSEL_RADIUS = 1.2

_HU_AIR = -1000.0
_HU_FAT = -95.0
_HU_SOFT = 40.0
_HU_MUSCLE = 50.0
_HU_BLOOD = 40.0
_HU_ORGAN = 55.0
_HU_LUNG = -865.0


@dataclass(frozen=True)
class NoduleSpec:
    """What nodule to place: kind, location and nominal diameter (mm, 3-30)."""

    kind: str = "solid"
    location: str = "isolated"
    diameter_mm: float = 8.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"nodule kind must be one of {KINDS}, got {self.kind!r}")
        if self.location not in LOCATIONS:
            raise ValueError(f"nodule location must be one of {LOCATIONS}, got {self.location!r}")
        if not 1.0 <= float(self.diameter_mm) <= 40.0:
            raise ValueError(f"nodule diameter_mm must be within 1-40 mm, got {self.diameter_mm}")


def subsolid_nodules(seed: int, count: int = 8) -> list[NoduleSpec]:
    """A nodule list weighted to what models miss: half ground-glass, a quarter part-solid, most
    of them small (4.5-12 mm; the last quarter 12-22 mm), locations at random.

    The default random set (``make_phantom(nodules=None)``) is half solid with sizes up to 30 mm;
    whole-scan training on it sees few small subsolid nodules. Deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    kinds = ("ground-glass", "ground-glass", "part-solid", "solid")
    specs = []
    for i in range(count):
        location = LOCATIONS[int(rng.integers(len(LOCATIONS)))]
        small = i < count - count // 4
        diameter = float(np.round(rng.uniform(4.5, 12.0) if small else rng.uniform(12.0, 22.0), 1))
        specs.append(NoduleSpec(kinds[i % 4], location, diameter))
    return specs


@dataclass
class Phantom:
    """A synthetic chest CT with its ground truth, all on one voxel grid.

    ``ct`` int16 HU; ``nodules`` uint16 instance labels 1..N; ``lungs`` uint8 0/1 lung mask
    (nodules included); ``info`` JSON-able facts (geometry, ``nodules`` list). ``anatomy`` is an
    extra uint8 map (1 small vessel, 2 large vessel, 3 airway, 4 bone) kept in memory only.
    """

    ct: Volume
    nodules: Volume
    lungs: Volume
    info: dict[str, Any]
    anatomy: Volume | None = None


# --------------------------------------------------------------------------- public API
def make_phantom(
    seed: int = 0,
    shape: Sequence[int] = (256, 256, 128),
    spacing: Sequence[float] = (1.0, 1.0, 2.0),
    nodules: Iterable[NoduleSpec | dict[str, Any]] | None = None,
    orientation: str = "LPS",
    *,
    noise_hu: float = 25.0,
    noise_smoothing: float = 0.6,
    body_fraction: float = 0.9,
    max_tries: int = 400,
) -> Phantom:
    """Generate a chest-CT phantom; the same arguments always give identical arrays.

    Args:
        seed: random seed (anatomy, nodule placement and noise all derive from it).
        shape: array shape ``(i, j, k)``; ``k`` runs along the body axis.
        spacing: voxel size in mm along ``i, j, k`` (anisotropic is fine).
        nodules: ``None`` for a random set of 4-8 nodules mixing kinds, locations and sizes, or a
            list of :class:`NoduleSpec` / dicts with ``kind``, ``location``, ``diameter_mm``.
        orientation: three-letter axis code, ``"LPS"`` (default) or ``"RAS"`` or any other
            combination of L/R, P/A, S/I in that axis order; arrays are flipped consistently so
            the world-mm content is the same.
        noise_hu: standard deviation of the CT noise (HU); 0 for a noise-free image.
        noise_smoothing: in-plane Gaussian sigma (voxels) of the scanner blur and noise texture.
        body_fraction: body width as a fraction of the smaller field-of-view dimension; the
            whole anatomy (lungs included) scales with it.
        max_tries: placement attempts per nodule before giving up.

    Raises:
        ValueError: bad arguments, or an explicit nodule that cannot be placed.
    """
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8, got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers, got {spacing}")
    flips = _orientation_flips(orientation)
    specs = None if nodules is None else [_as_spec(n) for n in nodules]

    ss = np.random.SeedSequence(int(seed))
    rng_anat, rng_vessel, rng_nod, rng_noise, rng_tex = (np.random.default_rng(s) for s in ss.spawn(5))

    gen = _Generator(shape, spacing, body_fraction, rng_anat)
    gen.dense_pass(rng_tex)
    gen.draw_ribs()
    gen.draw_airways(rng_vessel)
    gen.draw_vessels(rng_vessel)
    gen.redraw_airway_lumen()
    if specs is None:
        placed = gen.place_random_nodules(rng_nod, max_tries)
    else:
        placed = [gen.place_nodule(rng_nod, spec, max_tries, required=True) for spec in specs]
    ct16 = gen.finish_ct(rng_noise, noise_hu, noise_smoothing)
    return gen.assemble(ct16, placed, flips, orientation.upper(), int(seed), noise_hu)


def save_phantom(phantom: Phantom, out_dir: str | os.PathLike[str], name: str,
                 *, anatomy: bool = False) -> dict[str, Path]:
    """Write ``<name>.nii.gz`` (CT), ``<name>_nodules.nii.gz``, ``<name>_lungs.nii.gz`` and
    ``<name>.json`` (``phantom.info`` plus the file names) atomically into ``out_dir``.

    With ``anatomy=True`` also ``<name>_anatomy.nii.gz`` (vessels, airways, bone).
    Returns the written paths keyed ``ct``, ``nodules``, ``lungs``, ``json`` (``anatomy``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "ct": out / f"{name}.nii.gz",
        "nodules": out / f"{name}_nodules.nii.gz",
        "lungs": out / f"{name}_lungs.nii.gz",
    }
    write_volume(phantom.ct, paths["ct"], dtype=np.int16)
    write_volume(phantom.nodules, paths["nodules"], dtype=np.uint16)
    write_volume(phantom.lungs, paths["lungs"], dtype=np.uint8)
    if anatomy and phantom.anatomy is not None:
        paths["anatomy"] = out / f"{name}_anatomy.nii.gz"
        write_volume(phantom.anatomy, paths["anatomy"], dtype=np.uint8)
    info = dict(phantom.info)
    info["files"] = {key: p.name for key, p in paths.items()}
    paths["json"] = out / f"{name}.json"
    write_json_atomic(paths["json"], info)
    return paths


# --------------------------------------------------------------------------- helpers
def _as_spec(item: NoduleSpec | dict[str, Any]) -> NoduleSpec:
    if isinstance(item, NoduleSpec):
        return item
    if isinstance(item, dict):
        return NoduleSpec(**item)
    raise ValueError(f"a nodule spec must be a NoduleSpec or a dict, got {type(item).__name__}")


def _orientation_flips(code: str) -> tuple[bool, bool, bool]:
    """Which canonical (LPS) axes to flip to store the arrays in orientation ``code``."""
    code = str(code).upper()
    allowed = ("LR", "PA", "SI")
    if len(code) != 3 or any(c not in pair for c, pair in zip(code, allowed)):
        raise ValueError(f"orientation must be 3 letters from L/R, P/A, S/I in that order (e.g. LPS, RAS), got {code!r}")
    return tuple(c != pair[0] for c, pair in zip(code, allowed))  # type: ignore[return-value]


def _unit(v: np.ndarray) -> np.ndarray:
    n = math.sqrt(float(v.dot(v)))
    return v / n if n > 0 else v


def _random_perpendicular(rng: np.random.Generator, d: np.ndarray) -> np.ndarray:
    while True:
        u = rng.normal(size=3)
        u -= u.dot(d) * d
        if u.dot(u) > 1e-6:
            return _unit(u)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _interp_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower neighbour index and weight for linear interpolation of ``n_in`` samples onto ``n_out``."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    return lo, (pos - lo).astype(np.float32)


def _upsample2d(c: np.ndarray, ix: tuple[np.ndarray, np.ndarray], iy: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Bilinear upsampling by gathers (no BLAS: its threads crawl on a busy machine)."""
    (lx, wx), (ly, wy) = ix, iy
    cx = c[lx] * (1 - wx)[:, None] + c[lx + 1] * wx[:, None]
    return cx[:, ly] * (1 - wy)[None, :] + cx[:, ly + 1] * wy[None, :]


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    """Squared normalised radius of an axis-aligned ellipse (<= 1 inside)."""
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2


def _seg_dist2d(x: np.ndarray, y: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """Distance (mm) from grid points to the 2D segment a-b."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    L2 = dx * dx + dy * dy
    t = np.clip(((x - a[0]) * dx + (y - a[1]) * dy) / L2, 0.0, 1.0) if L2 > 0 else 0.0
    return np.sqrt((x - a[0] - t * dx) ** 2 + (y - a[1] - t * dy) ** 2)


@dataclass
class _Segment:
    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float


@dataclass
class _Placed:
    spec: NoduleSpec
    label: int
    voxels: int
    centre_lps: np.ndarray


# --------------------------------------------------------------------------- generator
class _Generator:
    """Builds one phantom on the canonical LPS grid (direction = identity, centred at 0)."""

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
        self.vessel_segments: list[_Segment] = []
        self.airway_segments: list[tuple[_Segment, float]] = []
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
        return (np.asarray(p) - self.origin) / self.spacing

    def in_lung(self, p: np.ndarray) -> bool:
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

    def tube(self, seg: _Segment, extra: float = 0.0) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray] | None:
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

    # ----------------------------------------------------------- dense, slice by slice
    def dense_pass(self, rng_tex: np.random.Generator) -> None:
        """Body, fat, muscle, spine, sternum, mediastinum, heart, aorta, organs and lungs.

        Works on the body's bounding box, slice by slice on 2D maps, and writes slabs of slices
        at once (the k axis is the fastest in memory).
        """
        s, (nx, ny, nz) = self.S, self.shape
        self.ct.fill(_HU_AIR)
        bd, cv, hx, sp = self.body, self.cavity, self.heart, self.spine
        xa, ya = self.axes[0], self.axes[1]
        bi = np.flatnonzero(np.abs(xa) <= bd["a"] + 2 * self.spacing[0])
        bj = np.flatnonzero(np.abs(ya - bd["cy"]) <= bd["b"] + 2 * self.spacing[1])
        if bi.size == 0 or bj.size == 0:
            return
        body_sl = (slice(int(bi[0]), int(bi[-1]) + 1), slice(int(bj[0]), int(bj[-1]) + 1))
        x = xa[body_sl[0]][:, None].astype(np.float32)
        y = ya[body_sl[1]][None, :].astype(np.float32)
        # Thoracic cavity box, relative to the body box: all the per-slice anatomy lives there.
        ci = np.flatnonzero(np.abs(x[:, 0]) <= cv["a"] + self.spacing[0])
        cj = np.flatnonzero(np.abs(y[0] - cv["cy"]) <= cv["b"] + self.spacing[1])
        cav_sl = (slice(int(ci[0]), int(ci[-1]) + 1), slice(int(cj[0]), int(cj[-1]) + 1))
        cx, cy = x[cav_sl[0]], y[:, cav_sl[1]]

        body = (_ellipse(x, y, 0, bd["cy"], bd["a"], bd["b"]) <= 1) & (y < bd["cy"] + 0.9 * bd["b"])
        inner = _ellipse(x, y, 0, bd["cy"], bd["a"] - bd["fat"], bd["b"] - bd["fat"]) <= 1
        wall = np.where(body, np.where(inner, _HU_MUSCLE, _HU_FAT), _HU_AIR).astype(np.float32)
        tex_gain = np.where(body, 6.0, 0.0).astype(np.float32)

        # Bone templates (sparse: flat indices and HU) for vertebra / disc, arch, sternum.
        dv = np.sqrt(x ** 2 + (y - sp["cy"]) ** 2)
        dc = np.sqrt(x ** 2 + (y - sp["canal_cy"]) ** 2)
        layers = {
            "vertebra": [(dv <= sp["r"] - 2.0, 260.0), (dv <= sp["r"], 750.0)],
            "disc": [(dv <= sp["r"], 90.0)],
            "arch": [(dc <= 8 * s, 25.0), (dc <= 13.5 * s, 600.0),
                     (_seg_dist2d(x, y, (0, 100 * s), (0, 114 * s)) <= 4.5 * s, 600.0)]
            + [(_seg_dist2d(x, y, (side * 9 * s, 86 * s), (side * 30 * s, 80 * s)) <= 5 * s, 550.0)
               for side in (-1, 1)],
        }
        st = _seg_dist2d(x, y, (-13 * s, -92 * s), (13 * s, -92 * s))
        layers["sternum"] = [(st <= 3.0 * s, 250.0), (st <= 5.5 * s, 650.0)]
        sparse = {}
        for name, parts in layers.items():
            val = np.full(x.shape[:1] + y.shape[1:], np.nan, np.float32)
            for m, v in parts:
                val[m & np.isnan(val)] = v
            idx = np.flatnonzero(~np.isnan(val))
            sparse[name] = (idx, val.ravel()[idx])

        def bones(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            idx = np.concatenate([sparse[n][0] for n in names])
            val = np.concatenate([sparse[n][1] for n in names])
            idx, first = np.unique(idx, return_index=True)  # earlier layers win
            val = val[first]
            return idx, val, idx[val > 200]

        bone_cache: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

        # Static maps on the cavity box.
        cavity = _ellipse(cx, cy, 0, cv["cy"], cv["a"], cv["b"]) <= 1
        spine_excl = np.sqrt(cx ** 2 + (cy - 66 * s) ** 2) <= 33 * s
        mediast = np.abs(cx) < 20 * s + 14 * s * np.clip(-(cy - 10 * s) / (70 * s), 0, 1)
        lung_ok = cavity & ~mediast & ~spine_excl
        rho2 = {side: _ellipse(cx, cy, c["cx"], c["cy"], c["a"], c["b"]) for side, c in self.lung_c.items()}
        under_dome = np.where(cx < 0, self.dome[-1] * (1 - np.clip(rho2[-1], 0, 1)),
                              self.dome[1] * (1 - np.clip(rho2[1], 0, 1))).astype(np.float32)
        lung_base = (_HU_LUNG + 45.0 * np.clip((cy + 70 * s) / (160 * s), 0, 1)).astype(np.float32)
        lung_base = np.broadcast_to(lung_base, cavity.shape)
        d_desc = np.sqrt((cx - 24 * s) ** 2 + (cy - 40 * s) ** 2)
        d_asc = np.sqrt((cx - 6 * s) ** 2 + (cy + 14 * s) ** 2)
        arch_t, arch_rz = 0.72, 0.07 * self.H
        asc_c, desc_c = np.array([6 * s, -14 * s]), np.array([24 * s, 40 * s])
        arch_u = _unit(desc_c - asc_c)
        arch_rh = float(np.linalg.norm(desc_c - asc_c)) / 2
        arch_a = (cx - asc_c[0]) * arch_u[0] + (cy - asc_c[1]) * arch_u[1] - arch_rh  # along the arch plane
        arch_b = -(cx - asc_c[0]) * arch_u[1] + (cy - asc_c[1]) * arch_u[0]  # across it

        # Smooth texture: coarse random field, interpolated bilinearly in each slice.
        cell = 9.0
        cshape = [max(3, int(math.ceil(n * sp_ / cell)) + 2) for n, sp_ in zip(self.shape, self.spacing)]
        coarse = ndimage.gaussian_filter(rng_tex.standard_normal(cshape), 0.8, mode="wrap").astype(np.float32)
        coarse /= coarse.std() or 1.0
        ix = tuple(a[body_sl[0]] for a in _interp_weights(nx, cshape[0]))
        iy = tuple(a[body_sl[1]] for a in _interp_weights(ny, cshape[1]))
        zpos = np.linspace(0, cshape[2] - 1.0, nz)

        slab = 16
        bshape = wall.shape
        for k0 in range(0, nz, slab):
            k1 = min(nz, k0 + slab)
            buf = np.empty((k1 - k0, *bshape), np.float32)
            lbuf = np.zeros((k1 - k0, *bshape), np.uint8)
            bbuf = np.zeros((k1 - k0, *bshape), np.uint8)
            for k in range(k0, k1):
                z = float(self.axes[2][k])
                t = self.t_of(z)
                kz = min(int(zpos[k]), cshape[2] - 2)
                wz = np.float32(zpos[k] - kz)
                tex = _upsample2d((1 - wz) * coarse[:, :, kz] + wz * coarse[:, :, kz + 1], ix, iy)
                sl = buf[k - k0]
                np.multiply(tex, tex_gain, out=sl)
                sl += wall
                cav = sl[cav_sl]
                ctex = tex[cav_sl]
                # Cavity content: neck tissue above the apex, abdominal organs under the
                # diaphragm, mediastinal fat in between.
                if t > 1.02:
                    cav[cavity] = _HU_SOFT + 6.0 * ctex[cavity]
                else:
                    fill = np.where(t < under_dome + 0.02, _HU_ORGAN + 6.0 * ctex, _HU_FAT + 15.0 * ctex)
                    cav[cavity] = fill[cavity]
                excl = None
                hz = 1.0 - ((z - hx["zc"]) / hx["c"]) ** 2
                if hz > 0:
                    hs = math.sqrt(hz)
                    rh = _ellipse(cx, cy, hx["cx"], hx["cy"], hx["a"] * hs, hx["b"] * hs)
                    heart = rh <= 1
                    cav[heart] = _HU_BLOOD + 4.0 * ctex[heart]
                    excl = rh <= (1 + 5 * s / (hx["b"] * hs)) ** 2
                # Aorta: ascending and descending limbs, then the arch (a half ellipse in a
                # vertical plane; its distance in each slice gives the right section).
                aorta = aorta_x = None
                if t <= arch_t:
                    aorta, aorta_x = d_desc <= 12 * s, d_desc <= 16 * s
                    if t >= 0.36:
                        aorta, aorta_x = aorta | (d_asc <= 13 * s), aorta_x | (d_asc <= 17 * s)
                elif t <= arch_t + (arch_rz + 13 * s) / self.H:
                    c_ = (z - self.z_bot - arch_t * self.H) * arch_rh / arch_rz
                    da = np.sqrt(arch_b ** 2 + (np.sqrt(arch_a ** 2 + c_ ** 2) - arch_rh) ** 2)
                    aorta, aorta_x = da <= 12.5 * s, da <= 16.5 * s
                if aorta is not None:
                    aorta &= cavity
                    cav[aorta] = _HU_BLOOD
                    excl = aorta_x if excl is None else excl | aorta_x
                # Lungs: two ellipses shrinking to a dome at the apex, inside the thoracic
                # cavity, outside mediastinum, heart, aorta and spine, above the diaphragm.
                if 0.0 <= t <= 1.0:
                    g = 1.0 if t <= 0.55 else math.sqrt(max(0.0, 1.0 - ((t - 0.55) / 0.45) ** 2))
                    if g > 0.05:
                        lung = None
                        for c in self.lung_c.values():
                            e = _ellipse(cx, cy, c["cx"], c["cy"] + 14 * s * (1 - g), c["a"] * g, c["b"] * g) <= 1
                            lung = e if lung is None else lung | e
                        lung &= lung_ok
                        lung &= t >= under_dome
                        if excl is not None:
                            lung &= ~excl
                        cav[lung] = lung_base[lung] + 18.0 * ctex[lung]
                        lbuf[k - k0][cav_sl] = lung
                # Spine every slice (vertebra or disc, arch part of the time), sternum.
                phase = ((z / sp["period"]) + sp["phase"]) % 1.0
                key = ("disc",) if phase < 0.18 else ("vertebra",)
                if 0.3 < phase < 0.92:
                    key += ("arch",)
                if 0.3 <= t <= 1.05:
                    key += ("sternum",)
                if key not in bone_cache:
                    bone_cache[key] = bones(key)
                idx, val, hard = bone_cache[key]
                sl.ravel()[idx] = val
                bbuf[k - k0].ravel()[hard] = BONE
            box = (body_sl[0], body_sl[1], slice(k0, k1))
            self.ct[box] = buf.transpose(1, 2, 0)
            self.lungs[box] = lbuf.transpose(1, 2, 0)
            self.anatomy[box] = bbuf.transpose(1, 2, 0)

    # ----------------------------------------------------------- ribs
    def draw_ribs(self) -> None:
        s, rng = self.S, self.rng
        top = self.z_bot + 1.02 * self.H
        step = 1.15 * self.H / 11.0
        for n in range(12):
            z_post = top - n * step + rng.uniform(-0.1, 0.1) * step
            small = 0.78 + 0.22 * min(1.0, n / 3.0)
            a, b = 134 * s * small, 90 * s * small
            drop = (0.18 + 0.1 * min(1.0, n / 4.0)) * self.H
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
                    self.paint_bone(_Segment(np.asarray(p0), np.asarray(p1), r, r))

    def paint_bone(self, seg: _Segment) -> None:
        got = self.tube(seg)
        if got is None:
            return
        sl, sd, _ = got
        f = self.frac(sd)
        val = np.where(sd > -1.5, 850.0, 320.0).astype(np.float32)
        ok = self.lungs[sl] == 0
        cur = self.ct[sl]
        self.ct[sl] = np.where(ok, np.maximum(cur, cur + f * (val - cur)), cur)
        an = self.anatomy[sl]
        an[(sd <= 0) & ok] = BONE

    # ----------------------------------------------------------- trees
    def hilum(self, side: int, z: float) -> np.ndarray:
        """Medial edge of the lung on ``side`` at height ``z`` (world mm), a little inside the mediastinum."""
        k = int(np.clip(np.rint((z - self.origin[2]) / self.spacing[2]), 0, self.shape[2] - 1))
        j = int(np.clip(np.rint((12 * self.S - self.origin[1]) / self.spacing[1]), 0, self.shape[1] - 1))
        row = np.flatnonzero(self.lungs[:, j, k])
        xs = self.axes[0][row]
        xs = xs[np.sign(xs) == side]
        x_med = float(np.min(np.abs(xs))) if xs.size else 30 * self.S
        return np.array([side * max(x_med - 6 * self.S, 8 * self.S), 12 * self.S, z])

    def grow(self, rng: np.random.Generator, start: np.ndarray, direction: np.ndarray, radius: float,
             r_min: float, length: tuple[float, float], max_segments: int, origin: np.ndarray,
             in_lung_from: int = 1) -> list[_Segment]:
        """Grow a tapering, asymmetrically bifurcating tree that stays inside the lungs."""
        out: list[_Segment] = []
        stack = [(start, _unit(direction), radius, 0)]
        while stack and len(out) < max_segments:
            p, d, r, gen = stack.pop()
            seg = None
            for attempt in range(8):
                # Retry with bent directions, then shorter, before giving up on this branch.
                dd = d if attempt == 0 else _unit(d + 0.35 * attempt * _random_perpendicular(rng, d))
                L = (r * rng.uniform(*length) + 2.5 * self.S) * (1.0, 1.0, 0.8, 0.8, 0.6, 0.6, 0.4, 0.4)[attempt]
                e = p + dd * L
                if gen < in_lung_from or (self.in_lung(e) and self.in_lung((p + e) / 2)):
                    seg = _Segment(p, e, r, r * 0.95)
                    d = dd
                    break
            if seg is None:
                continue
            out.append(seg)
            r_end = seg.r1
            out_dir = _unit(seg.p1 - origin)
            for ratio, ang in ((rng.uniform(0.82, 0.9), rng.uniform(12, 28)),
                               (rng.uniform(0.62, 0.8), rng.uniform(35, 60))):
                rc = r_end * ratio
                if rc < r_min:
                    continue
                u = _random_perpendicular(rng, d)
                a = math.radians(ang)
                cd = _unit(math.cos(a) * d + math.sin(a) * u + 0.25 * out_dir)
                stack.append((seg.p1, cd, rc, gen + 1))
        return out

    def draw_airways(self, rng: np.random.Generator) -> None:
        s = self.S
        z_car = self.z_bot + 0.7 * self.H
        z_top = self.axes[2][-1] + self.spacing[2]
        trachea_r = 8.5 * s
        carina = np.array([0.0, 16 * s, z_car])
        segs = [_Segment(np.array([0.0, 8 * s, z_top]), carina, trachea_r, trachea_r * 0.95)]
        for side, (dz, r) in ((-1, (0.09, 6.5 * s)), (1, (0.14, 5.8 * s))):
            h = self.hilum(side, z_car - dz * self.H)
            h[1] = 16 * s
            segs.append(_Segment(carina.copy(), h, r, r * 0.9))
            for dirn in ([side * 0.3, -0.1, 1.0], [side * 0.6, -0.5, -0.6], [side * 0.4, 0.5, -1.0]):
                segs += self.grow(rng, h, np.asarray(dirn), r * 0.7, max(1.0 * s, 0.6 * self.spacing.min()),
                                  (3.0, 5.5), 40, h)
        for seg in segs:
            wall = 0.6 + 0.12 * max(seg.r0, seg.r1)
            got = self.tube(seg, extra=wall)
            if got is None:
                continue
            sl, sd, _ = got
            f = self.frac(sd)
            cur = self.ct[sl]
            ok = self.anatomy[sl] != BONE
            self.ct[sl] = np.where(ok, np.maximum(cur, cur + f * (20.0 - cur)), cur)
            self.anatomy[sl][(sd <= 0) & ok] = AIRWAY
            self.airway_segments.append((seg, wall))

    def redraw_airway_lumen(self) -> None:
        """Air inside the airways, painted after the vessels so the lumen stays clear."""
        for seg, _wall in self.airway_segments:
            got = self.tube(seg)
            if got is None:
                continue
            sl, sd, _ = got
            f = self.frac(sd)
            cur = self.ct[sl]
            ok = self.anatomy[sl] != BONE
            self.ct[sl] = np.where(ok, cur + f * (-990.0 - cur), cur)

    def draw_vessels(self, rng: np.random.Generator) -> None:
        s = self.S
        r_min = max(0.35, 0.2 * self.spacing.min())
        for side in (-1, 1):
            # Arteries leave the hilum higher, veins lower; each tree has several roots spread
            # over the lateral half-sphere so the whole lung fills with branches.
            for zt, r0 in ((0.62, 4.2), (0.45, 4.0)):
                h = self.hilum(side, self.z_bot + zt * self.H)
                for m in range(6):
                    dv = rng.normal(size=3)
                    dv[2] = 0.9 * math.cos(math.pi * (m + 0.5) / 6) + 0.3 * dv[2]  # spread up to down
                    dv[0] = side * (abs(dv[0]) + 0.5)
                    self.vessel_segments += self.grow(rng, h, dv, r0 * s, r_min, (4.0, 7.0), 1000, h)
        for seg in self.vessel_segments:
            got = self.tube(seg)
            if got is None:
                continue
            sl, sd, r = got
            cur = self.ct[sl]  # a view: painted in place (vessels stay in lungs and mediastinum)
            cur += self.frac(sd) * np.maximum(np.float32(_HU_BLOOD) - cur, 0.0)
            inside = (sd <= 0) & (self.lungs[sl] > 0)
            an = self.anatomy[sl]
            if min(seg.r0, seg.r1) >= _LARGE_VESSEL_RADIUS or max(seg.r0, seg.r1) < _LARGE_VESSEL_RADIUS:
                cls = LARGE_VESSEL if seg.r0 >= _LARGE_VESSEL_RADIUS else SMALL_VESSEL
            else:
                cls = np.where(r >= _LARGE_VESSEL_RADIUS, LARGE_VESSEL, SMALL_VESSEL).astype(np.uint8)[inside]
            an[inside] = np.maximum(an[inside], cls)

    # ----------------------------------------------------------- nodules
    def random_lung_point(self, rng: np.random.Generator) -> np.ndarray | None:
        for _ in range(2000):
            idx = rng.integers(0, self.shape)
            if self.lungs[tuple(idx)]:
                return self.origin + idx * self.spacing + rng.uniform(-0.5, 0.5, 3) * self.spacing
        return None

    def place_random_nodules(self, rng: np.random.Generator, max_tries: int) -> list[_Placed]:
        n = int(rng.integers(4, 9))
        kinds = list(rng.permutation(KINDS))
        locs = list(rng.permutation(LOCATIONS))
        max_d = float(np.clip(0.6 * self.lung_c[1]["a"], 3.0, 30.0))
        placed: list[_Placed] = []
        for i in range(n):
            if i < 3:  # the first three cover every kind and every location, at a visible size
                kind, loc = kinds[i], locs[i]
                d = math.exp(rng.uniform(math.log(5.0), math.log(max(5.0, min(25.0, max_d)))))
            else:
                kind = str(rng.choice(KINDS, p=[0.5, 0.2, 0.3]))
                loc = str(rng.choice(LOCATIONS, p=[0.4, 0.3, 0.3]))
                d = math.exp(rng.uniform(math.log(3.0), math.log(max(3.0, max_d))))
            for _ in range(4):
                got = self.place_nodule(rng, NoduleSpec(str(kind), str(loc), round(d, 1)), max_tries // 4, required=False)
                if got is not None:
                    placed.append(got)
                    break
                d = max(3.0, d * 0.8)
        return placed

    def place_nodule(self, rng: np.random.Generator, spec: NoduleSpec, max_tries: int,
                     required: bool) -> _Placed | None:
        R = spec.diameter_mm / 2.0
        margin = max(2.0, 1.5 * float(self.spacing.max()))
        big_vessels = [sg for sg in self.vessel_segments
                       if 0.9 <= sg.r1 <= 4.5 and self.in_lung(sg.p0) and self.in_lung(sg.p1)]
        for _ in range(max_tries):
            if spec.location == "juxta-vascular":
                if not big_vessels:
                    break
                sg = big_vessels[int(rng.integers(len(big_vessels)))]
                tt = rng.uniform(0.2, 0.8)
                p = sg.p0 + tt * (sg.p1 - sg.p0)
                rv = sg.r0 + tt * (sg.r1 - sg.r0)
                n = _random_perpendicular(rng, _unit(sg.p1 - sg.p0))
                c = p + n * (rv + R * rng.uniform(0.55, 0.85))
            elif spec.location == "juxta-pleural":
                p = self.random_lung_point(rng)
                if p is None:
                    break
                # March away from the midline: the costal pleura, not the mediastinum.
                dirn = rng.normal(size=3) * (1.0, 1.0, 0.3)
                dirn[0] = abs(dirn[0]) * (1.0 if p[0] >= 0 else -1.0)
                dirn = _unit(dirn)
                b = self.march_to_wall(p, dirn)
                if b is None:
                    continue
                c = b - dirn * R * rng.uniform(0.5, 0.8)
            else:
                c = self.random_lung_point(rng)
                if c is None:
                    break
            got = self.try_nodule(rng, spec, c, R, margin)
            if got is not None:
                return got
        if required:
            raise ValueError(f"could not place a {spec.diameter_mm:g} mm {spec.kind} {spec.location} nodule "
                             f"in this phantom (lungs too small for it at this shape/spacing?)")
        return None

    def march_to_wall(self, p: np.ndarray, d: np.ndarray) -> np.ndarray | None:
        step = 0.5 * float(self.spacing.min())
        q = p.copy()
        for _ in range(int(400 * self.S / step)):
            nxt = q + d * step
            if not self.in_lung(nxt):
                return q
            q = nxt
        return None

    def try_nodule(self, rng: np.random.Generator, spec: NoduleSpec, c: np.ndarray, R: float,
                   margin: float) -> _Placed | None:
        if not self.in_lung(c):
            return None
        half = R * 1.25 + margin + self.spacing.max()
        ci = self.to_index(c)
        hv = half / self.spacing
        if np.any(ci - hv < 0) or np.any(ci + hv > np.asarray(self.shape) - 1):
            return None  # keep the whole nodule (and its margin) inside the scan
        sl, (x, y, z) = self.box(c, half)
        # Lobulated ellipsoid: random rotation and axis ratios, plus a few surface bumps.
        Q = _random_rotation(rng)
        axes_scale = np.exp(rng.uniform(-0.12, 0.12, 3))
        axes_scale /= np.prod(axes_scale) ** (1 / 3)
        v = [x - c[0], y - c[1], z - c[2]]
        w = [(Q[0, a] * v[0] + Q[1, a] * v[1] + Q[2, a] * v[2]) / axes_scale[a] for a in range(3)]
        dist = np.sqrt(w[0] ** 2 + w[1] ** 2 + w[2] ** 2) + 1e-6
        lob = np.zeros_like(dist)
        for _ in range(int(rng.integers(2, 6))):
            u = _unit(rng.normal(size=3))
            cosang = (w[0] * u[0] + w[1] * u[1] + w[2] * u[2]) / dist
            lob += rng.uniform(0.04, 0.13) * np.exp((cosang - 1.0) / 0.15)
        sd = (dist - R * 0.97 * (1.0 + lob)).astype(np.float32)
        sphere_margin = dist <= R * 1.2 + margin

        lungs, an, labs = self.lungs[sl], self.anatomy[sl], self.labels[sl]
        if np.any(labs[sphere_margin]):
            return None  # keep clear of other nodules
        shape_in = sd <= 0
        if np.any(an[shape_in] == AIRWAY):
            return None
        if spec.location == "isolated":
            if not np.all(lungs[sphere_margin]) or np.any(an[sphere_margin] == LARGE_VESSEL):
                return None
        elif spec.location == "juxta-vascular":
            if not np.all(lungs[sphere_margin]):
                return None
        elif np.any(an[shape_in] == LARGE_VESSEL):
            return None
        allowed = (lungs > 0) & (an != AIRWAY)
        if spec.location == "juxta-vascular":
            allowed &= (an != SMALL_VESSEL) & (an != LARGE_VESSEL)
        label = shape_in & allowed
        if label.sum() < 0.45 * shape_in.sum() or not label.any():
            return None
        import cc3d

        label = cc3d.largest_k(label, k=1, connectivity=26) > 0
        touch = ndimage.binary_dilation(label, structure=np.ones((3, 3, 3), bool))
        if spec.location == "juxta-vascular" and not np.any(touch & ((an == SMALL_VESSEL) | (an == LARGE_VESSEL))):
            return None
        if spec.location == "juxta-pleural" and not np.any(touch & (lungs == 0)):
            return None
        if spec.location == "isolated" and np.any(touch & (lungs == 0)):
            return None

        # Intensity: max-composite so vessels through ground glass stay visible.
        f = self.frac(sd) * allowed
        cur = self.ct[sl]
        tex = ndimage.gaussian_filter(rng.standard_normal(sd.shape).astype(np.float32), 1.0)
        tex /= tex.std() or 1.0
        if spec.kind == "solid":
            val = rng.uniform(0.0, 50.0) + 10.0 * tex
            new = cur + f * (val - cur)
        else:
            val = rng.uniform(-650.0, -560.0) + 35.0 * tex
            new = cur + f * (val - cur)
            if spec.kind == "part-solid":
                rc = R * rng.uniform(0.35, 0.6)
                off = _random_perpendicular(rng, _unit(rng.normal(size=3))) * rng.uniform(0, 0.4) * (R - rc)
                dc = np.sqrt((x - c[0] - off[0]) ** 2 + (y - c[1] - off[1]) ** 2 + (z - c[2] - off[2]) ** 2)
                fc = self.frac((dc - rc).astype(np.float32)) * label
                core = rng.uniform(10.0, 45.0) + 8.0 * tex
                new = np.maximum(new, cur + fc * (core - cur))
        self.ct[sl] = np.maximum(cur, new)
        label_id = int(self.labels.max()) + 1
        labs[label] = label_id
        # Centre: the label's centroid, or its voxel closest to it if the centroid falls outside.
        idx = np.argwhere(label)
        cen = idx.mean(axis=0)
        near = np.rint(cen).astype(int)
        if not label[tuple(near)]:
            near = idx[np.argmin(((idx - cen) ** 2).sum(axis=1))]
        # Keep the centre clearly inside that voxel so rounding (any orientation) finds it.
        cen = near + np.clip(cen - near, -0.4, 0.4)
        start = np.array([s_.start for s_ in sl])
        centre = self.origin + (start + cen) * self.spacing
        return _Placed(spec, label_id, int(label.sum()), centre)

    # ----------------------------------------------------------- noise, output
    def finish_ct(self, rng: np.random.Generator, noise_hu: float, smoothing: float) -> np.ndarray:
        """Add correlated Gaussian noise and convert to int16 HU.

        Noise comes from a pool of at most 32 independently drawn, in-plane smoothed slices; each
        slice of the scan takes one of them with a random circular shift, flip and sign. This
        keeps a 512x512x300 phantom to seconds (drawing and filtering 79 M normal samples is
        most of the cost otherwise); scans with no more slices than the pool get fully
        independent noise.
        """
        nx, ny, nz = self.shape
        out = np.empty(self.shape, dtype=np.int16)
        pool = None
        if noise_hu > 0:
            n_pool = min(nz, 32)
            pool = rng.standard_normal((n_pool, nx, ny), dtype=np.float32)
            gain = 1.0
            if smoothing > 0:
                pool = ndimage.gaussian_filter(pool, (0.0, smoothing, smoothing), mode="wrap")
                delta = np.zeros((1, 15, 15), np.float32)
                delta[0, 7, 7] = 1.0
                gain = 1.0 / float(np.sqrt((ndimage.gaussian_filter(delta, (0.0, smoothing, smoothing)) ** 2).sum()))
            pool *= np.float32(noise_hu * gain)
        slab = 16
        for k0 in range(0, nz, slab):
            k1 = min(nz, k0 + slab)
            part = self.ct[:, :, k0:k1]
            if pool is not None:
                noise = np.empty((nx, ny, k1 - k0), np.float32)
                for k in range(k0, k1):
                    if nz <= len(pool):
                        src = pool[k]
                    else:
                        src = np.roll(pool[int(rng.integers(len(pool)))],
                                      (int(rng.integers(nx)), int(rng.integers(ny))), axis=(0, 1))
                        if rng.random() < 0.5:
                            src = src[::-1]
                        if rng.random() < 0.5:
                            src = src[:, ::-1]
                        if rng.random() < 0.5:
                            src = -src
                    noise[:, :, k - k0] = src
                part = part + noise
            out[:, :, k0:k1] = np.clip(np.rint(part), -1024, 3071)
        self.ct = None  # type: ignore[assignment]  # free the float volume early
        return out

    def assemble(self, ct16: np.ndarray, placed: list[_Placed], flips: tuple[bool, bool, bool],
                 orientation: str, seed: int, noise_hu: float) -> Phantom:
        direction = np.diag([-1.0 if f else 1.0 for f in flips])
        corner = np.array([(n - 1) if f else 0 for n, f in zip(self.shape, flips)], dtype=float)
        origin = self.origin + corner * self.spacing

        def store(a: np.ndarray) -> np.ndarray:
            axes = tuple(i for i, f in enumerate(flips) if f)
            return np.ascontiguousarray(np.flip(a, axis=axes)) if axes else a

        meta = {"phantom": True}
        ct = Volume(store(ct16), tuple(self.spacing), tuple(origin), direction, modality="CT", meta=meta)
        nod = ct.with_array(store(self.labels), modality=None)
        lungs = ct.with_array(store(self.lungs), modality=None)
        anatomy = ct.with_array(store(self.anatomy), modality=None)
        vv = float(np.prod(self.spacing))
        nodules = []
        for p in placed:
            vol_mm3 = p.voxels * vv
            ijk = np.rint(ct.world_to_index(p.centre_lps)).astype(int)
            nodules.append({
                "id": p.label,
                "kind": p.spec.kind,
                "location": p.spec.location,
                "centre_lps_mm": [round(float(v), 3) for v in p.centre_lps],
                "centre_ijk": [int(v) for v in ijk],
                "diameter_mm": round((6.0 * vol_mm3 / math.pi) ** (1.0 / 3.0), 3),
                "nominal_diameter_mm": float(p.spec.diameter_mm),
                "volume_mm3": round(vol_mm3, 4),
                "voxels": p.voxels,
            })
        info = {
            "generator": "medseg.data.phantom",
            "seed": seed,
            "size": list(self.shape),
            "spacing": [float(v) for v in self.spacing],
            "origin": [round(float(v), 6) for v in origin],
            "direction": [float(v) for v in direction.flatten()],
            "orientation": orientation,
            "modality": "CT",
            "noise_hu": float(noise_hu),
            "lung_volume_ml": round(float(self.lungs.sum()) * vv / 1000.0, 2),
            "diameter_definition": "equivalent-sphere diameter of the voxel-counted label volume",
            "nodules": nodules,
        }
        return Phantom(ct=ct, nodules=nod, lungs=lungs, info=info, anatomy=anatomy)
