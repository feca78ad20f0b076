"""Per-nodule clinical measurements in world geometry (right for any orientation and spacing).

Coordinates are computed from voxel centres through the volume's ``direction @ diag(spacing)``
matrix, so oblique and anisotropic grids give true millimetres. The axial long and short axes
(Lung-RADS, RECIST) are measured on planes perpendicular to the patient's z axis: the grid's own
slices when one grid axis runs along z (any permutation or flip, any in-plane rotation), else
planes resampled from the mask in world space.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy import ndimage

from medseg.io.volume import Volume

#: HU above which a voxel counts as solid tissue inside a nodule.
SOLID_HU = -300.0
#: Solid share of the nodule volume: >= SOLID_SHARE solid; < GGO_SHARE ground-glass; else part-solid.
SOLID_SHARE = 0.8
GGO_SHARE = 0.2
#: A lesion is a mass, not a nodule, from this size (mm; Fleischner glossary: "greater than 3 cm").
#: The size is the mean of the axial long and short axes (Fleischner 2017, Lung-RADS): the 3D
#: longest diameter calls a 20 mm nodule with a vessel stub attached a 32 mm "mass".
MASS_MM = 30.0
#: A grid axis whose direction is this close to the patient's z axis (1 - |cos|) has axial slices.
AXIAL_TOL = 1e-3


def longest_diameter_mm(mask: np.ndarray, volume: Volume, offset: tuple[int, int, int] = (0, 0, 0)) -> float:
    """Largest distance (mm) across a binary mask in world space, edge to edge.

    The mask's surface is the 0.5 level of the mask (``skimage.measure.marching_cubes``: half-way
    between voxel centres inside and outside, as the axial axes' outlines), and the diameter is the
    largest distance between its vertices: IBSI's and pyradiomics' "maximum 3D diameter". So one
    voxel measures its own size (not 0 mm) and a line of n voxels n voxels, on any spacing and
    orientation. ``mask`` may be a sub-block of ``volume``'s grid starting at voxel ``offset``.
    """
    from skimage.measure import marching_cubes

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return 0.0
    # pad: the surface closes where the mask meets the block's edge
    verts = marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5)[0] - 1.0
    pts = volume.index_to_world(verts + np.asarray(offset))
    if len(pts) > 4:
        try:  # the farthest pair lies on the convex hull
            from scipy.spatial import ConvexHull

            pts = pts[ConvexHull(pts).vertices]
        except Exception:  # flat or degenerate sets: use all points
            pass
    if len(pts) > 4000:  # keep the pairwise step bounded
        pts = pts[np.linspace(0, len(pts) - 1, 4000).astype(int)]
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    return float(np.sqrt(d2.max()))


def axial_diameters_mm(mask: np.ndarray, volume: Volume,
                       offset: tuple[int, int, int] = (0, 0, 0)) -> tuple[float, float]:
    """(long axis, short axis) in mm of a binary mask, as Lung-RADS and RECIST measure them.

    On the axial plane (perpendicular to the patient's z axis) where the long axis is largest: the
    long axis is the largest distance between points of the mask's outline on that plane, the
    short axis the mask's largest extent perpendicular to it on the same plane. Outlines are
    ``skimage.measure.find_contours`` at the mask's edge (half-way between voxel centres inside
    and outside), so the axes run edge to edge as a reader measures them on screen. ``mask`` may
    be a sub-block of ``volume``'s grid starting at voxel ``offset``.
    """
    best = (0.0, 0.0)
    if not mask.any():
        return best
    for plane, step_mm in _axial_planes(mask.astype(bool), volume, offset):
        points = _outline_points(plane) @ step_mm.T  # (n, 2) world mm within the plane
        long_axis, short_axis = _long_short_axes(points)
        if long_axis > best[0]:
            best = (long_axis, short_axis)
    return best


def _axial_planes(mask: np.ndarray, volume: Volume,
                  offset: tuple[int, int, int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (2D image whose 0.5 level is the mask's edge, 2x2 matrix: index step -> world x/y mm)
    for each axial plane through the mask."""
    z_row = np.abs(volume.direction[2])
    k = int(np.argmax(z_row))
    if z_row[k] >= 1.0 - AXIAL_TOL:  # the grid's slices along axis k are axial
        a, b = (ax for ax in range(3) if ax != k)
        step = volume.direction[:2][:, [a, b]] * np.asarray(volume.spacing)[[a, b]]
        for s in range(mask.shape[k]):
            plane = np.take(mask, s, axis=k)
            if plane.any():
                yield plane.astype(np.float32), step
        return
    yield from _resampled_axial_planes(mask, volume, offset)


