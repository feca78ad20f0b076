"""Hybrid scans: real-nodule crops placed into chest CT backgrounds (world geometry, blending,
placement kinds, output layout, patient splits, and one run on the shared real data)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg.data import hybrid
from medseg.data.datasets import detect_layout, read_dataset
from medseg.data.hybrid import (
    BLEND_MM,
    DILATE_MM,
    KINDS,
    LidcNodule,
    build_hybrid,
    filter_by_patients,
    load_lidc_nodules,
    paste_patch,
    prepare_crop,
    read_patient_list,
    render_nodule,
    sample_nodules,
    split_by_patient,
    write_hybrid,
    write_patient_list,
)
from medseg.errors import InputError
from medseg.io import Volume, read_volume, write_mask
from medseg.training.fp_reduction import _scan_dirs

REPO = Path(__file__).resolve().parents[1]
CROP_SPACING = (0.7, 0.7, 1.25)
CROP_HU, CROP_AROUND_HU, LUNG_HU = 30, -700, -850


def _rot_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _world_grid(vol: Volume) -> np.ndarray:
    """(i, j, k, 3) LPS positions of every voxel centre."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), axis=-1)
    return vol.index_to_world(idx.reshape(-1, 3)).reshape(*vol.shape, 3)


def _ellipsoid_crop(semi_axes=(5.0, 5.0, 5.0), shape=(41, 41, 21), direction=None, pid="P1",
                    name="crop") -> LidcNodule:
    """A crop holding an ellipsoid nodule (semi-axes along world x, y, z in mm) at its centre."""
    direction = np.diag([-1.0, -1.0, 1.0]) if direction is None else direction  # LIDC-like flipped axes
    vol = Volume(np.zeros(shape, np.int16), CROP_SPACING, (12.0, -40.0, 100.0), direction)
    centre = vol.index_to_world((np.asarray(shape) - 1) / 2.0)
    rel = (_world_grid(vol) - centre) / np.asarray(semi_axes)
    mask = (rel ** 2).sum(axis=-1) <= 1.0
    image = np.where(mask, CROP_HU, CROP_AROUND_HU).astype(np.int16)
    return LidcNodule(file=f"{name}.nii.gz", patient_id=pid, texture="Solid", diameter_mm=2 * semi_axes[0],
                      image=vol.with_array(image), mask=vol.with_array(mask.astype(np.uint8)))


def _lung_background(spacing, shape, direction, seed=0) -> Volume:
    """Uniform noisy lung (-850 HU), centred on the world origin."""
    direction = np.asarray(direction, dtype=float)
    origin = -direction @ (np.asarray(spacing) * (np.asarray(shape) - 1) / 2.0)
    noise = np.random.default_rng(seed).normal(0.0, 15.0, shape)
    return Volume(np.rint(LUNG_HU + noise).astype(np.int16), spacing, tuple(origin), direction, modality="CT")


# permuted, oblique and inferior-pointing axes: i along world y, j along x, k along -z, then 30 deg about z
_OBLIQUE = _rot_z(30.0) @ np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
BACKGROUNDS = {
    "0.5iso_LPS": ((0.5, 0.5, 0.5), (60, 60, 60), np.eye(3)),
    "1x1x2.5_RAS": ((1.0, 1.0, 2.5), (40, 40, 18), np.diag([-1.0, -1.0, 1.0])),
    "0.7x0.7x5_oblique": ((0.7, 0.7, 5.0), (56, 56, 10), _OBLIQUE),
}


