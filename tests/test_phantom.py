"""Chest-CT phantoms: determinism, exact ground truth, geometry in any orientation, files."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import cc3d
import numpy as np
import pytest
from scipy import ndimage

from medseg.data.phantom import KINDS, LOCATIONS, NoduleSpec, make_phantom, save_phantom
from medseg.io import read_volume

REPO = Path(__file__).resolve().parents[1]
SHAPE = (96, 96, 48)
SPACING = (2.6, 2.4, 4.0)  # anisotropic on purpose
SPECS = [
    NoduleSpec("solid", "isolated", 16.0),
    NoduleSpec("ground-glass", "juxta-pleural", 16.0),
    NoduleSpec("part-solid", "juxta-vascular", 18.0),
    {"kind": "solid", "location": "juxta-pleural", "diameter_mm": 10.0},
    {"kind": "ground-glass", "location": "isolated", "diameter_mm": 6.0},
]
BALL = np.ones((3, 3, 3), bool)


@pytest.fixture(scope="module")
def phantoms():
    return {
        orient: make_phantom(seed=11, shape=SHAPE, spacing=SPACING, nodules=SPECS, orientation=orient)
        for orient in ("LPS", "RAS")
    }


@pytest.fixture(scope="module")
def random_phantom():
    return make_phantom(seed=5, shape=SHAPE, spacing=(3.0, 3.0, 5.0))


def _all(phantoms, random_phantom):
    return [*phantoms.values(), random_phantom]


def test_same_seed_same_phantom_and_different_seed_differs():
    a = make_phantom(seed=2, shape=(64, 64, 32), spacing=(4.0, 4.0, 6.0))
    b = make_phantom(seed=2, shape=(64, 64, 32), spacing=(4.0, 4.0, 6.0))
    c = make_phantom(seed=3, shape=(64, 64, 32), spacing=(4.0, 4.0, 6.0))
    for name in ("ct", "nodules", "lungs"):
        np.testing.assert_array_equal(getattr(a, name).array, getattr(b, name).array)
    assert a.info == b.info
    assert not np.array_equal(a.ct.array, c.ct.array)
    assert a.info["nodules"] != c.info["nodules"]


def test_dtypes_grid_and_centring(phantoms):
    ph = phantoms["LPS"]
    assert ph.ct.array.dtype == np.int16 and ph.ct.modality == "CT"
    assert ph.nodules.array.dtype == np.uint16 and ph.lungs.array.dtype == np.uint8
    assert ph.ct.shape == SHAPE and ph.ct.spacing == SPACING
    assert ph.ct.same_grid(ph.nodules) and ph.ct.same_grid(ph.lungs)
    centre = ph.ct.index_to_world((np.asarray(SHAPE) - 1) / 2)
    np.testing.assert_allclose(centre, 0.0, atol=1e-6)
    json.dumps(ph.info)  # JSON-able as is


def test_volumes_and_diameters_are_voxel_counts(phantoms, random_phantom):
    for ph in _all(phantoms, random_phantom):
        labels = ph.nodules.array
        counts = np.bincount(labels.ravel())
        ids = [n["id"] for n in ph.info["nodules"]]
        assert sorted(ids) == list(range(1, labels.max() + 1))
        for n in ph.info["nodules"]:
            voxels = int(counts[n["id"]])
            assert n["voxels"] == voxels > 0
            expected = voxels * float(np.prod(ph.ct.spacing))
            assert n["volume_mm3"] == pytest.approx(expected, rel=1e-6)
            assert n["diameter_mm"] == pytest.approx((6 * expected / math.pi) ** (1 / 3), rel=1e-3)


def test_centres_fall_inside_their_own_label(phantoms, random_phantom):
    for ph in _all(phantoms, random_phantom):
        for n in ph.info["nodules"]:
            ijk = np.rint(ph.ct.world_to_index(np.array(n["centre_lps_mm"]))).astype(int)
            assert list(ijk) == n["centre_ijk"]
            assert ph.nodules.array[tuple(ijk)] == n["id"], (ph.ct.orientation, n)


def test_ras_is_the_same_world_content_as_lps(phantoms):
    lps, ras = phantoms["LPS"], phantoms["RAS"]
    assert lps.ct.orientation == "LPS" and ras.ct.orientation == "RAS"
    for name in ("ct", "nodules", "lungs"):
        np.testing.assert_array_equal(getattr(ras, name).array, getattr(lps, name).array[::-1, ::-1, :])
    # voxel (i, j, k) in RAS storage is voxel (nx-1-i, ny-1-j, k) in LPS storage, at the same world point
    ijk = np.array([[0, 0, 0], [5, 17, 9], [95, 95, 47]])
    mirrored = np.stack([SHAPE[0] - 1 - ijk[:, 0], SHAPE[1] - 1 - ijk[:, 1], ijk[:, 2]], axis=1)
    np.testing.assert_allclose(ras.ct.index_to_world(ijk), lps.ct.index_to_world(mirrored), atol=1e-9)
    assert [n["centre_lps_mm"] for n in ras.info["nodules"]] == [n["centre_lps_mm"] for n in lps.info["nodules"]]
    assert ras.info["orientation"] == "RAS"


def test_nodules_inside_lungs_and_apart(phantoms, random_phantom):
    for ph in _all(phantoms, random_phantom):
        labels, lungs = ph.nodules.array, ph.lungs.array
        assert np.all(lungs[labels > 0] == 1)
        for n in ph.info["nodules"]:
            own = labels == n["id"]
            assert cc3d.connected_components(own, connectivity=26).max() == 1
            ring = ndimage.binary_dilation(own, BALL) & ~own
            assert not np.any(labels[ring] > 0), "nodules touch each other"


def test_kinds_locations_and_sizes_honoured(phantoms):
    ph = phantoms["LPS"]
    assert [(n["kind"], n["location"]) for n in ph.info["nodules"]] == [
        (s.kind, s.location) if isinstance(s, NoduleSpec) else (s["kind"], s["location"]) for s in SPECS
    ]
    labels, lungs, anatomy = ph.nodules.array, ph.lungs.array, ph.anatomy.array
    vessels = (anatomy == 1) | (anatomy == 2)
    for n in ph.info["nodules"]:
        own = labels == n["id"]
        ring = ndimage.binary_dilation(own, BALL) & ~own
        touches_wall = bool(np.any(lungs[ring] == 0))
        if n["location"] == "juxta-pleural":
            assert touches_wall
        elif n["location"] == "juxta-vascular":
            assert np.any(vessels[ring]) and not touches_wall
        else:
            assert not touches_wall
        assert 0.5 * n["nominal_diameter_mm"] < n["diameter_mm"] < 1.3 * n["nominal_diameter_mm"]


def test_hu_ranges_plausible(phantoms):
    ph = phantoms["LPS"]
    ct, labels, lungs = ph.ct.array.astype(np.float32), ph.nodules.array, ph.lungs.array
    parenchyma = (lungs == 1) & (labels == 0) & (ph.anatomy.array == 0)
    assert -900 < np.median(ct[parenchyma]) < -780
    q25, q75 = np.percentile(ct[parenchyma], [25, 75])
    assert 15 < (q75 - q25) / 1.349 < 60  # noise plus texture, not flat (robust to vessel edges)
    assert np.median(ct[ph.anatomy.array == 4]) > 300  # bone
    assert ct.min() >= -1024 and np.median(ct[0:3, 0:3, :]) < -950  # air in the corners
    for n in ph.info["nodules"]:
        core = ndimage.binary_erosion(labels == n["id"], BALL)
        if not core.any():
            continue
        hu = ct[core]
        if n["kind"] == "solid":
            assert -80 < np.median(hu) < 100, n
        elif n["kind"] == "ground-glass":
            assert -720 < np.median(hu) < -470, n
        else:  # solid core inside a ground-glass halo
            assert np.percentile(hu, 95) > -150 and np.percentile(ct[labels == n["id"]], 25) < -450, n


def test_default_random_set(random_phantom):
    nods = random_phantom.info["nodules"]
    assert 4 <= len(nods) <= 8
    assert {n["kind"] for n in nods} == set(KINDS)
    assert {n["location"] for n in nods} == set(LOCATIONS)
    assert all(3.0 <= n["nominal_diameter_mm"] <= 30.0 for n in nods)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="orientation"):
        make_phantom(shape=(32, 32, 16), orientation="XYZ")
    with pytest.raises(ValueError, match="kind"):
        make_phantom(shape=(32, 32, 16), nodules=[{"kind": "huge", "location": "isolated", "diameter_mm": 5}])
    with pytest.raises(ValueError, match="could not place"):
        make_phantom(shape=(48, 48, 24), spacing=(2.0, 2.0, 4.0), nodules=[NoduleSpec("solid", "isolated", 30.0)],
                     max_tries=20)


def test_save_phantom_writes_readable_files_on_one_grid(tmp_path, phantoms):
    ph = phantoms["RAS"]
    paths = save_phantom(ph, tmp_path / "set", "case_01")
    assert {p.name for p in (tmp_path / "set").iterdir()} == {
        "case_01.nii.gz", "case_01_nodules.nii.gz", "case_01_lungs.nii.gz", "case_01.json"}
    ct = read_volume(paths["ct"])
    nod = read_volume(paths["nodules"])
    lungs = read_volume(paths["lungs"])
    assert ct.same_grid(ph.ct) and nod.same_grid(ct) and lungs.same_grid(ct)
    assert ct.orientation == "RAS"
    np.testing.assert_array_equal(ct.array, ph.ct.array)
    np.testing.assert_array_equal(nod.array, ph.nodules.array)
    np.testing.assert_array_equal(lungs.array, ph.lungs.array)
    info = json.loads(paths["json"].read_text())
    assert info["nodules"] == ph.info["nodules"]
    for n in info["nodules"]:  # centres still land in their label after the round trip
        ijk = np.rint(nod.world_to_index(np.array(n["centre_lps_mm"]))).astype(int)
        assert nod.array[tuple(ijk)] == n["id"]


def test_generate_script_writes_a_phantom_set(tmp_path):
    spec = importlib.util.spec_from_file_location("generate", REPO / "sample_data" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--out", str(tmp_path), "--count", "2", "--seed", "4", "--shape", "48", "48", "24",
                   "--spacing", "6", "6", "10", "--quiet"])
    assert rc == 0
    assert sorted(p.name for p in tmp_path.glob("*_nodules.nii.gz")) == [
        "chest_phantom_01_nodules.nii.gz", "chest_phantom_02_nodules.nii.gz"]
    again = make_phantom(seed=5, shape=(48, 48, 24), spacing=(6, 6, 10))
    np.testing.assert_array_equal(read_volume(tmp_path / "chest_phantom_02.nii.gz").array, again.ct.array)


def test_committed_sample_is_consistent():
    base = REPO / "sample_data" / "chest_phantom_01"
    if not Path(f"{base}.nii.gz").exists():
        pytest.skip("sample_data/chest_phantom_01.nii.gz not in this checkout")
    ct = read_volume(f"{base}.nii.gz")
    nod = read_volume(f"{base}_nodules.nii.gz")
    lungs = read_volume(f"{base}_lungs.nii.gz")
    info = json.loads(Path(f"{base}.json").read_text())
    assert nod.same_grid(ct) and lungs.same_grid(ct)
    big = [n for n in info["nodules"] if n["diameter_mm"] >= 5.0]
    assert len(big) >= 4
    assert "ground-glass" in {n["kind"] for n in big}
    assert {"juxta-pleural", "juxta-vascular"} <= {n["location"] for n in big}
    counts = np.bincount(nod.array.ravel().astype(np.int64))
    for n in info["nodules"]:
        assert n["volume_mm3"] == pytest.approx(counts[n["id"]] * ct.voxel_volume_mm3, rel=1e-6)
        ijk = np.rint(ct.world_to_index(np.array(n["centre_lps_mm"]))).astype(int)
        assert nod.array[tuple(ijk)] == n["id"]
        assert lungs.array[tuple(ijk)] == 1


def test_subsolid_nodule_set_and_seed_step(tmp_path):
    from medseg.data.phantom import subsolid_nodules

    specs = subsolid_nodules(7)
    assert specs == subsolid_nodules(7) and specs != subsolid_nodules(8)
    kinds = [s.kind for s in specs]
    assert kinds.count("ground-glass") == 4 and kinds.count("part-solid") == 2
    assert sum(s.diameter_mm <= 12.0 for s in specs) == 6 and all(4.5 <= s.diameter_mm <= 22.0 for s in specs)

    spec = importlib.util.spec_from_file_location("generate", REPO / "sample_data" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # a small field of view cannot hold all eight: the script places as many as fit, in order
    rc = mod.main(["--out", str(tmp_path), "--count", "2", "--seed", "20", "--seed-step", "3", "--nodules", "subsolid",
                   "--shape", "96", "96", "40", "--spacing", "3", "3", "6", "--quiet"])
    assert rc == 0
    info = json.loads((tmp_path / "chest_phantom_02.json").read_text())
    assert info["seed"] == 23
    want = subsolid_nodules(23)
    got = [(n["kind"], n["location"], n["nominal_diameter_mm"]) for n in info["nodules"]]
    assert got and got == [(s.kind, s.location, s.diameter_mm) for s in want[: len(got)]]
