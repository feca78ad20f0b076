"""Geometry round-trips: read -> write mask -> read back gives the identical grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_factory import oblique_direction, write_ct_series

from medseg.io import Volume, read_volume, write_mask, write_volume

RAS_DIRECTION = np.diag([-1.0, -1.0, 1.0])  # array axes point to R, A, S (in LPS world terms)
LPS_DIRECTION = np.eye(3)
GEOMETRIES = {
    "RAS": RAS_DIRECTION,
    "LPS": LPS_DIRECTION,
    "oblique": oblique_direction(25.0),
}


def _image(shape=(24, 20, 12)) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(-1000, 1000, size=shape).astype(np.int16)


def _volume(direction: np.ndarray) -> Volume:
    return Volume(_image(), spacing=(0.7, 0.9, 2.5), origin=(-12.5, 40.25, -301.0), direction=direction)


@pytest.mark.parametrize("name", GEOMETRIES)
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_write_read_roundtrip_keeps_grid_and_values(tmp_path, name, suffix):
    vol = _volume(GEOMETRIES[name])
    path = write_volume(vol, tmp_path / f"scan{suffix}")
    back = read_volume(path)
    assert back.same_grid(vol, atol=1e-4), (back.summary(), vol.summary())
    np.testing.assert_array_equal(back.array, vol.array)
    # A mask written on the read grid reads back on exactly the same grid.
    mask = (back.array > 500).astype(np.uint8)
    mask_back = read_volume(write_mask(mask, back, tmp_path / "mask.nii.gz"))
    assert mask_back.same_grid(back, atol=1e-4)
    np.testing.assert_array_equal(mask_back.array, mask)
    assert mask_back.array.dtype == np.uint8


@pytest.mark.parametrize("name", GEOMETRIES)
def test_world_coordinates_agree_with_simpleitk(tmp_path, name):
    """Our index->world mapping equals SimpleITK's for the same file (independent reader)."""
    vol = _volume(GEOMETRIES[name])
    path = write_volume(vol, tmp_path / "scan.nii.gz")
    ours = read_volume(path)
    img = sitk.ReadImage(str(path))
    for ijk in [(0, 0, 0), (23, 0, 0), (3, 17, 9), (23, 19, 11)]:
        expected = img.TransformIndexToPhysicalPoint(tuple(int(v) for v in ijk))
        np.testing.assert_allclose(ours.index_to_world(np.array(ijk)), expected, atol=1e-4)
        np.testing.assert_allclose(ours.world_to_index(np.array(expected)), ijk, atol=1e-4)
    # Array axis order matches SimpleITK's [k, j, i] transposed.
    np.testing.assert_array_equal(ours.array, sitk.GetArrayFromImage(img).transpose(2, 1, 0))


def test_orientation_codes():
    assert _volume(RAS_DIRECTION).orientation == "RAS"
    assert _volume(LPS_DIRECTION).orientation == "LPS"


@pytest.mark.parametrize("name", GEOMETRIES)
def test_dicom_series_roundtrip(tmp_path, name):
    hu = _image((20, 16, 7)).astype(np.int16)
    direction = GEOMETRIES[name]
    write_ct_series(tmp_path / "series", hu, spacing=(0.6, 0.8, 1.5), origin=(10.0, -20.0, 55.0), direction=direction)
    vol = read_volume(tmp_path / "series")
    assert vol.shape == hu.shape
    np.testing.assert_allclose(vol.spacing, (0.6, 0.8, 1.5), atol=1e-5)
    np.testing.assert_allclose(vol.origin, (10.0, -20.0, 55.0), atol=1e-5)
    np.testing.assert_allclose(vol.direction, direction, atol=1e-5)
    np.testing.assert_array_equal(vol.array, hu)  # sorted by position, not by (shuffled) file name
    assert vol.modality == "CT"
    # Independent check against SimpleITK's DICOM reader.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    img = reader.Execute()
    np.testing.assert_allclose(vol.origin, img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.direction.flatten(), img.GetDirection(), atol=1e-4)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img).transpose(2, 1, 0))
    # Mask back onto the DICOM grid.
    mask = (vol.array > 0).astype(np.uint8)
    back = read_volume(write_mask(mask, vol, tmp_path / "mask.nii.gz"))
    assert back.same_grid(vol, atol=1e-4)
    np.testing.assert_array_equal(back.array, mask)


def test_dicom_rescale_slope_intercept_applied(tmp_path):
    hu = (np.arange(8 * 8 * 3).reshape(8, 8, 3) * 10 - 1000).astype(np.float64)
    write_ct_series(tmp_path / "s", hu, slope=2.0, intercept=-1000.0)
    vol = read_volume(tmp_path / "s")
    np.testing.assert_allclose(vol.array, hu)


def test_dicom_folder_with_two_series_picks_ct_with_most_slices(tmp_path):
    small = np.full((8, 8, 3), 100, np.int16)
    large = np.full((8, 8, 6), -500, np.int16)
    write_ct_series(tmp_path / "mixed", small)
    write_ct_series(tmp_path / "tmp_large", large)
    for f in (tmp_path / "tmp_large").iterdir():
        f.rename(tmp_path / "mixed" / f"B_{f.name}")
    mr = np.full((8, 8, 9), 7, np.int16)
    write_ct_series(tmp_path / "tmp_mr", mr, modality="MR", intercept=0.0)
    for f in (tmp_path / "tmp_mr").iterdir():
        f.rename(tmp_path / "mixed" / f"C_{f.name}")
    vol = read_volume(tmp_path / "mixed")
    assert vol.shape == (8, 8, 6)
    assert vol.modality == "CT"
    assert np.all(vol.array == -500)


def test_single_dicom_file_reads_its_series(tmp_path):
    hu = _image((10, 10, 4))
    files = write_ct_series(tmp_path / "s", hu)
    vol = read_volume(files[0])
    np.testing.assert_array_equal(vol.array, hu)


def test_volume_world_mapping_is_inverse_for_oblique():
    vol = _volume(oblique_direction(33.0))
    pts = np.random.default_rng(0).uniform(0, 10, size=(50, 3))
    np.testing.assert_allclose(vol.world_to_index(vol.index_to_world(pts)), pts, atol=1e-9)
    # The RAS affine is the LPS one with x and y negated.
    np.testing.assert_allclose(vol.affine_ras[:2], -vol.affine_lps[:2])
    np.testing.assert_allclose(vol.affine_ras[2:], vol.affine_lps[2:])
