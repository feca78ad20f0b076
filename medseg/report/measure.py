"""Per-nodule clinical measurements in world geometry (right for any orientation and spacing).

Coordinates are computed from voxel centres through the volume's ``direction @ diag(spacing)``
matrix, so oblique and anisotropic grids give true millimetres.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from medseg.io.volume import Volume

#: HU above which a voxel counts as solid tissue inside a nodule.
SOLID_HU = -300.0
#: Solid share of the nodule volume: >= SOLID_SHARE solid; < GGO_SHARE ground-glass; else part-solid.
SOLID_SHARE = 0.8
GGO_SHARE = 0.2
#: A lesion is a mass, not a nodule, from this longest diameter (mm; Fleischner glossary).
MASS_MM = 30.0


def longest_diameter_mm(mask: np.ndarray, volume: Volume, offset: tuple[int, int, int] = (0, 0, 0)) -> float:
    """Largest distance (mm) between boundary voxel centres of a binary mask, in world space.

    ``mask`` may be a sub-block of ``volume``'s grid starting at voxel ``offset``.
    """
    boundary = mask & ~ndimage.binary_erosion(mask, border_value=0)
    ijk = np.argwhere(boundary) + np.asarray(offset)
    if len(ijk) < 2:
        return 0.0
    pts = volume.index_to_world(ijk)
    if len(pts) > 4:
        try:  # the farthest pair lies on the convex hull
            from scipy.spatial import ConvexHull

            pts = pts[ConvexHull(pts).vertices]
        except Exception:  # flat or degenerate sets (e.g. a single slice): use all points
            pass
    if len(pts) > 4000:  # keep the pairwise step bounded
        pts = pts[np.linspace(0, len(pts) - 1, 4000).astype(int)]
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    return float(np.sqrt(d2.max()))


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
    ``volume_mm3``, ``longest_diameter_mm``, ``equivalent_diameter_mm``, ``mean_hu``, ``max_hu``,
    ``mean_probability``, ``solid_share``, ``type`` (``mass`` from ``MASS_MM``, else the texture),
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
        entry: dict[str, Any] = {
            "id": lab,
            "voxels": n,
            "centre_lps_mm": [round(float(c), 2) for c in centre_lps],
            "centre_ras_mm": [round(float(c), 2) for c in centre_lps * np.array([-1, -1, 1])],
            "volume_mm3": round(vol_mm3, 2),
            "longest_diameter_mm": longest,
            "equivalent_diameter_mm": round(float((6.0 * vol_mm3 / np.pi) ** (1.0 / 3.0)), 2),
            "mean_hu": round(float(hu.mean()), 1),
            "max_hu": round(float(hu.max()), 1),
            "mean_probability": None,
            "solid_share": round(share, 3),
            "type": "mass" if longest >= MASS_MM else kind,
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
