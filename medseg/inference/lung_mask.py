"""Lung mask without a model: HU threshold, body hull, airways, closing and hole filling.

The work is done on a coarse grid (about 2.5 mm voxels), which keeps a 512x512x300 scan to a
couple of seconds on CPU; the mask is then brought back to the input grid by nearest neighbour.

Outside air and lung air are told apart by where they lie, not by whether they touch the image
border: lung air lies inside the body's per-slice convex hull, outside air mostly outside it. So
lungs cut by the field of view (small-field reconstructions, cropped series, hemithorax crops,
scans with no outside air at all) are still found.

Two masks come back. ``mask`` is the aerated lung with a 10 mm closing (juxta-pleural nodules
stay inside); it is what is compared with reference lung labels. ``field`` is the lung field:
the per-slice convex hull of each lung, within the body. Masses up to about 100 mm against the
chest wall or the mediastinum lie in the field though an air threshold leaves them out of the
lung, so the network and the lesion filters work on the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medseg.io.volume import Volume

#: Air / lung parenchyma threshold (HU).
LUNG_HU = -400.0
#: Airway lumen threshold (HU): trachea and main bronchi are almost pure air.
AIRWAY_HU = -900.0
#: Gas pockets: components with more than GAS_SHARE of their voxels below GAS_HU and smaller than
#: GAS_MAX_ML. Lung parenchyma is near -800 HU; even severe emphysema has rarely half of its
#: coarse voxels below -950 HU, and a lung-sized pure-air component is a lung, not bowel gas.
GAS_HU = -950.0
GAS_SHARE = 0.35
GAS_MAX_ML = 1500.0
#: Outside air is pure air: a component with less than this share below GAS_HU is tissue-bearing
#: (lung), wherever it lies.
OUTSIDE_AIR_SHARE = 0.5
#: ... provided that this share of it lies in the body hull: air under the table, mixed with the
#: table's structure, lies wholly outside.
MIN_INSIDE_SHARE = 0.2
#: A low-HU component is lung (or airway) when at least this share of it lies in the body hull.
INSIDE_BODY_SHARE = 0.6
#: Less lung than this (mL) is no plausible lung: the scan is reported as such, never as 0 nodules.
NO_LUNG_ML = 100.0
#: Less lung than this (mL) means the scan covers only part of the chest (adult lungs: 4-6 L).
PARTIAL_LUNG_ML = 1000.0
#: Coarse working voxel size (mm).
COARSE_MM = 2.5
#: Closing radius (mm) that keeps nodules attached to the pleura inside the mask.
CLOSING_MM = 10.0
#: Smallest lung component kept (mL) and smallest share of the largest one.
MIN_COMPONENT_ML = 5.0
MIN_COMPONENT_SHARE = 0.05
#: An airway grown larger than this (mL) has leaked into the lung (emphysema): keep the trachea only.
MAX_AIRWAY_ML = 120.0
#: Lung pieces of a slice smaller than this (cm^2) get no hull of their own in the lung field.
FIELD_MIN_CM2 = 1.0


@dataclass
class LungMaskResult:
    """The lung mask and lung field on the input grid, and what was noticed on the way."""

    mask: np.ndarray  # uint8 0/1 on the input grid: aerated lung, 10 mm closing
    volume_ml: float
    warnings: list[str] = field(default_factory=list)
    #: uint8 0/1: per-slice convex hull of each lung within the body (None when no lung)
    field: np.ndarray | None = None

    @property
    def found(self) -> bool:
        """Whether the scan holds a plausible lung (at least ``NO_LUNG_ML``)."""
        return self.volume_ml >= NO_LUNG_ML


def ct_warning(volume: Volume) -> str | None:
    """A warning when ``volume`` does not look like a CT in Hounsfield units, else ``None``."""
    modality = (volume.modality or "").upper()
    if modality and modality != "CT":
        return f"input modality is {modality}, not CT: the nodule model expects CT in Hounsfield units"
    sample = np.asarray(volume.array[::4, ::4, ::2])
    lo, hi = np.percentile(sample, [0.5, 99.5])
    # Any chest CT holds air (about -1000 HU) and soft tissue near 0 HU.
    if lo > -700 or hi < -200 or hi > 5000:
        return (
            f"intensities {lo:.0f}..{hi:.0f} do not look like CT Hounsfield units "
            "(no air near -1000 HU): is this an MR or a rescaled image?"
        )
    return None


def axial_axis(volume: Volume) -> int:
    """The array axis closest to the patient's head-feet (world z) direction."""
    return int(np.argmax(np.abs(volume.direction[2, :])))


