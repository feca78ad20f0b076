"""Thick-slice resampling (medseg.data.thick_slices; ``lidc_accuracy.py --coarse-spacing`` and
``sample_data/make_thick_crops.py``) keeps world geometry."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.data.thick_slices import coarsen, thick_slice_copy
from medseg.io import Volume


def _sphere_scan(flip: bool, radius_mm: float = 6.0, shape=(64, 64, 40), spacing=(0.7, 0.7, 1.25)):
    direction = np.diag([-1.0, 1.0, -1.0]) if flip else np.eye(3)  # axes pointing either way
    origin = (12.0, -30.0, 100.0)
    ijk = np.indices(shape).astype(float)
    world = [origin[a] + sum(direction[a, b] * spacing[b] * ijk[b] for b in range(3)) for a in range(3)]
    mid = np.asarray(shape, float) // 2
    centre = [origin[a] + sum(direction[a, b] * spacing[b] * mid[b] for b in range(3)) for a in range(3)]
    r2 = sum((world[a] - centre[a]) ** 2 for a in range(3))
    sphere = (r2 <= radius_mm**2).astype(np.uint8)
    hu = np.where(sphere > 0, 40.0, -850.0).astype(np.float32)
    return Volume(hu, spacing, origin, direction), Volume(sphere, spacing, origin, direction), centre


@pytest.mark.parametrize("flip", [False, True])
def test_coarsen_keeps_nodule_volume_centre_and_extent_in_world_mm(flip):
    shape = (64, 64, 40)
    image, mask, centre = _sphere_scan(flip, shape=shape)  # 12 mm nodule: 904.8 mm3

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
    vol = Volume(np.random.default_rng(0).normal(size=(8, 8, 4)).astype(np.float32), (0.7, 0.7, 3.0))
    out = coarsen(vol, (0.7, 0.7, 2.5))  # nothing finer than asked
    assert out.spacing == (0.7, 0.7, 3.0) and np.allclose(out.array, vol.array)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("phase", [0, 1, 3])
def test_thick_slice_copy_keeps_the_nodule_where_it_is_for_every_slab_phase(flip, phase):
    image, mask, centre = _sphere_scan(flip)
    out = thick_slice_copy(image, mask, 5.0, phase=phase)
    assert out is not None
    thick_image, thick_mask = out
    assert thick_image.spacing == (0.7, 0.7, 5.0) and thick_mask.same_grid(thick_image)
    assert thick_image.shape[2] == round((40 - phase) / 4)
    # the dropped slices move the grid, not the anatomy: the nodule's world centre stays within
    # half a thick slice, and its volume within the partial-volume rule's error at 5 mm
    got = thick_mask.index_to_world(np.argwhere(thick_mask.array > 0).mean(0)[None])[0]
    assert np.linalg.norm(got - np.asarray(centre)) <= 2.5
    vol = thick_mask.array.sum() * np.prod(thick_mask.spacing)
    assert vol == pytest.approx(4 / 3 * np.pi * 6.0**3, rel=0.35)
    # HU are averaged over the slab, never rescaled
    assert thick_image.array.min() >= -850.0 - 1e-3 and thick_image.array.max() <= 40.0 + 1e-3


def test_thick_slice_copy_refuses_what_thick_slices_cannot_hold():
    image, mask, _ = _sphere_scan(False, radius_mm=1.0)  # a 2 mm dot fills no 5 mm slab to half
    assert thick_slice_copy(image, mask, 5.0) is None
    image, mask, _ = _sphere_scan(False, shape=(64, 64, 8), radius_mm=3.0)
    assert mask.array.any() and thick_slice_copy(image, mask, 5.0, min_slices=2) is not None
    assert thick_slice_copy(image, mask, 5.0) is None  # 10 mm of slices: 2 thick slices < 3
    with pytest.raises(ValueError, match="phase"):
        thick_slice_copy(image, mask, 5.0, phase=8)


def _make_crop_set(root, names):
    from medseg.io import write_volume

    for name in names:
        image, mask, _ = _sphere_scan(False)
        write_volume(image.with_array(np.rint(image.array).astype(np.int16)), root / "image" / f"{name}.nii.gz")
        write_volume(mask, root / "mask" / f"{name}.nii.gz")


def test_make_thick_crops_writes_a_training_folder_without_the_excluded_patients(tmp_path):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "sample_data" / "make_thick_crops.py"
    spec = importlib.util.spec_from_file_location("make_thick_crops", script)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    _make_crop_set(tmp_path / "lidc", ["LIDC-IDRI-0001_R_1", "LIDC-IDRI-0002_R_1"])
    (tmp_path / "held_out.txt").write_text("LIDC-IDRI-0002\n")
    out = tmp_path / "thick"
    assert tool.main(["--lidc", str(tmp_path / "lidc"), "--out", str(out), "--thickness", "2.5", "5",
                      "--exclude-patients", str(tmp_path / "held_out.txt"), "--random-phase"]) == 0
    written = sorted(p.name for p in (out / "image").iterdir())
    assert written == ["LIDC-IDRI-0001_R_1_z2.5.nii.gz", "LIDC-IDRI-0001_R_1_z5.nii.gz"]
    from medseg.io import read_volume

    thick = read_volume(out / "image" / written[1])
    assert thick.spacing[2] == pytest.approx(5.0) and read_volume(out / "mask" / written[1]).same_grid(thick)
    # a crop without its mask is a one-line input error naming the file, and exit 2
    (tmp_path / "lidc" / "mask" / "LIDC-IDRI-0001_R_1.nii.gz").unlink()
    assert tool.main(["--lidc", str(tmp_path / "lidc"), "--out", str(out), "--thickness", "5"]) == 2