@pytest.mark.parametrize("name", list(BACKGROUNDS))
def test_world_geometry_volume_centroid_and_hu(name):
    spacing, shape, direction = BACKGROUNDS[name]
    bg = _lung_background(spacing, shape, direction)
    radius = 6.0
    crop = prepare_crop(_ellipsoid_crop((radius,) * 3))
    # off the voxel centres on purpose
    target = bg.index_to_world((np.asarray(shape) - 1) / 2.0 + np.array([0.3, -0.2, 0.35]))
    patch = render_nodule(bg, crop, target)
    image, labels = bg.array.copy(), np.zeros(shape, np.uint16)
    voxels = paste_patch(image, labels, patch, 1)
    assert voxels == int((labels == 1).sum()) > 0

    volume = voxels * bg.voxel_volume_mm3
    sphere = 4.0 / 3.0 * math.pi * radius ** 3
    # Thresholding 5 mm slabs at half partial volume moves a 12 mm sphere's volume by -5..+3 %
    # even for an exact sphere (depending on where the slices cut it): allow more there.
    assert volume == pytest.approx(sphere, rel=0.15 if max(spacing) > 3 else 0.10), (volume, sphere)
    # the partial-volume-weighted volume is conserved tightly on every grid
    assert patch.fraction.sum() * bg.voxel_volume_mm3 == pytest.approx(sphere, rel=0.05)
    pts = bg.index_to_world(np.argwhere(labels == 1))
    offset = np.linalg.solve(bg.direction @ np.diag(bg.spacing), pts.mean(axis=0) - target)
    assert np.all(np.abs(offset) <= 0.6), f"centroid off by {offset} voxels"

    # voxels whose every corner lies well inside the sphere hold exactly the crop's HU
    dist = np.linalg.norm(_world_grid(bg) - target, axis=-1)
    half_diag = 0.5 * float(np.linalg.norm(spacing))
    safe = dist + half_diag <= radius - float(np.linalg.norm(CROP_SPACING))
    assert safe.sum() >= 5
    assert np.all(labels[safe] == 1)
    assert np.all(image[safe] == CROP_HU)


@pytest.mark.parametrize("z_shift", [0.0, 0.25, 0.5])
def test_thick_slices_show_partial_volume(z_shift):
    """5 mm slices average the crop over the slab: the HU excess integrates to the sphere's."""
    spacing, shape = (0.7, 0.7, 5.0), (48, 48, 9)
    direction = np.diag([1.0, -1.0, -1.0])
    bg = _lung_background(spacing, shape, direction)
    bg = bg.with_array(np.full(shape, LUNG_HU, np.int16))
    nod = _ellipsoid_crop((4.0,) * 3)  # 8 mm: under two slices
    flat = nod.image.with_array(np.where(nod.mask.array > 0, CROP_HU, LUNG_HU).astype(np.int16))
    crop = prepare_crop(LidcNodule(file="c.nii.gz", patient_id="P", image=flat, mask=nod.mask))
    target = bg.index_to_world(np.array([23.5, 23.5, 4.0 + z_shift]))
    patch = render_nodule(bg, crop, target)
    assert patch.subsamples[2] > 1 and patch.subsamples[:2] == (1, 1)
    image, labels = bg.array.copy(), np.zeros(shape, np.uint16)
    paste_patch(image, labels, patch, 1)
    excess = (image.astype(float) - LUNG_HU).sum() * bg.voxel_volume_mm3
    expected = 4.0 / 3.0 * math.pi * 4.0 ** 3 * (CROP_HU - LUNG_HU)
    assert excess == pytest.approx(expected, rel=0.04)
    per_slice = (image.astype(float) - LUNG_HU).max(axis=(0, 1))
    partial = (per_slice > 50) & (per_slice < 0.9 * (CROP_HU - LUNG_HU))
    assert partial.any(), f"no partial-volume slice: {per_slice.round()}"


def test_crop_cut_at_the_nodule_places_nothing_beyond_its_faces():
    """LIDC crops end at the nodule's first and last slice: neither image nor label may spill
    past the crop's faces (mode="nearest" sampling would smear the edge slices outwards)."""
    bg = _lung_background((0.5, 0.5, 0.5), (60, 60, 60), np.eye(3), seed=5)
    nod = _ellipsoid_crop((5.0, 5.0, 5.0), shape=(41, 41, 7))  # 7 x 1.25 mm: the sphere is cut
    crop = prepare_crop(nod)
    image, labels = bg.array.copy(), np.zeros(bg.shape, np.uint16)
    paste_patch(image, labels, render_nodule(bg, crop, np.zeros(3)), 1)
    changed = np.argwhere((image != bg.array) | (labels > 0))
    # crop index of each changed voxel (the crop's centroid sits at the world origin)
    k = nod.image.world_to_index(bg.index_to_world(changed) + crop.centroid_lps)[:, 2]
    assert len(k) and k.min() >= -0.5 - 1e-6 and k.max() <= 7 - 0.5 + 1e-6
    label_slices = np.flatnonzero((labels > 0).any(axis=(0, 1)))
    assert len(label_slices) * 0.5 == pytest.approx(7 * 1.25, abs=0.6)  # the crop's slab, in mm


