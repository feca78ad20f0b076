"""The dense pass: body wall (fat, muscle), mediastinum, heart, aorta, abdominal organs and the
lungs, painted slice by slice on 2D maps of the body's bounding box; spine and sternum come
from :mod:`.bones`, the smooth tissue texture from a coarse random field.

Slabs of slices are written at once (the k axis is the fastest in memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .bones import SpineBones
from .canvas import Canvas
from .geometry import ellipse, interp_weights, unit, upsample2d
from .tissue import HU_AIR, HU_BLOOD, HU_FAT, HU_LUNG, HU_MUSCLE, HU_ORGAN, HU_SOFT

_SLAB = 16
Box2D = tuple[slice, slice]


def dense_pass(canvas: Canvas, rng_tex: np.random.Generator) -> None:
    """Body, fat, muscle, spine, sternum, mediastinum, heart, aorta, organs and lungs.

    Works on the body's bounding box, slice by slice on 2D maps, and writes slabs of slices
    at once (the k axis is the fastest in memory).
    """
    canvas.ct.fill(HU_AIR)
    boxes = _body_boxes(canvas)
    if boxes is None:
        return
    body_sl, cav_sl, x, y = boxes
    painter = _SlicePainter(canvas, x, y, cav_sl, _Texture(canvas, rng_tex, body_sl))
    nz = canvas.shape[2]
    bshape = painter.wall.shape
    for k0 in range(0, nz, _SLAB):
        k1 = min(nz, k0 + _SLAB)
        buf = np.empty((k1 - k0, *bshape), np.float32)
        lbuf = np.zeros((k1 - k0, *bshape), np.uint8)
        bbuf = np.zeros((k1 - k0, *bshape), np.uint8)
        for k in range(k0, k1):
            painter.paint(k, buf[k - k0], lbuf[k - k0], bbuf[k - k0])
        box = (body_sl[0], body_sl[1], slice(k0, k1))
        canvas.ct[box] = buf.transpose(1, 2, 0)
        canvas.lungs[box] = lbuf.transpose(1, 2, 0)
        canvas.anatomy[box] = bbuf.transpose(1, 2, 0)


def _body_boxes(canvas: Canvas) -> tuple[Box2D, Box2D, np.ndarray, np.ndarray] | None:
    """The body's bounding box (i, j slices), the thoracic cavity's box relative to it, and the
    body box's x (column vector) and y (row vector) coordinates, float32; None if no body in view."""
    bd, cv = canvas.body, canvas.cavity
    xa, ya = canvas.axes[0], canvas.axes[1]
    bi = np.flatnonzero(np.abs(xa) <= bd["a"] + 2 * canvas.spacing[0])
    bj = np.flatnonzero(np.abs(ya - bd["cy"]) <= bd["b"] + 2 * canvas.spacing[1])
    if bi.size == 0 or bj.size == 0:
        return None
    body_sl = (slice(int(bi[0]), int(bi[-1]) + 1), slice(int(bj[0]), int(bj[-1]) + 1))
    x = xa[body_sl[0]][:, None].astype(np.float32)
    y = ya[body_sl[1]][None, :].astype(np.float32)
    # Thoracic cavity box, relative to the body box: all the per-slice anatomy lives there.
    ci = np.flatnonzero(np.abs(x[:, 0]) <= cv["a"] + canvas.spacing[0])
    cj = np.flatnonzero(np.abs(y[0] - cv["cy"]) <= cv["b"] + canvas.spacing[1])
    cav_sl = (slice(int(ci[0]), int(ci[-1]) + 1), slice(int(cj[0]), int(cj[-1]) + 1))
    return body_sl, cav_sl, x, y


