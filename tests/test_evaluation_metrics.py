"""Overlap and surface metrics against geometry worked out by hand, on anisotropic grids."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.evaluation.metrics import dice, iou, overlap_metrics, relative_volume_error

SPACING = (0.7, 0.7, 2.5)


def sphere(shape, spacing, centre_mm, radius_mm):
    g = np.indices(shape).astype(float) * np.asarray(spacing)[:, None, None, None]
    return ((g - np.asarray(centre_mm)[:, None, None, None]) ** 2).sum(0) <= radius_mm**2


def analytic_dice(r, d):
    # lens volume of two equal spheres at centre distance d, over one sphere's volume
    lens = np.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    return lens / (4 / 3 * np.pi * r**3)


def analytic_hd95(r, d):
    # surface distance from a point at polar angle t on sphere A to sphere B (shifted by d along
    # the pole): |sqrt(r^2 - 2 r d cos t + d^2) - r|; cos t is uniform over the sphere's area.
    x = np.linspace(-1, 1, 200_001)
    return float(np.percentile(np.abs(np.sqrt(r * r - 2 * r * d * x + d * d) - r), 95))


@pytest.mark.parametrize("axis,steps,radius", [(2, 1, 10.0), (2, 2, 10.0), (0, 4, 10.0), (1, 6, 8.0)])
def test_shifted_spheres_match_geometry(axis, steps, radius):
    shape = (50, 50, 14)
    a = sphere(shape, SPACING, (17.5, 17.5, 17.5), radius)
    b = np.roll(a, steps, axis)  # an exact voxel shift: both spheres are voxelised identically
    shift = steps * SPACING[axis]
    m = overlap_metrics(b, a, SPACING)
    # Dice: the voxelised volume is within ~1.5% of 4/3 pi r^3 at this size, so 0.01 absolute
    assert m["dice"] == pytest.approx(analytic_dice(radius, shift), abs=0.01)
    assert m["iou"] == pytest.approx(m["dice"] / (2 - m["dice"]), rel=1e-9)
    # HD95: B's surface voxels are A's moved by the shift, so no distance exceeds it; edge voxel
    # centres sit within about half an in-plane voxel diagonal (0.5 mm) of the true surface.
    assert m["hd95"] <= shift + 1e-6
    assert m["hd95"] == pytest.approx(analytic_hd95(radius, shift), abs=0.5)
    assert 0 < m["assd"] <= m["hd95"]
    assert m["rel_volume_error"] == pytest.approx(0.0)


def test_hd95_is_in_mm_and_follows_spacing():
    shape = (40, 40, 14)
    a = sphere(shape, SPACING, (14.0, 14.0, 17.5), 8.0)
    b = np.roll(a, 1, 2)  # one slice along k
    base = overlap_metrics(b, a, SPACING)
    assert base["hd95"] == pytest.approx(2.5, abs=0.05)  # the slice thickness, not 1 voxel
    doubled = overlap_metrics(b, a, tuple(2 * s for s in SPACING))
    assert doubled["hd95"] == pytest.approx(2 * base["hd95"], rel=1e-4)
    assert doubled["assd"] == pytest.approx(2 * base["assd"], rel=1e-4)
    assert doubled["dice"] == base["dice"]
    # the same arrays read with the thick axis first: the shift along k is now 0.7 mm
    swapped = overlap_metrics(b, a, (2.5, 0.7, 0.7))
    assert swapped["hd95"] <= 0.7 + 1e-6
    # surface Dice at 1 mm: a 0.7 mm shift is within tolerance everywhere, 2.5 mm is not
    assert swapped["surface_dice_1mm"] > 0.95 > base["surface_dice_1mm"]


def test_empty_masks_are_settled_not_nan():
    z = np.zeros((5, 5, 5), bool)
    one = z.copy()
    one[2, 2, 2] = True
    both_empty = overlap_metrics(z, z, SPACING)
    assert both_empty["dice"] == 1.0 and both_empty["hd95"] == 0.0
    missed = overlap_metrics(z, one, SPACING)
    assert missed["dice"] == 0.0 and missed["hd95"] is None and missed["rel_volume_error"] == -1.0
    assert relative_volume_error(one, z) is None


def test_dice_iou_counts():
    a = np.zeros((4, 4, 4), bool)
    b = a.copy()
    a[:2] = True  # 32 voxels
    b[1:3] = True  # 32 voxels, 16 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert iou(a, b) == pytest.approx(16 / 48)
