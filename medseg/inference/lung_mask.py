"""Lung mask without a model: HU threshold, outside air, airways, closing and hole filling.

The work is done on a coarse grid (about 2.5 mm voxels), which keeps a 512x512x300 scan to a
couple of seconds on CPU; the mask is then brought back to the input grid by nearest neighbour.
The mask is used to choose where the network runs (and to drop findings outside the lung), so
it errs on the generous side: a 10 mm closing keeps juxta-pleural nodules inside.
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
#: Gas pockets: components with more than GAS_SHARE of their voxels below GAS_HU. Lung
#: parenchyma is near -800 HU (even emphysema rarely has 35 % of its volume below -950 HU).
GAS_HU = -950.0
GAS_SHARE = 0.35
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


@dataclass
class LungMaskResult:
    """The lung mask on the input grid and what was noticed on the way."""

    mask: np.ndarray  # uint8 0/1 on the input grid
    volume_ml: float
    warnings: list[str] = field(default_factory=list)


def ct_warning(volume: Volume) -> str | None:
    """A warning when ``volume`` does not look like a CT in Hounsfield units, else ``None``."""
    modality = (volume.modality or "").upper()
    if modality and modality != "CT":
        return f"input modality is {modality}, not CT: the nodule model expects CT in Hounsfield units"
    sample = np.asarray(volume.array[::4, ::4, ::2])
    lo, hi = np.percentile(sample, [0.5, 99.5])
    # Any CT field of view holds air (about -1000 HU) and soft tissue near 0 HU.
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
    """Mean over ``f``-sized blocks (edges padded by replication): a cheap low-pass downsample."""
    if f == (1, 1, 1):
        return array.astype(np.float32)
    pad = [(0, (-n) % k) for n, k in zip(array.shape, f)]
    a = np.pad(array, pad, mode="edge") if any(p[1] for p in pad) else array
    s = a.shape
    a = a.reshape(s[0] // f[0], f[0], s[1] // f[1], f[1], s[2] // f[2], f[2])
    return a.mean(axis=(1, 3, 5), dtype=np.float32)


def _fill_holes_2d(mask: np.ndarray, axis: int) -> np.ndarray:
    out = np.empty_like(mask)
    for idx in range(mask.shape[axis]):
        sl = [slice(None)] * 3
        sl[axis] = idx
        out[tuple(sl)] = ndimage.binary_fill_holes(mask[tuple(sl)])
    return out


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


def compute_lung_mask(volume: Volume) -> LungMaskResult:
    """Binary lung mask (both lungs, airways removed, juxta-pleural nodules kept) on the input grid.

    Returns an empty mask and a warning when no lung is found (e.g. an abdominal CT) or when the
    image does not look like CT.
    """
    import cc3d

    warnings: list[str] = []
    note = ct_warning(volume)
    if note:
        warnings.append(note)
        return LungMaskResult(np.zeros(volume.shape, np.uint8), 0.0, warnings + ["no lung mask computed"])

    f = _coarse_factors(volume.spacing)
    hu = _block_mean(np.asarray(volume.array), f)
    cs = np.asarray(volume.spacing) * np.asarray(f)
    voxel_ml = float(np.prod(cs)) / 1000.0
    axis = axial_axis(volume)
    # +z is superior in LPS: the head end is where index grows along +z
    head_at_end = volume.direction[2, axis] > 0

    low = hu < LUNG_HU
    labels = cc3d.connected_components(low, connectivity=6)
    # Outside air touches the in-plane borders of the field of view; lungs do not.
    border = set()
    for a in range(3):
        if a == axis:
            continue
        for idx in (0, low.shape[a] - 1):
            sl = [slice(None)] * 3
            sl[a] = idx
            border.update(np.unique(labels[tuple(sl)]).tolist())
    border.discard(0)
    keep = np.ones(int(labels.max()) + 1, bool)
    keep[0] = False
    keep[list(border)] = False
    candidates = keep[labels]
    # Body: everything not outside air, filled per slice; lungs must lie inside it.
    outside = (~keep[labels]) & low
    body = _fill_holes_2d(~outside, axis)
    candidates &= body

    candidates = _drop_gas(candidates, hu)
    candidates = _keep_large(candidates, voxel_ml)
    if not candidates.any():
        warnings.append("no lung found in this scan (not a chest CT?)")
        return LungMaskResult(np.zeros(volume.shape, np.uint8), 0.0, warnings)

    pixel_cm2 = float(np.prod([cs[a] for a in range(3) if a != axis])) / 100.0
    airways = _airways(hu, candidates, axis, head_at_end, pixel_cm2, voxel_ml)
    if airways.any():
        airways = ndimage.binary_dilation(airways, ndimage.generate_binary_structure(3, 1))
        candidates &= ~airways
        candidates = _keep_large(candidates, voxel_ml)

    # Closing on a padded grid so that lungs cut by the field of view are not eroded at the edge.
    # The coarse grid is near-isotropic, so alternating 6- and 26-neighbour steps approximate a
    # ball of CLOSING_MM at a fraction of the cost of a large structuring element.
    steps = max(1, int(round(CLOSING_MM / float(np.mean(cs)))))
    pad = steps + 1
    closed = np.pad(candidates, pad, mode="edge")
    elements = [ndimage.generate_binary_structure(3, 1), ndimage.generate_binary_structure(3, 3)]
    for n in range(steps):
        closed = ndimage.binary_dilation(closed, elements[n % 2])
    for n in range(steps):
        closed = ndimage.binary_erosion(closed, elements[n % 2], border_value=1)
    closed = closed[pad:-pad, pad:-pad, pad:-pad]
    closed = _fill_holes_2d(closed, axis) & body
    if airways.any():
        closed &= ~airways
    closed = _keep_large(closed, voxel_ml)

    full = _upsample(closed, f, volume.shape)
    vol_ml = float(full.sum()) * volume.voxel_volume_mm3 / 1000.0
    if vol_ml < PARTIAL_LUNG_ML:
        warnings.append(f"only {vol_ml:.0f} mL of lung found: the scan covers little of the chest")
    return LungMaskResult(full.astype(np.uint8), vol_ml, warnings)


def _drop_gas(mask: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """Remove bowel/stomach gas: pure air (< -950 HU) throughout, unlike lung parenchyma with vessels."""
    import cc3d

    if not mask.any():
        return mask
    labels = cc3d.connected_components(mask, connectivity=26)
    total = np.bincount(labels.ravel())
    very_dark = np.bincount(labels.ravel(), weights=(hu < GAS_HU).ravel(), minlength=len(total))
    gas = very_dark > GAS_SHARE * np.maximum(total, 1)
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
    if f == (1, 1, 1):
        return mask[: shape[0], : shape[1], : shape[2]]
    idx = [np.arange(n) // k for n, k in zip(shape, f)]
    return mask[np.ix_(*idx)]


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