def test_thin_slice_background_gets_a_smooth_surface_not_crop_terraces():
    """A crop with 2.5 mm slices in a 0.5 mm background: the label's cross-section grows slice
    by slice (interpolated surface), not in 2.5 mm steps."""
    bg = _lung_background((0.5, 0.5, 0.5), (56, 56, 56), np.eye(3))
    vol = Volume(np.zeros((41, 41, 11), np.int16), (0.7, 0.7, 2.5), (0.0, 0.0, 0.0))
    rel = _world_grid(vol) - vol.index_to_world(np.array([20.0, 20.0, 5.0]))
    mask = (rel ** 2).sum(axis=-1) <= 6.0 ** 2
    nod = LidcNodule(file="t.nii.gz", patient_id="P", image=vol.with_array(np.where(mask, 30, -800).astype(np.int16)),
                     mask=vol.with_array(mask.astype(np.uint8)))
    labels = np.zeros(bg.shape, np.uint16)
    paste_patch(bg.array.copy(), labels, render_nodule(bg, prepare_crop(nod), np.zeros(3)), 1)
    areas = (labels > 0).sum(axis=(0, 1))
    areas = areas[areas > 0]
    assert len(areas) >= 20
    # a sphere's cross-section grows by at most 2 pi R dz per slice (at its poles); terraces from
    # the crop's 2.5 mm slices jump by much more than that
    steepest = 2 * math.pi * 6.0 * 0.5 / 0.25  # voxels of 0.5 x 0.5 mm
    assert np.abs(np.diff(areas)).max() <= 1.5 * steepest, f"terraced cross-sections: {areas.tolist()}"


def test_ground_glass_over_the_chest_wall_does_not_darken_it_or_label_it():
    bg = _lung_background((0.5, 0.5, 0.5), (56, 56, 56), np.eye(3), seed=3)
    w = _world_grid(bg)
    wall = w[..., 0] >= 2.0  # the nodule (radius 5) reaches 3 mm into the wall
    bg = bg.with_array(np.where(wall, 40, bg.array).astype(np.int16))
    nod = _ellipsoid_crop((5.0,) * 3)
    ggo = nod.image.with_array(np.where(nod.mask.array > 0, -600, CROP_AROUND_HU).astype(np.int16))
    crop = prepare_crop(LidcNodule(file="g.nii.gz", patient_id="P", image=ggo, mask=nod.mask))
    image, labels = bg.array.copy(), np.zeros(bg.shape, np.uint16)
    paste_patch(image, labels, render_nodule(bg, crop, np.zeros(3)), 1, allowed=~wall)
    assert np.all(image[wall] >= bg.array[wall]), "the nodule punched a dark hole into the wall"
    assert labels.any() and not labels[wall].any()
    lung_part = (labels > 0) & ~wall
    assert np.median(image[lung_part]) == pytest.approx(-600, abs=40)


def test_rotation_turns_the_nodule_in_world_space():
    bg = _lung_background((0.8, 0.8, 1.0), (60, 60, 30), np.diag([-1.0, -1.0, 1.0]))
    crop = prepare_crop(_ellipsoid_crop((8.0, 3.0, 3.0), shape=(51, 41, 21)))  # long along world x
    target = bg.index_to_world(np.array([29.5, 29.5, 14.5]))
    spreads = []
    for rot in (np.eye(3), _rot_z(90.0)):
        labels = np.zeros(bg.shape, np.uint16)
        paste_patch(bg.array.copy(), labels, render_nodule(bg, crop, target, rot), 1)
        spreads.append(bg.index_to_world(np.argwhere(labels == 1)).std(axis=0))
    assert spreads[0][0] > 2.0 * spreads[0][1]  # unrotated: long along x
    assert spreads[1][1] > 2.0 * spreads[1][0]  # 90 deg about z: long along y
    assert spreads[1][2] == pytest.approx(spreads[0][2], rel=0.1)


