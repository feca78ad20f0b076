"""benchmarks/lidc_accuracy.py: the thick-slice resampling (``--coarse-spacing``) keeps world geometry."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from medseg.io import Volume

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("lidc_accuracy", ROOT / "benchmarks" / "lidc_accuracy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.parametrize("flip", [False, True])
def test_coarsen_keeps_nodule_volume_centre_and_extent_in_world_mm(flip):
    coarsen = _bench().coarsen
    spacing, shape = (0.7, 0.7, 1.25), (64, 64, 40)
    direction = np.diag([-1.0, 1.0, -1.0]) if flip else np.eye(3)  # axes pointing either way
    origin = (12.0, -30.0, 100.0)
    ijk = np.indices(shape).astype(float)
    world = [origin[a] + sum(direction[a, b] * spacing[b] * ijk[b] for b in range(3)) for a in range(3)]
    centre = [origin[a] + sum(direction[a, b] * spacing[b] * 30.0 for b in range(3)) for a in range(3)]
    r2 = sum((world[a] - centre[a]) ** 2 for a in range(3))
    sphere = (r2 <= 6.0**2).astype(np.uint8)  # 12 mm nodule: 904.8 mm3
    hu = np.where(sphere > 0, 40.0, -850.0).astype(np.float32)
    image = Volume(hu, spacing, origin, direction)
    mask = Volume(sphere, spacing, origin, direction)

    coarse_image = coarsen(image, (1.4, 1.4, 2.5))
    coarse_mask = coarsen(mask, (1.4, 1.4, 2.5), binary=True)
    assert coarse_image.spacing == (1.4, 1.4, 2.5) and coarse_image.shape == (32, 32, 20)
    assert coarse_mask.array.dtype == np.uint8 and set(np.unique(coarse_mask.array)) <= {0, 1}
    # the same nodule: volume within 5 % of the true 904.8 mm3, centre within 0.3 mm
    vol = coarse_mask.array.sum() * np.prod(coarse_mask.spacing)
    assert vol == pytest.approx(4 / 3 * np.pi * 6.0**3, rel=0.05)
    got = coarse_mask.index_to_world(np.argwhere(coarse_mask.array > 0).mean(0)[None])[0]
    assert np.allclose(got, centre, atol=0.3)
    # the grid spans the same world box: first and last voxel edges agree with the fine grid's
    for fine_edge, coarse_edge in (([-0.5] * 3, [-0.5] * 3), (np.array(shape) - 0.5, np.array((32, 32, 20)) - 0.5)):
        fine_world = image.index_to_world(np.array([fine_edge], float))[0]
        coarse_world = coarse_image.index_to_world(np.array([coarse_edge], float))[0]
        assert np.allclose(fine_world, coarse_world, atol=1e-6)
    # blurred, not re-scaled: HU of the nodule core and of the lung stay where they were
    assert coarse_image.array.max() == pytest.approx(40.0, abs=1.0)
    assert coarse_image.array.min() == pytest.approx(-850.0, abs=1.0)


def test_coarsen_leaves_axes_that_are_already_coarse():
    coarsen = _bench().coarsen
    vol = Volume(np.random.default_rng(0).normal(size=(8, 8, 4)).astype(np.float32), (0.7, 0.7, 3.0))
    out = coarsen(vol, (0.7, 0.7, 2.5))  # nothing finer than asked
    assert out.spacing == (0.7, 0.7, 3.0) and np.allclose(out.array, vol.array)
