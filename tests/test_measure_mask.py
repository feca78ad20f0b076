"""`medseg measure`: axial long/short axes (Lung-RADS/RECIST) in world mm on any grid, instances of
binary masks and label maps, the grid check, the CLI and the infer CSV columns."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medseg.cli import main
from medseg.errors import InputError
from medseg.io import Volume, write_volume
from medseg.report.measure import axial_diameters_mm, longest_diameter_mm, measure_nodules
from medseg.report.measure_mask import BY_COMPONENT, BY_LABEL, instance_labels, measure_mask
from medseg.report.tables import CSV_COLUMNS


def rot(axis: int, deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    m = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


#: direction matrices (columns = world directions of the i, j, k axes)
GRIDS = {
    "axial_anisotropic": (np.eye(3), (0.6, 0.9, 1.7)),
    "axial_rotated_in_plane_flipped": (rot(2, 20) @ np.diag([1.0, -1.0, -1.0]), (0.6, 0.9, 1.7)),
    "permuted_z_along_i": (np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]), (1.7, 0.6, 0.9)),
    "oblique": (rot(2, 40) @ rot(0, 25), (0.6, 0.9, 1.7)),
}
SEMI_AXES = (9.0, 5.0, 4.0)  # mm: a and b in the axial plane, c along the patient's z axis


def ellipsoid(direction: np.ndarray, spacing, centre=(12.0, -30.0, 55.0), in_plane_deg: float = 30.0,
              size_mm: float = 44.0):
    """A scan and a binary mask of a world-space ellipsoid with known axes (long axis at
    ``in_plane_deg`` from x in the axial plane)."""
    shape = tuple(int(round(size_mm / s)) for s in spacing)
    centre = np.asarray(centre)
    origin = centre - direction @ (np.asarray(spacing) * (np.asarray(shape) // 2))
    vol = Volume(np.full(shape, -850, np.int16), spacing, origin=tuple(origin), direction=direction, modality="CT")
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    local = (vol.index_to_world(ijk) - centre) @ rot(2, in_plane_deg)
    inside = (((local / np.asarray(SEMI_AXES)) ** 2).sum(1) <= 1).reshape(shape)
    return vol.with_array(np.where(inside, 40, -850).astype(np.int16)), inside


@pytest.mark.parametrize("grid", GRIDS)
def test_axial_long_and_short_axes_of_an_ellipsoid_within_a_voxel(grid):
    direction, spacing = GRIDS[grid]
    vol, inside = ellipsoid(direction, spacing)
    long_axis, short_axis = axial_diameters_mm(inside, vol)
    voxel = max(spacing) if grid == "oblique" else sorted(spacing)[1]  # the largest in-plane voxel size
    assert long_axis == pytest.approx(2 * SEMI_AXES[0], abs=voxel), (long_axis, short_axis)
    assert short_axis == pytest.approx(2 * SEMI_AXES[1], abs=voxel), (long_axis, short_axis)
    # never the 3D diameter's plane: the 3D longest diameter (edge to edge as well) stays close to 2a
    assert abs(longest_diameter_mm(inside, vol) - 2 * SEMI_AXES[0]) <= max(spacing) / 2


def test_axial_axes_are_taken_on_the_axial_plane_not_along_z():
    """An ellipsoid longest along z: the axial long axis is the in-plane one, not the 3D diameter."""
    vol = Volume(np.zeros((40, 40, 40), np.int16), (0.8, 0.8, 0.8))
    ijk = np.stack(np.meshgrid(*[np.arange(40)] * 3, indexing="ij"), -1).astype(float)
    rel = (ijk - 20) * 0.8
    inside = ((rel / np.array([4.2, 2.6, 12.2])) ** 2).sum(-1) <= 1
    long_axis, short_axis = axial_diameters_mm(inside, vol)
    assert long_axis == pytest.approx(8.4, abs=0.8) and short_axis == pytest.approx(5.2, abs=0.8)
    assert longest_diameter_mm(inside, vol) == pytest.approx(24.4, abs=0.8)


def test_axial_axes_use_the_slice_where_the_long_axis_is_largest():
    vol = Volume(np.zeros((30, 30, 6), np.int16), (1.0, 1.0, 2.0))
    mask = np.zeros(vol.shape, bool)
    mask[5:10, 5:8, 1] = True  # 5 x 3 mm
    mask[3:23, 10:14, 3] = True  # 20 x 4 mm: this slice
    mask[8:12, 8:20, 4] = True  # 4 x 12 mm
    only = np.zeros_like(mask)
    only[:, :, 3] = mask[:, :, 3]
    long_axis, short_axis = axial_diameters_mm(mask, vol)
    assert (long_axis, short_axis) == axial_diameters_mm(only, vol)
    assert 20.0 <= long_axis <= np.hypot(20, 4)  # edge to edge, the outline cutting the box's corners
    assert 4.0 <= short_axis < 8.0  # the box's extent across that slightly diagonal line


def test_binary_mask_gives_one_instance_per_26_connected_blob():
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    mask[5, 5, 5] = 1  # touches the first blob by a corner only: 26-connected, same nodule
    mask[12:16, 12:16, 12:16] = 1
    labels, how = instance_labels(mask)
    assert how == BY_COMPONENT and labels.max() == 2
    assert labels[5, 5, 5] == labels[2, 2, 2] != labels[13, 13, 13]


def test_label_map_keeps_its_ids_and_bad_masks_are_refused():
    vol = Volume(np.full((20, 20, 10), -800, np.int16), (1.0, 1.0, 2.0), modality="CT")
    labels = np.zeros(vol.shape, np.uint16)
    labels[2:5, 2:5, 2:4] = 3
    labels[10:16, 10:13, 5:7] = 7
    labels[15:18, 2:4, 1:2] = 7  # one label in two pieces stays one instance
    got, how = instance_labels(labels)
    assert how == BY_LABEL
    nodules = measure_nodules(got, vol)
    assert [n["id"] for n in nodules] == [3, 7]
    assert nodules[1]["voxels"] == 6 * 3 * 2 + 3 * 2 * 1
    with pytest.raises(InputError, match="non-integer"):
        instance_labels(np.full((4, 4, 4), 0.5, np.float32))
    with pytest.raises(InputError, match="negative"):
        instance_labels(np.full((4, 4, 4), -1, np.int16))


def test_measure_files_and_the_grid_check(tmp_path, capsys):
    direction, spacing = GRIDS["oblique"]
    vol, inside = ellipsoid(direction, spacing)
    scan = write_volume(vol, tmp_path / "scan.nii.gz")
    mask = np.zeros(vol.shape, np.uint8)
    mask[inside] = 1
    mask[1:3, 1:3, 1:3] = 1  # a second, separate blob
    mask_path = write_volume(vol.with_array(mask), tmp_path / "mask.nrrd")
    result = measure_mask(scan, mask_path)
    assert result.instances == BY_COMPONENT and len(result.nodules) == 2
    big = max(result.nodules, key=lambda n: n["voxels"])
    assert big["volume_mm3"] == pytest.approx(4 / 3 * np.pi * np.prod(SEMI_AXES), rel=0.05)
    assert big["axial_long_axis_mm"] == pytest.approx(18.0, abs=max(spacing))
    assert big["axial_short_axis_mm"] == pytest.approx(10.0, abs=max(spacing))

    out_csv = tmp_path / "m.csv"
    assert main(["measure", str(scan), "-i", str(mask_path), "--json", "-o", str(out_csv)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["instances"] == "components" and len(printed["nodules"]) == 2
    with open(out_csv) as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["axial_long_axis_mm"]) for r in rows] == [n["axial_long_axis_mm"] for n in printed["nodules"]]

    shifted = write_volume(vol.with_array(mask, origin=(0.0, 0.0, 0.0)), tmp_path / "elsewhere.nii.gz")
    with pytest.raises(InputError, match="not on the scan's grid") as err:
        measure_mask(scan, shifted)
    assert str(shifted) in str(err.value)
    assert main(["measure", str(scan), str(shifted)]) == 2
    assert main(["measure", str(scan)]) == 2  # SCAN and MASK are both needed


def test_real_chest_mass_volume_and_axes(shared_data):
    folder = shared_data / "real_chest"
    result = measure_mask(folder / "chest_ct_5mm_mass.nrrd", folder / "chest_ct_5mm_mass_label.nrrd")
    [mass] = result.nodules
    assert mass["volume_mm3"] == pytest.approx(48_000, rel=0.1)  # about 48 cm3 (data README)
    assert 30 < mass["axial_long_axis_mm"] <= mass["longest_diameter_mm"] + 1.0
    assert 0 < mass["axial_short_axis_mm"] <= mass["axial_long_axis_mm"]
    assert mass["mean_axial_diameter_mm"] > 30 and mass["type"] == "mass"  # Fleischner size 46 mm


def test_infer_csv_has_the_axial_columns():
    assert {"axial_long_axis_mm", "axial_short_axis_mm"} <= set(CSV_COLUMNS)
    i = CSV_COLUMNS.index("longest_diameter_mm")
    assert CSV_COLUMNS[i + 1 : i + 4] == ("axial_long_axis_mm", "axial_short_axis_mm", "mean_axial_diameter_mm")