def test_blending_leaves_far_background_bit_identical_and_mixes_the_margin():
    """The crop's surroundings come along with a weight that fades with distance: a bright
    halo on one side of the nodule is carried as a mix, and the crop's lung (100 HU brighter
    than the background's) is brought to the background's level, so it leaves no halo."""
    bg = _lung_background((0.5, 0.5, 0.5), (64, 64, 64), np.eye(3), seed=4)
    radius = 5.0
    nod = _ellipsoid_crop((radius,) * 3)
    w = _world_grid(nod.image) - nod.image.index_to_world((np.asarray(nod.image.shape) - 1) / 2.0)
    d = np.linalg.norm(w, axis=-1) - radius
    crop_hu = np.where(d <= 0, CROP_HU, LUNG_HU + 100)
    crop_hu = np.where((d > 0) & (d <= 3.0) & (w[..., 0] > 1.0), -400, crop_hu)  # halo on the +x side
    crop = prepare_crop(LidcNodule(file="h.nii.gz", patient_id="P", image=nod.image.with_array(
        crop_hu.astype(np.int16)), mask=nod.mask))
    target = np.array([0.1, 0.2, -0.15])
    patch = render_nodule(bg, crop, target)
    assert patch.shift_hu == pytest.approx(-100, abs=5)
    image, labels = bg.array.copy(), np.zeros(bg.shape, np.uint16)
    paste_patch(image, labels, patch, 1)

    rel = _world_grid(bg) - target
    dist = np.linalg.norm(rel, axis=-1)
    changed = image != bg.array
    reach = radius + DILATE_MM + BLEND_MM + 1.5  # + the crop's and the background's voxel size
    assert changed.any() and dist[changed].max() <= reach
    np.testing.assert_array_equal(image[dist > reach], bg.array[dist > reach])
    diff = image.astype(float) - bg.array
    halo_side, plain_side = rel[..., 0] > 2.0, rel[..., 0] < -1.0
    full = -400 + patch.shift_hu - LUNG_HU  # the halo, brought to the background's lung level
    near = diff[halo_side & (dist > radius + 0.7) & (dist < radius + 1.5)].mean()
    mid = diff[halo_side & (dist > radius + 2.0) & (dist < radius + 2.8)].mean()
    # the weight's ramp (world mm) is about 0.95 at 1.1 mm and 0.65 at 2.4 mm from the mask
    assert 0.75 * full < near <= 1.05 * full and 0.35 * full < mid < 0.85 * near, (near, mid, full)
    plain = diff[plain_side & (dist > radius + 1.0) & (dist < radius + 3.0)]
    assert abs(plain.mean()) < 15, "the crop's brighter lung left a halo"


def test_margin_spares_background_vessels_and_wall():
    """The crop's surroundings replace only lung-like background: a vessel 1.5 mm from the
    nodule surface and chest wall within reach of the margin keep their exact values."""
    bg = _lung_background((0.5, 0.5, 0.5), (64, 64, 64), np.eye(3), seed=2)
    w = _world_grid(bg)
    radius = 4.0
    vessel = np.hypot(w[..., 0] - (radius + 2.5), w[..., 1]) <= 1.0  # along z, 1.5 mm from the surface
    wall = w[..., 1] >= radius + 3.0
    dense = np.where(vessel | wall, 40, bg.array).astype(np.int16)
    bg = bg.with_array(dense)
    crop = prepare_crop(_ellipsoid_crop((radius,) * 3))
    image, labels = bg.array.copy(), np.zeros(bg.shape, np.uint16)
    paste_patch(image, labels, render_nodule(bg, crop, np.zeros(3)), 1)
    assert labels.any() and not (labels > 0)[vessel | wall].any()
    np.testing.assert_array_equal(image[vessel | wall], bg.array[vessel | wall])
    rim = ~(vessel | wall) & (labels == 0) & (np.linalg.norm(w, axis=-1) < radius + 1.0)
    assert rim.any() and (image[rim] > bg.array[rim]).mean() > 0.5  # while the nodule rim is carried


