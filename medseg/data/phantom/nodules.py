"""Where nodules go: the random default set, candidate centres for each location, the clearance
and contact rules, labelling and the reported centre. Shapes and intensities are in
:mod:`.nodule_shape`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .canvas import Canvas
from .geometry import Segment, random_perpendicular, unit
from .nodule_shape import lobulated_shape, paint_nodule
from .specs import KINDS, LOCATIONS, NoduleSpec
from .tissue import AIRWAY, LARGE_VESSEL, SMALL_VESSEL


@dataclass
class Placed:
    """A nodule drawn into the phantom: its spec, label id, voxel count and centre (LPS mm)."""

    spec: NoduleSpec
    label: int
    voxels: int
    centre_lps: np.ndarray


def random_lung_point(canvas: Canvas, rng: np.random.Generator) -> np.ndarray | None:
    """A random point (mm) in a random lung voxel; None if 2000 draws find no lung."""
    for _ in range(2000):
        idx = rng.integers(0, canvas.shape)
        if canvas.lungs[tuple(idx)]:
            return canvas.origin + idx * canvas.spacing + rng.uniform(-0.5, 0.5, 3) * canvas.spacing
    return None


def place_random_nodules(canvas: Canvas, rng: np.random.Generator, max_tries: int) -> list[Placed]:
    """The default random set: 4-8 nodules, the first three covering every kind and location."""
    n = int(rng.integers(4, 9))
    kinds = list(rng.permutation(KINDS))
    locs = list(rng.permutation(LOCATIONS))
    max_d = float(np.clip(0.6 * canvas.lung_c[1]["a"], 3.0, 30.0))
    placed: list[Placed] = []
    for i in range(n):
        if i < 3:  # the first three cover every kind and every location, at a visible size
            kind, loc = kinds[i], locs[i]
            d = math.exp(rng.uniform(math.log(5.0), math.log(max(5.0, min(25.0, max_d)))))
        else:
            kind = str(rng.choice(KINDS, p=[0.5, 0.2, 0.3]))
            loc = str(rng.choice(LOCATIONS, p=[0.4, 0.3, 0.3]))
            d = math.exp(rng.uniform(math.log(3.0), math.log(max(3.0, max_d))))
        for _ in range(4):
            got = place_nodule(canvas, rng, NoduleSpec(str(kind), str(loc), round(d, 1)), max_tries // 4,
                               required=False)
            if got is not None:
                placed.append(got)
                break
            d = max(3.0, d * 0.8)
    return placed


def place_nodule(canvas: Canvas, rng: np.random.Generator, spec: NoduleSpec, max_tries: int,
                 required: bool) -> Placed | None:
    """Place one nodule of ``spec`` within ``max_tries`` attempts.

    Raises:
        ValueError: it found no room and ``required`` is set (otherwise None).
    """
    R = spec.diameter_mm / 2.0
    margin = max(2.0, 1.5 * float(canvas.spacing.max()))
    big_vessels = [sg for sg in canvas.vessel_segments
                   if 0.9 <= sg.r1 <= 4.5 and canvas.in_lung(sg.p0) and canvas.in_lung(sg.p1)]
    for _ in range(max_tries):
        c, stop = _candidate_centre(canvas, rng, spec, R, big_vessels)
        if stop:
            break
        if c is None:
            continue
        got = try_nodule(canvas, rng, spec, c, R, margin)
        if got is not None:
            return got
    if required:
        raise ValueError(f"could not place a {spec.diameter_mm:g} mm {spec.kind} {spec.location} nodule "
                         f"in this phantom (lungs too small for it at this shape/spacing?)")
    return None


def _candidate_centre(canvas: Canvas, rng: np.random.Generator, spec: NoduleSpec, R: float,
                      big_vessels: list[Segment]) -> tuple[np.ndarray | None, bool]:
    """A centre (mm) to try for ``spec.location``, as ``(centre, False)``; ``(None, False)`` to
    draw again; ``(None, True)`` when there is nowhere to look (no vessels, no lung found)."""
    if spec.location == "juxta-vascular":
        if not big_vessels:
            return None, True
        sg = big_vessels[int(rng.integers(len(big_vessels)))]
        tt = rng.uniform(0.2, 0.8)
        p = sg.p0 + tt * (sg.p1 - sg.p0)
        rv = sg.r0 + tt * (sg.r1 - sg.r0)
        n = random_perpendicular(rng, unit(sg.p1 - sg.p0))
        return p + n * (rv + R * rng.uniform(0.55, 0.85)), False
    if spec.location == "juxta-pleural":
        p = random_lung_point(canvas, rng)
        if p is None:
            return None, True
        # March away from the midline: the costal pleura, not the mediastinum.
        dirn = rng.normal(size=3) * (1.0, 1.0, 0.3)
        dirn[0] = abs(dirn[0]) * (1.0 if p[0] >= 0 else -1.0)
        dirn = unit(dirn)
        b = march_to_wall(canvas, p, dirn)
        if b is None:
            return None, False
        return b - dirn * R * rng.uniform(0.5, 0.8), False
    c = random_lung_point(canvas, rng)
    return c, c is None


def march_to_wall(canvas: Canvas, p: np.ndarray, d: np.ndarray) -> np.ndarray | None:
    """The last lung point (mm) stepping from ``p`` along ``d``; None if no wall within reach."""
    step = 0.5 * float(canvas.spacing.min())
    q = p.copy()
    for _ in range(int(400 * canvas.S / step)):
        nxt = q + d * step
        if not canvas.in_lung(nxt):
            return q
        q = nxt
    return None


def try_nodule(canvas: Canvas, rng: np.random.Generator, spec: NoduleSpec, c: np.ndarray, R: float,
               margin: float) -> Placed | None:
    """Draw a nodule of ``spec`` centred at ``c`` (mm) if it fits its location's rules, else None."""
    got = _nodule_box(canvas, c, R, margin)
    if got is None:
        return None
    sl, coords = got
    sd, sphere_margin = lobulated_shape(rng, c, R, coords, margin)
    got_label = _nodule_label(canvas, spec, sl, sd, sphere_margin)
    if got_label is None:
        return None
    label, allowed = got_label
    paint_nodule(canvas, rng, spec, sl, sd, allowed, label, c, R, coords)
    label_id = int(canvas.labels.max()) + 1
    canvas.labels[sl][label] = label_id
    return Placed(spec, label_id, int(label.sum()), _label_centre(canvas, label, sl))