def _coarse_factors(spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(max(1, int(round(COARSE_MM / s))) for s in spacing)  # type: ignore[return-value]


def _block_mean(array: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """Mean over ``f``-sized blocks (edges padded by replication): a cheap low-pass downsample.
    One axis at a time: reducing contiguous trailing axes is several times faster than one
    reduction over three strided axes."""
    if f == (1, 1, 1):
        return array.astype(np.float32)
    pad = [(0, (-n) % k) for n, k in zip(array.shape, f)]
    a = np.pad(array, pad, mode="edge") if any(p[1] for p in pad) else array
    s = a.shape
    a = a.reshape(s[0], s[1], s[2] // f[2], f[2]).sum(axis=3, dtype=np.float32)
    a = a.reshape(s[0], s[1] // f[1], f[1], a.shape[2]).sum(axis=2)
    a = a.reshape(s[0] // f[0], f[0], a.shape[1], a.shape[2]).sum(axis=1)
    a /= np.float32(np.prod(f))
    return a


def _slices(shape: tuple[int, ...], axis: int):
    for idx in range(shape[axis]):
        sl = [slice(None)] * 3
        sl[axis] = idx
        yield tuple(sl)


def _fill_holes_2d(mask: np.ndarray, axis: int) -> np.ndarray:
    out = np.empty_like(mask)
    for sl in _slices(mask.shape, axis):
        out[sl] = ndimage.binary_fill_holes(mask[sl])
    return out


def _hull_2d(mask: np.ndarray) -> np.ndarray:
    from skimage.morphology import convex_hull_image

    if mask.sum() < 3:
        return mask.copy()
    return convex_hull_image(mask)


def body_hull(hu: np.ndarray, axis: int) -> np.ndarray:
    """Per-slice convex hull of the body: the largest 3D component of tissue (> ``LUNG_HU``).

    A 2-voxel opening first cuts thin shells (the table top, sheets) off the body."""
    import cc3d

    tissue = hu >= LUNG_HU
    opened = ndimage.binary_opening(tissue, ndimage.generate_binary_structure(3, 1), iterations=2)
    core = opened if opened.any() else tissue
    labels = cc3d.connected_components(core, connectivity=6)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    if counts.max() == 0:
        return np.zeros_like(tissue)
    body = labels == int(np.argmax(counts))
    hull = np.zeros_like(body)
    for sl in _slices(body.shape, axis):
        if body[sl].any():
            hull[sl] = _hull_2d(body[sl])
    return hull


def _inside_components(low: np.ndarray, hull: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """Low-HU components that are not outside air: those lying mostly inside the body hull (lungs,
    airways, bowel gas), and those of lung density wherever they lie (a field of view inside the
    chest cuts the lungs where no tissue bounds them). Outside air is pure air (< ``GAS_HU``)."""
    import cc3d

    labels = cc3d.connected_components(low, connectivity=6)
    total = np.maximum(np.bincount(labels.ravel()), 1)
    inside = np.bincount(labels.ravel(), weights=hull.ravel(), minlength=len(total))
    dark = np.bincount(labels.ravel(), weights=(hu < GAS_HU).ravel(), minlength=len(total))
    keep = (inside >= INSIDE_BODY_SHARE * total) | ((dark < OUTSIDE_AIR_SHARE * total) & (inside >= MIN_INSIDE_SHARE * total))
    keep[0] = False
    return keep[labels]


def _airways(hu: np.ndarray, lungs: np.ndarray, axis: int, head_at_end: bool, pixel_cm2: float,
             voxel_ml: float) -> np.ndarray:
    """Trachea and main bronchi: very dark air grown from the trachea seen above the lung apices."""
    import cc3d

    dark = (hu < AIRWAY_HU) & lungs
    if not dark.any():
        return np.zeros_like(lungs)
    other = tuple(a for a in range(3) if a != axis)
    present = np.nonzero(lungs.any(axis=other))[0]
    top = int(present[-1] if head_at_end else present[0])
    sl = [slice(None)] * 3
    sl[axis] = top
    # The top of the air column is the trachea only when it is a tube (< 6 cm^2 in-plane);
    # a scan that starts inside the lungs has no trachea to remove.
    if lungs[tuple(sl)].sum() * pixel_cm2 > 6.0:
        return np.zeros_like(lungs)
    labels = cc3d.connected_components(dark, connectivity=26)
    lab = labels[tuple(sl)]
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    if len(ids) == 0:
        return np.zeros_like(lungs)
    airway = labels == ids[np.argmax(counts)]
    if airway.sum() * voxel_ml > MAX_AIRWAY_ML:
        # leaked into emphysematous lung: keep only the part above the lungs proper
        airway = _top_part(airway, lungs, axis, head_at_end)
    return airway


def _top_part(airway: np.ndarray, lungs: np.ndarray, axis: int, head_at_end: bool) -> np.ndarray:
    """Keep the airway slices above the level where the lung mask gets wide (the apex)."""
    areas = lungs.sum(axis=tuple(a for a in range(3) if a != axis))
    big = np.nonzero(areas > 0.25 * areas.max())[0]
    out = airway.copy()
    sl = [slice(None)] * 3
    if head_at_end:
        sl[axis] = slice(0, big.max() + 1)
    else:
        sl[axis] = slice(big.min(), None)
    out[tuple(sl)] = False
    return out


@dataclass
class _Coarse:
    """The coarse working grid."""

    hu: np.ndarray
    factors: tuple[int, int, int]
    spacing: np.ndarray
    axis: int
    head_at_end: bool

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def pixel_cm2(self) -> float:
        return float(np.prod([self.spacing[a] for a in range(3) if a != self.axis])) / 100.0


def _coarse(volume: Volume) -> _Coarse:
    f = _coarse_factors(volume.spacing)
    axis = axial_axis(volume)
    # +z is superior in LPS: the head end is where index grows along +z
    return _Coarse(_block_mean(np.asarray(volume.array), f), f, np.asarray(volume.spacing) * np.asarray(f), axis,
                   bool(volume.direction[2, axis] > 0))


def compute_lung_mask(volume: Volume) -> LungMaskResult:
    """Binary lung mask (both lungs, airways removed, juxta-pleural nodules kept) and the lung
    field, on the input grid.

    When no plausible lung is found (e.g. an abdominal CT) or the image does not look like CT, the
    result says so: ``found`` is False and a warning names the reason.
    """
    note = ct_warning(volume)
    if note:
        return _empty(volume, [note, "no lung mask computed"])
    c = _coarse(volume)
    hull = body_hull(c.hu, c.axis)
    candidates = _inside_components(c.hu < LUNG_HU, hull, c.hu)
    candidates = _keep_large(_drop_gas(candidates, c.hu, c.voxel_ml), c.voxel_ml)
    if not candidates.any():
        return _empty(volume, ["no lung found in this scan (not a chest CT?)"])
    airways = _airways(c.hu, candidates, c.axis, c.head_at_end, c.pixel_cm2, c.voxel_ml)
    if airways.any():
        airways = ndimage.binary_dilation(airways, ndimage.generate_binary_structure(3, 1))
        candidates = _keep_large(candidates & ~airways, c.voxel_ml)
    region = hull | candidates  # the closing may not leave the body, nor cut lung the hull misses
    closed = _close(candidates, c) & region
    if airways.any():
        closed &= ~airways
    closed = _keep_large(closed, c.voxel_ml)
    lr_axis = int(np.argmax(np.abs(volume.direction[0, :])))
    lung_field = lung_field_of(closed, region, c.axis, lr_axis, c.pixel_cm2)
    full = _upsample(closed, c.factors, volume.shape)
    vol_ml = float(np.count_nonzero(full)) * volume.voxel_volume_mm3 / 1000.0
    warnings: list[str] = []
    if vol_ml < NO_LUNG_ML:
        warnings.append(f"no plausible lung in this scan (only {vol_ml:.0f} mL of lung-like air found)")
    elif vol_ml < PARTIAL_LUNG_ML:
        warnings.append(f"only {vol_ml:.0f} mL of lung found: the scan covers little of the chest")
    return LungMaskResult(np.ascontiguousarray(full), vol_ml, warnings,
                          np.ascontiguousarray(_upsample(lung_field, c.factors, volume.shape)))


def _empty(volume: Volume, warnings: list[str]) -> LungMaskResult:
    return LungMaskResult(np.zeros(volume.shape, np.uint8), 0.0, warnings, None)


def _close(mask: np.ndarray, c: _Coarse) -> np.ndarray:
    """CLOSING_MM closing and per-slice hole filling, on a grid padded by replication so that lungs
    cut by the field of view are not eroded at the edge. The coarse grid is near-isotropic, so
    alternating 6- and 26-neighbour steps approximate a ball at a fraction of its cost."""
    steps = max(1, int(round(CLOSING_MM / float(np.mean(c.spacing)))))
    pad = steps + 1
    closed = np.pad(mask, pad, mode="edge")
    elements = [ndimage.generate_binary_structure(3, 1), ndimage.generate_binary_structure(3, 3)]
    for n in range(steps):
        closed = ndimage.binary_dilation(closed, elements[n % 2])
    for n in range(steps):
        closed = ndimage.binary_erosion(closed, elements[n % 2], border_value=1)
    closed = closed[pad:-pad, pad:-pad, pad:-pad]
    return _fill_holes_2d(closed, c.axis)


def lung_field_of(lungs: np.ndarray, hull: np.ndarray, axis: int, lr_axis: int, pixel_cm2: float) -> np.ndarray:
    """Per-slice convex hull of each lung piece, within the body hull.

    Each 2D piece gets its own hull, so the mediastinum between two separate lungs stays out; a
    piece that spans both sides (lungs touching at the anterior junction) is split at the body's
    midline first."""
    import cc3d

    out = np.zeros_like(lungs)
    min_px = FIELD_MIN_CM2 / pixel_cm2
    lr = lr_axis if lr_axis < axis else lr_axis - 1  # the left-right axis of a 2D slice
    for sl in _slices(lungs.shape, axis):
        piece = lungs[sl]
        if not piece.any():
            continue
        labels = cc3d.connected_components(piece, connectivity=8)
        mid = _midline(hull[sl], lr)
        for lab in range(1, int(labels.max()) + 1):
            part = labels == lab
            if part.sum() < min_px:
                out[sl] |= part
                continue
            for side in _split_at(part, mid, lr):
                out[sl] |= _hull_2d(side)
        out[sl] &= hull[sl]
    return out | lungs


def _midline(body: np.ndarray, axis: int) -> int | None:
    cols = np.nonzero(body.any(axis=1 - axis))[0]
    return None if len(cols) == 0 else int((cols[0] + cols[-1]) // 2)


def _split_at(part: np.ndarray, mid: int | None, axis: int) -> list[np.ndarray]:
    """``part`` cut at index ``mid`` of ``axis`` when a good share of it lies on both sides."""
    if mid is None:
        return [part]
    a, b = part.copy(), part.copy()
    np.moveaxis(a, axis, 0)[mid:] = False
    np.moveaxis(b, axis, 0)[:mid] = False
    n = part.sum()
    if min(a.sum(), b.sum()) < 0.15 * n:
        return [part]
    return [a, b]


def _drop_gas(mask: np.ndarray, hu: np.ndarray, voxel_ml: float) -> np.ndarray:
    """Remove bowel/stomach gas: pure air (< -950 HU) throughout and smaller than a lung, unlike lung
    parenchyma with its vessels."""
    import cc3d

    if not mask.any():
        return mask
    labels = cc3d.connected_components(mask, connectivity=26)
    total = np.bincount(labels.ravel())
    very_dark = np.bincount(labels.ravel(), weights=(hu < GAS_HU).ravel(), minlength=len(total))
    gas = (very_dark > GAS_SHARE * np.maximum(total, 1)) & (total * voxel_ml < GAS_MAX_ML)
    gas[0] = False
    return mask & ~gas[labels]


def _keep_large(mask: np.ndarray, voxel_ml: float) -> np.ndarray:
    import cc3d

    if not mask.any():
        return mask
    labels = cc3d.connected_components(mask, connectivity=26)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    floor = max(MIN_COMPONENT_ML / voxel_ml, MIN_COMPONENT_SHARE * counts.max())
    return (counts >= floor)[labels] & mask


def _upsample(mask: np.ndarray, f: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling by integer factors, as uint8 0/1 (one broadcast copy)."""
    m = mask.astype(np.uint8, copy=False)
    if f == (1, 1, 1):
        return m[: shape[0], : shape[1], : shape[2]]
    n = m.shape
    up = np.broadcast_to(m[:, None, :, None, :, None], (n[0], f[0], n[1], f[1], n[2], f[2]))
    return up.reshape(n[0] * f[0], n[1] * f[1], n[2] * f[2])[: shape[0], : shape[1], : shape[2]]


def bounding_box(mask: np.ndarray, margin_vox: tuple[int, int, int] = (0, 0, 0)) -> tuple[slice, ...] | None:
    """Slices of the mask's bounding box grown by ``margin_vox`` (clipped), or ``None`` if empty."""
    if not mask.any():
        return None
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.nonzero(mask.any(axis=other))[0]
        lo = max(0, int(nz[0]) - margin_vox[axis])
        hi = min(mask.shape[axis], int(nz[-1]) + 1 + margin_vox[axis])
        out.append(slice(lo, hi))
    return tuple(out)