def test_crop_with_empty_mask_is_skipped():
    nod = _ellipsoid_crop()
    empty = LidcNodule(file="empty.nii.gz", patient_id="P9", image=nod.image,
                       mask=nod.mask.with_array(np.zeros(nod.mask.shape, np.uint8)))
    assert prepare_crop(empty) is None


# --------------------------------------------------------------------------- synthetic chest
def _chest() -> tuple[Volume, np.ndarray, np.ndarray]:
    """Body at 40 HU in air, two ellipsoid lungs at -850 HU with vessel tubes (+40 HU)."""
    spacing, shape = (1.25, 1.25, 2.5), (176, 128, 40)
    vol = Volume(np.zeros(shape, np.int16), spacing, tuple(-(np.asarray(shape) - 1) / 2 * spacing))
    w = _world_grid(vol)
    x, y, z = w[..., 0], w[..., 1], w[..., 2]
    body = (x / 100.0) ** 2 + (y / 70.0) ** 2 <= 1.0
    lung = np.zeros(shape, bool)
    vessel = np.zeros(shape, bool)
    for side in (-1.0, 1.0):
        lung |= ((x - side * 45.0) / 36.0) ** 2 + (y / 50.0) ** 2 + (z / 46.0) ** 2 <= 1.0
        for vx, vy in ((30.0, -15.0), (52.0, 22.0)):
            vessel |= (x - side * vx) ** 2 + (y - vy) ** 2 <= 1.6 ** 2
        vessel |= (x - side * 40.0) ** 2 + (z - 12.0) ** 2 <= 1.6 ** 2  # along y
    vessel &= lung
    noise = np.random.default_rng(0).normal(0.0, 15.0, shape)
    ct = np.where(body, 40.0, -1000.0)
    ct = np.where(lung, LUNG_HU + noise, ct)
    ct = np.where(vessel, 40.0 + noise, ct)
    return vol.with_array(np.rint(ct).astype(np.int16), modality="CT", source="/some/where/chest.nii.gz"), lung, vessel


def _chest_crops(n: int = 6) -> list[LidcNodule]:
    radii = [(4.5, 4.0, 4.0), (3.5, 3.5, 3.5), (4.0, 4.5, 3.5), (3.0, 3.0, 3.5), (4.0, 3.5, 4.0), (3.5, 3.0, 3.0)]
    return [_ellipsoid_crop(radii[i % len(radii)], shape=(33, 33, 17), pid=f"P{i % 4}", name=f"n{i}")
            for i in range(n)]


@pytest.fixture(scope="module")
def chest():
    return _chest()


@pytest.fixture(scope="module")
def chest_scan(chest):
    bg, lung, _ = chest
    return build_hybrid(bg, _chest_crops(), seed=3, lung_mask=lung)


