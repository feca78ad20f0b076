"""Report: world-space measurements on oblique anisotropic grids, nodule type, CSV/JSON, preview."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from medseg.io import Volume
from medseg.report.measure import longest_diameter_mm, measure_nodules, nodule_type
from medseg.report.preview import write_preview
from medseg.report.tables import CSV_COLUMNS, build_report, write_nodule_csv, write_report_json


def rotation(ax: float, az: float) -> np.ndarray:
    a, b = np.deg2rad(ax), np.deg2rad(az)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def ellipsoid_volume(shape, spacing, direction, origin, centre, axes_mm, axes_dirs):
    """Label 1 inside the world-space ellipsoid (semi-axes ``axes_mm`` along ``axes_dirs`` columns)."""
    vol = Volume(np.zeros(shape, np.int16), spacing, origin=origin, direction=direction, modality="CT")
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    rel = vol.index_to_world(ijk) - np.asarray(centre)
    local = rel @ axes_dirs  # coordinates along the ellipsoid's own axes
    inside = ((local / np.asarray(axes_mm)) ** 2).sum(1) <= 1
    return vol, inside.reshape(shape)


@pytest.mark.parametrize("direction", [np.eye(3), rotation(25, 40)])
def test_ellipsoid_measurements_in_world_space(direction) -> None:
    spacing = (0.6, 0.9, 1.7)  # anisotropic
    centre = np.array([12.0, -30.0, 55.0])
    axes_mm = (9.0, 5.0, 4.0)  # longest diameter 18 mm along a direction unrelated to the grid
    axes_dirs = rotation(-35, 70)
    origin = tuple(centre - direction @ (np.array(spacing) * np.array([40, 30, 15])))
    vol, inside = ellipsoid_volume((80, 60, 30), spacing, direction, origin, centre, axes_mm, axes_dirs)
    labels = inside.astype(np.uint16)
    image = np.where(inside, 35, -850).astype(np.int16)
    vol = vol.with_array(image)
    prob = np.where(inside, 0.9, 0.1).astype(np.float32)
    [m] = measure_nodules(labels, vol, prob)
    true_volume = 4 / 3 * np.pi * np.prod(axes_mm)
    assert m["volume_mm3"] == pytest.approx(inside.sum() * np.prod(spacing), rel=1e-3)
    assert m["volume_mm3"] == pytest.approx(true_volume, rel=0.05)
    # edge to edge: the mask's edge lies within half a voxel of the true surface
    assert m["longest_diameter_mm"] == pytest.approx(2 * axes_mm[0], abs=max(spacing) / 2)
    assert np.allclose(m["centre_lps_mm"], centre, atol=0.15)
    assert np.allclose(m["centre_ras_mm"], centre * [-1, -1, 1], atol=0.15)
    assert m["equivalent_diameter_mm"] == pytest.approx((6 * m["volume_mm3"] / np.pi) ** (1 / 3), rel=1e-3)
    assert m["mean_hu"] == 35 and m["max_hu"] == 35 and m["type"] == "solid"
    assert m["mean_probability"] == pytest.approx(0.9)


def test_longest_diameter_of_a_voxel_line_uses_spacing_and_direction() -> None:
    d = rotation(0, 90)  # i axis points along world y
    vol = Volume(np.zeros((10, 3, 3)), (2.0, 1.0, 1.0), direction=d)
    mask = np.zeros((10, 3, 3), bool)
    mask[2:7, 1, 1] = True  # 5 voxels of 2 mm: 10 mm edge to edge (centres are 8 mm apart)
    assert longest_diameter_mm(mask, vol) == pytest.approx(10.0)


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 3.0), (3.0, 3.0, 3.0), (0.5, 2.0, 0.9)])
def test_one_voxel_measures_its_own_size_not_zero(spacing) -> None:
    """A one-voxel component is as long as its longest voxel side (it once read 0 mm)."""
    vol = Volume(np.zeros((3, 3, 3)), spacing, direction=rotation(30, 20))
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, 1] = True
    assert longest_diameter_mm(mask, vol) == pytest.approx(max(spacing))
    assert longest_diameter_mm(np.zeros((3, 3, 3), bool), vol) == 0.0


def test_nodule_type_from_hu() -> None:
    assert nodule_type(np.full(100, 20.0))[0] == "solid"
    assert nodule_type(np.full(100, -600.0))[0] == "ground-glass"
    assert nodule_type(np.r_[np.full(50, 20.0), np.full(50, -600.0)])[0] == "part-solid"


def test_multiple_labels_and_probability_box() -> None:
    vol = Volume(np.full((20, 20, 10), -800, np.int16), (1.0, 1.0, 2.0), modality="CT")
    labels = np.zeros(vol.shape, np.uint16)
    labels[2:5, 2:5, 2:4] = 1
    labels[10:16, 10:13, 5:6] = 2
    box = (slice(1, 18), slice(1, 18), slice(0, 10))
    prob = np.full((17, 17, 10), 0.7, np.float32)
    out = measure_nodules(labels, vol, prob, box)
    assert [m["id"] for m in out] == [1, 2]
    assert [m["voxels"] for m in out] == [18, 18]
    assert all(m["mean_probability"] == pytest.approx(0.7) for m in out)
    # 6 x 3 x 1 voxels of 1 x 1 x 2 mm: edge to edge on the 0.5-level surface, whose corners are
    # cut, the farthest vertices are the i faces' ends, 6 mm apart along i and 2 mm along j
    assert out[1]["longest_diameter_mm"] == pytest.approx(np.hypot(6, 2), abs=0.006)  # rounded to 0.01 mm


def test_csv_and_json(tmp_path) -> None:
    vol = Volume(np.full((20, 20, 10), -800, np.int16), (1.0, 1.0, 2.0), modality="CT")
    labels = np.zeros(vol.shape, np.uint16)
    labels[2:6, 2:6, 2:4] = 1
    nodules = measure_nodules(labels, vol)
    write_nodule_csv(tmp_path / "n.csv", nodules)
    with open(tmp_path / "n.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert float(rows[0]["centre_lps_x_mm"]) == pytest.approx(-float(rows[0]["centre_ras_x_mm"]))
    assert float(rows[0]["volume_mm3"]) == pytest.approx(32 * 2.0)
    write_nodule_csv(tmp_path / "empty.csv", [])
    assert (tmp_path / "empty.csv").read_text().strip() == ",".join(CSV_COLUMNS)
    rep = build_report("c", "in.nii.gz", nodules, geometry=vol.summary(), model={}, settings={},
                       timings={"total_s": 1.23456}, warnings=["w"], lung_volume_ml=None, outputs={})
    write_report_json(tmp_path / "r.json", rep)
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["n_nodules"] == 1 and "LPS" in back["coordinate_convention"]
    assert back["software"]["version"]


@pytest.mark.parametrize("flip", [False, True])
def test_preview_is_radiological_for_any_orientation(tmp_path, flip) -> None:
    """A bright marker in the patient's right lung shows on the image's left, anterior at top."""
    shape, spacing = (64, 64, 8), (1.0, 1.0, 2.0)
    hu = np.full(shape, -850, np.int16)
    labels = np.zeros(shape, np.uint16)
    # LPS: i grows to the patient's left, j to posterior; the marker is right (i small) and anterior (j small)
    hu[8:16, 6:12, 2:6] = 100
    labels[8:16, 6:12, 2:6] = 1
    vol = Volume(hu, spacing, modality="CT")
    if flip:  # same patient stored RAS
        corner = vol.index_to_world(np.array([63, 63, 0]))
        vol = Volume(hu[::-1, ::-1].copy(), spacing, origin=tuple(corner), direction=np.diag([-1.0, -1.0, 1.0]))
        labels = labels[::-1, ::-1].copy()
        assert vol.orientation == "RAS"
    out = write_preview(tmp_path / "p.png", vol, labels, [{"id": 1}])
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    tile = img[14:, :256]  # first tile: the MIP, below its title strip
    red = (tile[..., 0] > 200) & (tile[..., 1] < 100)  # outline colour of nodule 1
    ys, xs = np.nonzero(red)
    assert len(xs) > 0
    assert xs.mean() < 128, "patient's right must be on the image's left"
    assert ys.mean() < 128, "anterior must be at the top"


def test_preview_mip_equals_clip_then_max_without_a_volume_copy():
    from medseg.report.preview import _slab_mip

    rng = np.random.default_rng(1)
    ct = rng.integers(-1024, 2000, size=(20, 18, 12)).astype(np.int16)
    out = _slab_mip(ct)
    np.testing.assert_array_equal(out, np.clip(ct, None, 150).max(axis=2))
    assert out.dtype == ct.dtype


def test_a_lesion_from_30_mm_is_a_mass_and_keeps_its_texture() -> None:
    spacing = (1.0, 1.0, 2.5)
    shape = (60, 60, 24)
    grids = np.ogrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.uint16)
    for lab, centre, radius in ((1, (34, 34, 12), 17.0), (2, (8, 8, 12), 5.0)):
        d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing))
        labels[d2 <= radius**2] = lab
    vol = Volume(np.full(shape, 40, np.int16), spacing, modality="CT")
    out = {m["id"]: m for m in measure_nodules(labels, vol)}
    assert out[1]["longest_diameter_mm"] >= 30 and out[1]["type"] == "mass" and out[1]["texture"] == "solid"
    assert out[2]["longest_diameter_mm"] < 30 and out[2]["type"] == "solid" == out[2]["texture"]


def test_a_nodule_with_a_vessel_stub_is_not_a_mass() -> None:
    """The Fleischner size (mean axial long and short axis) decides, not the 3D longest diameter:
    a 20 mm nodule with a 2 mm vessel stub reaching 33 mm across stays a nodule."""
    spacing = (0.8, 0.8, 2.5)
    shape = (64, 64, 20)
    grids = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre = (32, 32, 10)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing))
    labels = (d2 <= 10.0**2).astype(np.uint16)
    labels[32:61, 31:34, 9:12] = 1  # the stub: 12 mm out of the ball along x
    vol = Volume(np.full(shape, 40, np.int16), spacing, modality="CT")
    (m,) = measure_nodules(labels, vol)
    assert m["longest_diameter_mm"] >= 30, "the stub must make the 3D diameter pass the cut"
    assert m["mean_axial_diameter_mm"] < 30
    assert m["type"] == "solid"