def _body_wall(canvas: Canvas, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HU of the body wall (muscle inside subcutaneous fat, air outside) and the texture gain."""
    bd = canvas.body
    body = (ellipse(x, y, 0, bd["cy"], bd["a"], bd["b"]) <= 1) & (y < bd["cy"] + 0.9 * bd["b"])
    inner = ellipse(x, y, 0, bd["cy"], bd["a"] - bd["fat"], bd["b"] - bd["fat"]) <= 1
    wall = np.where(body, np.where(inner, HU_MUSCLE, HU_FAT), HU_AIR).astype(np.float32)
    tex_gain = np.where(body, 6.0, 0.0).astype(np.float32)
    return wall, tex_gain


class _Texture:
    """Smooth texture: a coarse random field (9 mm cells), interpolated bilinearly in each slice."""

    def __init__(self, canvas: Canvas, rng: np.random.Generator, body_sl: Box2D) -> None:
        nx, ny, nz = canvas.shape
        cell = 9.0
        cshape = [max(3, int(math.ceil(n * sp_ / cell)) + 2) for n, sp_ in zip(canvas.shape, canvas.spacing)]
        coarse = ndimage.gaussian_filter(rng.standard_normal(cshape), 0.8, mode="wrap").astype(np.float32)
        coarse /= coarse.std() or 1.0
        self.coarse, self.nzc = coarse, cshape[2]
        self.ix = tuple(a[body_sl[0]] for a in interp_weights(nx, cshape[0]))
        self.iy = tuple(a[body_sl[1]] for a in interp_weights(ny, cshape[1]))
        self.zpos = np.linspace(0, cshape[2] - 1.0, nz)

    def slice(self, k: int) -> np.ndarray:
        """The texture of slice ``k`` on the body box (unit standard deviation)."""
        kz = min(int(self.zpos[k]), self.nzc - 2)
        wz = np.float32(self.zpos[k] - kz)
        coarse = self.coarse
        return upsample2d((1 - wz) * coarse[:, :, kz] + wz * coarse[:, :, kz + 1], self.ix, self.iy)


@dataclass
class _CavityMaps:
    """Static 2D maps on the thoracic-cavity box, the same in every slice."""

    cx: np.ndarray  # x (column vector) and y (row vector), mm
    cy: np.ndarray
    cavity: np.ndarray  # inside the thoracic cavity
    lung_ok: np.ndarray  # where lung may be: cavity less mediastinum and spine
    under_dome: np.ndarray  # diaphragm height (relative lung height t) over each point
    lung_base: np.ndarray  # lung HU before texture, denser posteriorly
    d_desc: np.ndarray  # distance to the descending / ascending aorta axis
    d_asc: np.ndarray
    arch_a: np.ndarray  # aortic arch plane coordinates: along it and across it
    arch_b: np.ndarray
    arch_rh: float  # arch half width (mm) and height (mm), start (relative lung height)
    arch_rz: float
    arch_t: float


def _cavity_maps(canvas: Canvas, cx: np.ndarray, cy: np.ndarray) -> _CavityMaps:
    """The static maps of the cavity box with coordinates ``cx``, ``cy``."""
    s, cv = canvas.S, canvas.cavity
    cavity = ellipse(cx, cy, 0, cv["cy"], cv["a"], cv["b"]) <= 1
    spine_excl = np.sqrt(cx ** 2 + (cy - 66 * s) ** 2) <= 33 * s
    mediast = np.abs(cx) < 20 * s + 14 * s * np.clip(-(cy - 10 * s) / (70 * s), 0, 1)
    lung_ok = cavity & ~mediast & ~spine_excl
    rho2 = {side: ellipse(cx, cy, c["cx"], c["cy"], c["a"], c["b"]) for side, c in canvas.lung_c.items()}
    under_dome = np.where(cx < 0, canvas.dome[-1] * (1 - np.clip(rho2[-1], 0, 1)),
                          canvas.dome[1] * (1 - np.clip(rho2[1], 0, 1))).astype(np.float32)
    lung_base = (HU_LUNG + 45.0 * np.clip((cy + 70 * s) / (160 * s), 0, 1)).astype(np.float32)
    lung_base = np.broadcast_to(lung_base, cavity.shape)
    d_desc = np.sqrt((cx - 24 * s) ** 2 + (cy - 40 * s) ** 2)
    d_asc = np.sqrt((cx - 6 * s) ** 2 + (cy + 14 * s) ** 2)
    arch_t, arch_rz = 0.72, 0.07 * canvas.H
    asc_c, desc_c = np.array([6 * s, -14 * s]), np.array([24 * s, 40 * s])
    arch_u = unit(desc_c - asc_c)
    arch_rh = float(np.linalg.norm(desc_c - asc_c)) / 2
    arch_a = (cx - asc_c[0]) * arch_u[0] + (cy - asc_c[1]) * arch_u[1] - arch_rh  # along the arch plane
    arch_b = -(cx - asc_c[0]) * arch_u[1] + (cy - asc_c[1]) * arch_u[0]  # across it
    return _CavityMaps(cx, cy, cavity, lung_ok, under_dome, lung_base, d_desc, d_asc, arch_a, arch_b,
                       arch_rh, arch_rz, arch_t)


class _SlicePainter:
    """Paints one axial slice of the body box: wall, cavity content, heart, aorta, lungs, bone."""

    def __init__(self, canvas: Canvas, x: np.ndarray, y: np.ndarray, cav_sl: Box2D, texture: _Texture) -> None:
        self.canvas, self.cav_sl, self.texture = canvas, cav_sl, texture
        self.wall, self.tex_gain = _body_wall(canvas, x, y)
        self.bones = SpineBones(canvas, x, y)
        self.maps = _cavity_maps(canvas, x[cav_sl[0]], y[:, cav_sl[1]])

    def paint(self, k: int, out: np.ndarray, lung_out: np.ndarray, bone_out: np.ndarray) -> None:
        """Slice ``k`` into ``out`` (HU), ``lung_out`` (lung mask) and ``bone_out`` (bone label)."""
        canvas, m = self.canvas, self.maps
        z = float(canvas.axes[2][k])
        t = canvas.t_of(z)
        tex = self.texture.slice(k)
        np.multiply(tex, self.tex_gain, out=out)
        out += self.wall
        cav = out[self.cav_sl]
        ctex = tex[self.cav_sl]
        _fill_cavity(m, cav, ctex, t)
        excl = _paint_heart(canvas, m, cav, ctex, z)
        excl = _paint_aorta(canvas, m, cav, z, t, excl)
        lung = _lung_section(canvas, m, t, excl)
        if lung is not None:
            cav[lung] = m.lung_base[lung] + 18.0 * ctex[lung]
            lung_out[self.cav_sl] = lung
        self.bones.paint(z, t, out, bone_out)


def _fill_cavity(m: _CavityMaps, cav: np.ndarray, ctex: np.ndarray, t: float) -> None:
    """Cavity content: neck tissue above the apex, abdominal organs under the diaphragm,
    mediastinal fat in between."""
    if t > 1.02:
        cav[m.cavity] = HU_SOFT + 6.0 * ctex[m.cavity]
    else:
        fill = np.where(t < m.under_dome + 0.02, HU_ORGAN + 6.0 * ctex, HU_FAT + 15.0 * ctex)
        cav[m.cavity] = fill[m.cavity]


def _paint_heart(canvas: Canvas, m: _CavityMaps, cav: np.ndarray, ctex: np.ndarray, z: float) -> np.ndarray | None:
    """The heart's section at height ``z`` (an ellipsoid); returns where lung must keep out, or None."""
    hx = canvas.heart
    hz = 1.0 - ((z - hx["zc"]) / hx["c"]) ** 2
    if not hz > 0:
        return None
    hs = math.sqrt(hz)
    rh = ellipse(m.cx, m.cy, hx["cx"], hx["cy"], hx["a"] * hs, hx["b"] * hs)
    heart = rh <= 1
    cav[heart] = HU_BLOOD + 4.0 * ctex[heart]
    return rh <= (1 + 5 * canvas.S / (hx["b"] * hs)) ** 2


def _paint_aorta(canvas: Canvas, m: _CavityMaps, cav: np.ndarray, z: float, t: float,
                 excl: np.ndarray | None) -> np.ndarray | None:
    """Aorta: ascending and descending limbs, then the arch (a half ellipse in a vertical plane;
    its distance in each slice gives the right section). Returns ``excl`` grown by its margin."""
    s = canvas.S
    aorta = aorta_x = None
    if t <= m.arch_t:
        aorta, aorta_x = m.d_desc <= 12 * s, m.d_desc <= 16 * s
        if t >= 0.36:
            aorta, aorta_x = aorta | (m.d_asc <= 13 * s), aorta_x | (m.d_asc <= 17 * s)
    elif t <= m.arch_t + (m.arch_rz + 13 * s) / canvas.H:
        c_ = (z - canvas.z_bot - m.arch_t * canvas.H) * m.arch_rh / m.arch_rz
        da = np.sqrt(m.arch_b ** 2 + (np.sqrt(m.arch_a ** 2 + c_ ** 2) - m.arch_rh) ** 2)
        aorta, aorta_x = da <= 12.5 * s, da <= 16.5 * s
    if aorta is None:
        return excl
    aorta &= m.cavity
    cav[aorta] = HU_BLOOD
    return aorta_x if excl is None else excl | aorta_x


def _lung_section(canvas: Canvas, m: _CavityMaps, t: float, excl: np.ndarray | None) -> np.ndarray | None:
    """Lungs: two ellipses shrinking to a dome at the apex, inside the thoracic cavity, outside
    mediastinum, heart, aorta and spine, above the diaphragm. None where the slice has none."""
    if not 0.0 <= t <= 1.0:
        return None
    g = 1.0 if t <= 0.55 else math.sqrt(max(0.0, 1.0 - ((t - 0.55) / 0.45) ** 2))
    if not g > 0.05:
        return None
    s = canvas.S
    lung = None
    for c in canvas.lung_c.values():
        e = ellipse(m.cx, m.cy, c["cx"], c["cy"] + 14 * s * (1 - g), c["a"] * g, c["b"] * g) <= 1
        lung = e if lung is None else lung | e
    lung &= m.lung_ok
    lung &= t >= m.under_dome
    if excl is not None:
        lung &= ~excl
    return lung