def _check_kinds(scan, chest) -> None:
    """Each nodule fits its placement kind; labels are 1..N; nodules keep radii + 5 mm apart."""
    bg, lung, vessel = chest
    sp = np.asarray(bg.spacing)
    d_out = ndimage.distance_transform_edt(lung, sampling=sp)
    d_vessel = ndimage.distance_transform_edt(~vessel, sampling=sp)
    face = ndimage.generate_binary_structure(3, 1)
    for n in scan.nodules:
        m = scan.labels == n.label
        assert m.sum() == n.voxels > 0
        centre_idx = tuple(np.rint(bg.world_to_index(np.asarray(n.centre_lps))).astype(int))
        assert m[centre_idx], "the recorded centre lies in the nodule"
        r = n.diameter_mm / 2.0
        if n.kind == "juxta_pleural":
            assert (ndimage.binary_dilation(m, face) & ~lung).any(), "touches the lung boundary"
            assert lung[m].mean() >= 0.9
            assert lung[centre_idx] and d_out[centre_idx] <= r + 2.0
        elif n.kind == "parenchyma":
            assert lung[m].all() and d_out[m].min() >= 3.0 - 1e-6
            assert not (ndimage.binary_dilation(m, face) & vessel).any()
        else:
            assert lung[m].all()
            assert d_vessel[centre_idx] <= r + 3.0
    ids = [n.label for n in scan.nodules]
    assert ids == list(range(1, len(ids) + 1)) and sorted(np.unique(scan.labels).tolist()) == [0, *ids]
    for a in scan.nodules:
        for b in scan.nodules:
            if a.label < b.label:
                gap = np.linalg.norm(np.subtract(a.centre_lps, b.centre_lps))
                assert gap >= (a.diameter_mm + b.diameter_mm) / 2.0 + 5.0, (a, b)


def test_placement_kinds_on_a_synthetic_chest(chest, chest_scan):
    assert not chest_scan.skipped and len(chest_scan.nodules) == 6
    assert sorted(n.kind for n in chest_scan.nodules) == sorted(KINDS * 2)  # equal shares
    assert chest_scan.background == "chest.nii.gz"
    _check_kinds(chest_scan, chest)


def test_crowded_scan_keeps_nodules_apart_and_in_kind(chest):
    bg, lung, _ = chest
    scan = build_hybrid(bg, _chest_crops(12), seed=8, lung_mask=lung, region="upper")
    assert len(scan.nodules) >= 8 and len(scan.nodules) + len(scan.skipped) == 12
    _check_kinds(scan, chest)


def test_build_is_deterministic_and_region_keeps_nodules_on_one_side(chest, chest_scan):
    bg, lung, _ = chest
    again = build_hybrid(bg, _chest_crops(), seed=3, lung_mask=lung)
    np.testing.assert_array_equal(again.labels, chest_scan.labels)
    np.testing.assert_array_equal(again.volume.array, chest_scan.volume.array)
    left = build_hybrid(bg, _chest_crops(4), seed=5, lung_mask=lung, region="left")
    lower = build_hybrid(bg, _chest_crops(4), seed=5, lung_mask=lung, region="lower")
    for scan, axis, sign in ((left, 0, 1.0), (lower, 2, -1.0)):  # LPS: +x left, +z superior
        assert len(scan.nodules) >= 3 and scan.region in ("left", "lower")
        changed = scan.volume.array != bg.array
        pts = bg.index_to_world(np.argwhere(changed | (scan.labels > 0)))
        assert np.all(sign * pts[:, axis] > 0.0), "nodules and their margins stay in the region"


def test_output_is_read_as_a_phantom_set_and_by_fp_fitting(chest_scan, tmp_path):
    paths = write_hybrid(chest_scan, tmp_path, "hyb_01")
    assert detect_layout(tmp_path) == "phantoms"
    cases = read_dataset(tmp_path)
    assert [Path(c.image).name for c in cases] == ["hyb_01.nii.gz"]
    assert Path(cases[0].label).name == "hyb_01_nodules.nii.gz"
    scans = list(_scan_dirs([tmp_path]))
    assert [(s[0], s[1].name, s[2].name) for s in scans] == [("hyb_01", "hyb_01.nii.gz", "hyb_01_nodules.nii.gz")]
    ct, lab = read_volume(paths.ct), read_volume(paths.nodules)
    assert ct.array.dtype == np.int16 and lab.array.dtype == np.uint16
    assert ct.same_grid(chest_scan.volume) and lab.same_grid(ct)
    np.testing.assert_array_equal(lab.array, chest_scan.labels)
    info = json.loads(paths.json.read_text())
    assert info["background"] == "chest.nii.gz" and info["seed"] == 3 and info["region"] == "all"
    assert sorted(d["id"] for d in info["nodules"]) == sorted(set(np.unique(lab.array).tolist()) - {0})
    for d in info["nodules"]:
        assert d["placement"] in KINDS and d["lidc_file"].endswith(".nii.gz") and d["patient_id"]
        assert d["kind"] == "solid" and d["location"] in ("isolated", "juxta-vascular", "juxta-pleural")
        ijk = np.rint(ct.world_to_index(np.asarray(d["centre_lps_mm"]))).astype(int)
        assert lab.array[tuple(ijk)] == d["id"]
        assert d["voxels"] == int((lab.array == d["id"]).sum())
    assert not list(tmp_path.glob(".*partial*"))


