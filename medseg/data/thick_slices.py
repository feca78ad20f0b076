"""Thick-slice versions of thin-slice scans: what a scanner reconstructing thicker slices records.

Real chest CT comes at 0.6-5 mm slices, while the LIDC crops the model learns from are mostly
1-2.5 mm. :func:`coarsen` averages each axis over the coarse voxels' widths (the slab a thick slice
integrates), so a thin crop becomes the same nodule as a 5 mm series would show it: partial
volume, a nodule of 6 mm on one or two slices. :func:`thick_slice_copy` adds a random slab phase
(where the first thick slice starts), so a nodule does not always fall on the same slab boundary.
``sample_data/make_thick_crops.py`` writes such copies of a crop set for training;
``benchmarks/lidc_accuracy.py --coarse-spacing`` measures accuracy on them.
"""

from __future__ import annotations

import numpy as np

from medseg.io import Volume


def _slab_matrix(n_fine: int, step: float) -> np.ndarray:
    """(n_coarse, n_fine) weights: each coarse voxel averages the fine voxels it overlaps, by overlap."""
    n_coarse = max(1, int(round(n_fine / step)))
    centre = (step - 1.0) / 2.0 + step * np.arange(n_coarse)  # in fine index units
    x = np.arange(n_fine, dtype=float)
    lo = np.maximum(x[None, :] - 0.5, centre[:, None] - step / 2.0)
    hi = np.minimum(x[None, :] + 0.5, centre[:, None] + step / 2.0)
    w = np.clip(hi - lo, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)  # a last voxel past the grid's end averages what is there


def coarsen(volume: Volume, spacing: tuple[float, float, float], binary: bool = False) -> Volume:
    """``volume`` as a scanner with coarser voxels would have recorded it.

    Each axis finer than ``spacing`` is averaged over the coarse voxels' widths (the slab a thick
    slice integrates), coarse voxels tiling the same extent from the first fine voxel's edge; axes
    already as coarse are left alone (a 0 in ``spacing`` leaves that axis alone too). A binary mask
    is averaged the same way and cut at 0.5: a coarse voxel is nodule when the nodule fills at least
    half of it, the partial-volume rule a reader applies on a thick slice.
    """
    src = np.asarray(volume.spacing, float)
    dst = np.maximum(src, np.asarray(spacing, float))
    out = np.asarray(volume.array, np.float32)
    step = dst / src
    for a in range(3):
        out = np.moveaxis(np.tensordot(_slab_matrix(out.shape[a], step[a]), out, axes=(1, a)), 0, a)
    out = (out >= 0.5).astype(np.uint8) if binary else out.astype(np.float32)
    first = (step - 1.0) / 2.0  # fine index of the first coarse voxel centre
    origin = np.asarray(volume.origin) + volume.direction @ (src * first)
    return volume.with_array(out, spacing=tuple(dst), origin=tuple(origin))


def thick_slice_copy(image: Volume, mask: Volume, thickness_mm: float, phase: int = 0,
                     min_slices: int = 3) -> tuple[Volume, Volume] | None:
    """(image, mask) resampled to ``thickness_mm`` slices along the third axis, the first
    ``phase`` fine slices dropped (the slab phase). The image is float HU, the mask uint8. None
    when the mask has no voxel left (a nodule too small for such slices) or when fewer than
    ``min_slices`` thick slices remain: that crop has no thick-slice version."""
    if not 0 <= phase < image.shape[2]:
        raise ValueError(f"phase {phase} outside the {image.shape[2]} slices")
    if not image.same_grid(mask):
        raise ValueError("image and mask must lie on one grid")
    shift = tuple(np.asarray(image.origin) + image.direction @ np.array([0.0, 0.0, phase * image.spacing[2]]))
    fine_image = image.with_array(np.asarray(image.array)[:, :, phase:], spacing=image.spacing, origin=shift)
    fine_mask = mask.with_array(np.asarray(mask.array)[:, :, phase:], spacing=mask.spacing, origin=shift)
    target = (0.0, 0.0, float(thickness_mm))
    thick_image, thick_mask = coarsen(fine_image, target), coarsen(fine_mask, target, binary=True)
    if not thick_mask.array.any() or thick_image.shape[2] < min_slices:
        return None
    return thick_image, thick_mask