def _nodule_box(canvas: Canvas, c: np.ndarray, R: float,
                margin: float) -> tuple[tuple[slice, ...], list[np.ndarray]] | None:
    """The box (slices, voxel coordinates) a nodule at ``c`` is drawn in; None if ``c`` is not in
    lung or the whole nodule and its margin would not fit inside the scan."""
    if not canvas.in_lung(c):
        return None
    half = R * 1.25 + margin + canvas.spacing.max()
    ci = canvas.to_index(c)
    hv = half / canvas.spacing
    if np.any(ci - hv < 0) or np.any(ci + hv > np.asarray(canvas.shape) - 1):
        return None  # keep the whole nodule (and its margin) inside the scan
    return canvas.box(c, half)


def _nodule_label(canvas: Canvas, spec: NoduleSpec, sl: tuple[slice, ...], sd: np.ndarray,
                  sphere_margin: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The nodule's label mask on its box and where it may paint, or None if it breaks a rule."""
    lungs, an, labs = canvas.lungs[sl], canvas.anatomy[sl], canvas.labels[sl]
    if np.any(labs[sphere_margin]):
        return None  # keep clear of other nodules
    shape_in = sd <= 0
    if not _clear(spec.location, lungs, an, shape_in, sphere_margin):
        return None
    allowed = (lungs > 0) & (an != AIRWAY)
    if spec.location == "juxta-vascular":
        allowed &= (an != SMALL_VESSEL) & (an != LARGE_VESSEL)
    label = shape_in & allowed
    if label.sum() < 0.45 * shape_in.sum() or not label.any():
        return None
    import cc3d

    label = cc3d.largest_k(label, k=1, connectivity=26) > 0
    if not _touches_as_it_should(spec.location, label, lungs, an):
        return None
    return label, allowed


def _clear(location: str, lungs: np.ndarray, an: np.ndarray, shape_in: np.ndarray,
           sphere_margin: np.ndarray) -> bool:
    """Clearance before labelling: never an airway in the shape; isolated: lung all round and no
    large vessel near; juxta-vascular: lung all round; juxta-pleural: no large vessel in the shape."""
    if np.any(an[shape_in] == AIRWAY):
        return False
    if location == "isolated":
        return bool(np.all(lungs[sphere_margin]) and not np.any(an[sphere_margin] == LARGE_VESSEL))
    if location == "juxta-vascular":
        return bool(np.all(lungs[sphere_margin]))
    return not np.any(an[shape_in] == LARGE_VESSEL)


def _touches_as_it_should(location: str, label: np.ndarray, lungs: np.ndarray, an: np.ndarray) -> bool:
    """Contact after labelling: juxta-vascular touches a vessel, juxta-pleural touches the lung's
    edge, isolated does not."""
    touch = ndimage.binary_dilation(label, structure=np.ones((3, 3, 3), bool))
    if location == "juxta-vascular":
        return bool(np.any(touch & ((an == SMALL_VESSEL) | (an == LARGE_VESSEL))))
    if location == "juxta-pleural":
        return bool(np.any(touch & (lungs == 0)))
    return not np.any(touch & (lungs == 0))


def _label_centre(canvas: Canvas, label: np.ndarray, sl: tuple[slice, ...]) -> np.ndarray:
    """Centre (LPS mm): the label's centroid, or its voxel closest to it if the centroid falls outside."""
    idx = np.argwhere(label)
    cen = idx.mean(axis=0)
    near = np.rint(cen).astype(int)
    if not label[tuple(near)]:
        near = idx[np.argmin(((idx - cen) ** 2).sum(axis=1))]
    # Keep the centre clearly inside that voxel so rounding (any orientation) finds it.
    cen = near + np.clip(cen - near, -0.4, 0.4)
    start = np.array([s_.start for s_ in sl])
    return canvas.origin + (start + cen) * canvas.spacing