# --------------------------------------------------------------------------- patients
def _fake_pool() -> list[LidcNodule]:
    counts = [1, 3, 2, 1, 4, 1, 2, 2, 1, 5, 1, 2]
    return [LidcNodule(file=f"LIDC-IDRI-{p:04d}_R_{k}.nii.gz", patient_id=f"LIDC-IDRI-{p:04d}")
            for p, c in enumerate(counts, start=1) for k in range(1, c + 1)]


def test_patient_split_is_disjoint_and_deterministic(tmp_path):
    pool = _fake_pool()
    a, b = split_by_patient(pool, 0.25, seed=7), split_by_patient(pool, 0.25, seed=7)
    assert a == b
    assert not set(a.train) & set(a.test) and a.test
    assert set(a.train) | set(a.test) == {n.patient_id for n in pool}
    n_test = sum(n.patient_id in a.test for n in pool)
    assert 0.25 * len(pool) <= n_test < 0.25 * len(pool) + 5
    assert any(split_by_patient(pool, 0.25, seed=s) != a for s in range(8, 12))
    write_patient_list(tmp_path / "test.txt", a.test)
    assert read_patient_list(tmp_path / "test.txt") == a.test
    held_out = filter_by_patients(pool, include=read_patient_list(tmp_path / "test.txt"))
    training = filter_by_patients(pool, exclude=a.test)
    assert {n.patient_id for n in held_out} == set(a.test)
    assert not {n.patient_id for n in training} & set(a.test)
    with pytest.raises(InputError):
        filter_by_patients(pool, include=["nobody"])
    picked = sample_nodules(pool, 5, seed=1, salt="bg.nrrd")
    assert picked == sample_nodules(pool, 5, seed=1, salt="bg.nrrd") and len(set(picked)) == 5


def test_bad_inputs_raise_input_error(tmp_path, chest):
    with pytest.raises(InputError, match="nodules.csv"):
        load_lidc_nodules(tmp_path)
    bg, lung, _ = chest
    with pytest.raises(InputError, match="lung mask shape"):
        build_hybrid(bg, _chest_crops(1), lung_mask=lung[:-1])
    with pytest.raises(InputError, match="no lung"):
        build_hybrid(bg, _chest_crops(1), lung_mask=np.zeros_like(lung))
    with pytest.raises(ValueError, match="region"):
        build_hybrid(bg, _chest_crops(1), lung_mask=lung, region="middle")


def _write_lidc(root: Path, crops: list[LidcNodule]) -> None:
    rows = ["file,patient_id,diameter_mm,Texture,Texture_value"]
    for c in crops:
        write_mask(c.image.array, c.image, root / "image" / c.file, np.int16)
        write_mask(c.mask.array, c.mask, root / "mask" / c.file, np.uint8)
        rows.append(f"{c.file},{c.patient_id},{c.diameter_mm},Solid,5")
    (root / "nodules.csv").write_text("\n".join(rows) + "\n")