def _resampled_axial_planes(mask: np.ndarray, volume: Volume,
                            offset: tuple[int, int, int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Oblique grid: the mask interpolated (trilinear) on world-aligned axial planes spaced by the
    finest voxel size; its edge is then the 0.5 level, as on the grid's own slices."""
    step = float(min(volume.spacing))
    world = volume.index_to_world(np.argwhere(mask) + np.asarray(offset))
    margin = max(volume.spacing)
    lo, hi = world.min(axis=0) - margin, world.max(axis=0) + margin
    xs, ys, zs = (np.arange(lo[d], hi[d] + step, step) for d in range(3))
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    to_index = np.linalg.inv(volume.direction @ np.diag(volume.spacing))
    data = mask.astype(np.float32)
    for z in zs:
        pts = np.stack([gx, gy, np.full_like(gx, z)], axis=-1).reshape(-1, 3)
        ijk = (pts - np.asarray(volume.origin)) @ to_index.T - np.asarray(offset)
        plane = ndimage.map_coordinates(data, ijk.T, order=1, mode="constant", cval=0.0).reshape(gx.shape)
        if (plane > 0.5).any():
            yield plane, np.diag([step, step])


def _outline_points(plane: np.ndarray) -> np.ndarray:
    """Sub-pixel points ``(n, 2)``, in index units, of the 0.5 level of a 2D mask (every piece and
    hole)."""
    from skimage.measure import find_contours

    contours = find_contours(np.pad(plane, 1), 0.5)
    return np.concatenate(contours) - 1.0


def _long_short_axes(points: np.ndarray) -> tuple[float, float]:
    """Largest distance between ``points`` (2D, mm) and their extent perpendicular to that line."""
    hull = points
    if len(points) > 3:
        try:  # the farthest pair and the extent both lie on the convex hull
            from scipy.spatial import ConvexHull

            hull = points[ConvexHull(points).vertices]
        except Exception:  # collinear points
            hull = points
    d2 = ((hull[:, None, :] - hull[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    long_axis = float(np.sqrt(d2[i, j]))
    if long_axis == 0.0:
        return 0.0, 0.0
    along = (hull[j] - hull[i]) / long_axis
    across = hull @ np.array([-along[1], along[0]])
    return long_axis, float(across.max() - across.min())


def nodule_type(hu: np.ndarray) -> tuple[str, float]:
    """solid / part-solid / ground-glass from the share of voxels above ``SOLID_HU``."""
    share = float((hu > SOLID_HU).mean()) if hu.size else 0.0
    if share >= SOLID_SHARE:
        return "solid", share
    if share < GGO_SHARE:
        return "ground-glass", share
    return "part-solid", share


def measure_nodules(
    labels: np.ndarray,
    volume: Volume,
    probability: np.ndarray | None = None,
    probability_box: tuple[slice, ...] | None = None,
) -> list[dict[str, Any]]:
    """One dict per label 1..N of ``labels`` (on ``volume``'s grid).

    ``probability`` is on the same grid, or only on the sub-block ``probability_box`` of it
    (labels outside the box then get no mean probability).

    Keys: ``id``, ``voxels``, ``centre_lps_mm`` and ``centre_ras_mm`` (centroid of voxel centres),
    ``volume_mm3``, ``longest_diameter_mm``, ``axial_long_axis_mm`` and ``axial_short_axis_mm``
    (see :func:`axial_diameters_mm`), ``mean_axial_diameter_mm`` (their mean: the Fleischner size),
    ``equivalent_diameter_mm``, ``mean_hu``, ``max_hu``,
    ``mean_probability``, ``solid_share``, ``type`` (``mass`` from ``MASS_MM`` of the Fleischner size, else the texture),
    ``texture`` (solid / part-solid / ground-glass), ``bbox_ijk``.
    """
    out: list[dict[str, Any]] = []
    if labels.max() == 0:
        return out
    voxel_mm3 = float(abs(np.linalg.det(volume.direction @ np.diag(volume.spacing))))
    objects = ndimage.find_objects(labels)
    image = np.asarray(volume.array)
    for lab, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        sub = labels[sl] == lab
        n = int(sub.sum())
        offset = np.array([s.start for s in sl])
        ijk = np.argwhere(sub) + offset
        centre_lps = volume.index_to_world(ijk.mean(axis=0))
        hu = image[sl][sub].astype(np.float64)
        kind, share = nodule_type(hu)
        vol_mm3 = n * voxel_mm3
        longest = round(longest_diameter_mm(sub, volume, tuple(offset)), 2)
        axial_long, axial_short = axial_diameters_mm(sub, volume, tuple(offset))
        entry: dict[str, Any] = {
            "id": lab,
            "voxels": n,
            "centre_lps_mm": [round(float(c), 2) for c in centre_lps],
            "centre_ras_mm": [round(float(c), 2) for c in centre_lps * np.array([-1, -1, 1])],
            "volume_mm3": round(vol_mm3, 2),
            "longest_diameter_mm": longest,
            "axial_long_axis_mm": round(axial_long, 2),
            "axial_short_axis_mm": round(axial_short, 2),
            "mean_axial_diameter_mm": round((axial_long + axial_short) / 2.0, 2),
            "equivalent_diameter_mm": round(float((6.0 * vol_mm3 / np.pi) ** (1.0 / 3.0)), 2),
            "mean_hu": round(float(hu.mean()), 1),
            "max_hu": round(float(hu.max()), 1),
            "mean_probability": None,
            "solid_share": round(share, 3),
            "type": "mass" if (axial_long + axial_short) / 2.0 >= MASS_MM else kind,
            "texture": kind,
            "bbox_ijk": [[int(s.start), int(s.stop)] for s in sl],
        }
        if probability is not None:
            start = [0, 0, 0] if probability_box is None else [b.start for b in probability_box]
            psl = tuple(slice(s.start - o, s.stop - o) for s, o in zip(sl, start))
            if all(p.start >= 0 and p.stop <= n for p, n in zip(psl, probability.shape)):
                entry["mean_probability"] = round(float(probability[psl][sub].mean()), 4)
        out.append(entry)
    return out