def test_command_line_writes_scans_and_patient_lists(tmp_path, chest):
    spec = importlib.util.spec_from_file_location("make_hybrids", REPO / "sample_data" / "make_hybrids.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    bg, lung, _ = chest
    lidc = tmp_path / "lidc"
    crops = [_ellipsoid_crop((3.5, 3.5, 3.5), shape=(25, 25, 13), pid=f"LIDC-IDRI-000{i}",
                             name=f"LIDC-IDRI-000{i}_R_1") for i in range(1, 5)]
    _write_lidc(lidc, crops)
    write_mask(bg.array, bg, tmp_path / "chest.nii.gz", np.int16)
    write_mask(lung.astype(np.uint8), bg, tmp_path / "chest_lungs.nii.gz", np.uint8)
    split = [tmp_path / "train.txt", tmp_path / "test.txt"]
    assert cli.main(["--lidc", str(lidc), "--write-split", *map(str, split), "--split-fraction", "0.5",
                     "--quiet"]) == 0
    test_ids = read_patient_list(split[1])
    out = tmp_path / "out"
    assert cli.main(["--lidc", str(lidc), "--background", str(tmp_path / "chest.nii.gz"), "--out", str(out),
                     "--per-scan", "2", "--seed", "4", "--count", "2", "--patients-from", str(split[1]),
                     "--lung-mask", str(tmp_path / "chest_lungs.nii.gz"), "--quiet"]) == 0
    names = sorted(p.name for p in out.glob("*.json"))
    assert names == ["chest_hybrid_s4.json", "chest_hybrid_s5.json"]
    assert len(read_dataset(out)) == 2
    for name in names:
        info = json.loads((out / name).read_text())
        assert info["nodules"] and {d["patient_id"] for d in info["nodules"]} <= set(test_ids)
    assert cli.main(["--lidc", str(tmp_path / "missing"), "--write-split", *map(str, split), "--quiet"]) == 2


# --------------------------------------------------------------------------- real data
def test_real_lidc_nodules_in_the_real_5mm_chest(shared_data):
    from medseg.inference.lung_mask import compute_lung_mask

    bg_path = shared_data / "real_chest" / "chest_ct_5mm_mass.nrrd"
    lidc = shared_data / "lidc_nodule_vois"
    if not bg_path.is_file() or not (lidc / "nodules.csv").is_file():
        pytest.skip(f"real chest CT or LIDC crops not found at {shared_data}")
    pool = sorted((n for n in load_lidc_nodules(lidc) if 12.0 <= n.diameter_mm <= 25.0), key=lambda n: n.file)
    chosen = sample_nodules(pool, 3, seed=0, salt="test")
    bg = read_volume(bg_path)
    scan = build_hybrid(bg, chosen, seed=0)
    assert not scan.skipped and len(scan.nodules) == 3
    assert sorted(np.unique(scan.labels).tolist()) == [0, 1, 2, 3]
    lung = compute_lung_mask(bg).mask > 0
    by_file = {n.file: n for n in chosen}
    for n in scan.nodules:
        m = scan.labels == n.label
        assert m.sum() == n.voxels > 0
        assert lung[m].mean() >= 0.9, f"{n.lidc_file} ({n.kind}) lies outside the lung"
        crop = prepare_crop(by_file[n.lidc_file])
        assert n.voxels * bg.voxel_volume_mm3 == pytest.approx(crop.volume_mm3, rel=0.35)
    untouched = scan.volume.array == bg.array
    assert untouched.mean() > 0.99
    assert hybrid.hybrid_info(scan)["background"] == "chest_ct_5mm_mass.nrrd"


def test_hybrids_of_one_background_are_one_patient_in_splits(tmp_path) -> None:
    """Two hybrids of one background never land on both sides of a training split."""
    for i, bg in enumerate(["a.nrrd", "a.nrrd", "b.nrrd"]):
        vol = Volume(np.zeros((4, 4, 4), np.int16), (1.0, 1.0, 1.0))
        write_mask(vol.array, vol, tmp_path / f"h{i}.nii.gz", np.int16)
        write_mask(vol.array.astype(np.uint16), vol, tmp_path / f"h{i}_nodules.nii.gz", np.uint16)
        (tmp_path / f"h{i}.json").write_text(json.dumps({"generator": "medseg.data.hybrid", "background": bg}))
    groups = {c.key.split("/")[-1]: c.group for c in read_dataset(tmp_path)}
    assert groups["h0"] == groups["h1"] != groups["h2"]
