"""Components: what is kept and what is removed near the lung wall, and the feature values."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.postprocess import PostprocessSettings, postprocess
from medseg.postprocess.components import component_features, elongation, equivalent_diameter_mm

SPACING = (0.7, 0.7, 1.25)
SHAPE = (100, 80, 40)
WALL_I = 70  # lung for i < 70, chest wall for i >= 70


def world():
    return np.indices(SHAPE).astype(float) * np.asarray(SPACING)[:, None, None, None]


def ball(g, centre, r):
    return ((g - np.asarray(centre, float)[:, None, None, None]) ** 2).sum(0) <= r * r


@pytest.fixture(scope="module")
def scene():
    """Lung for i < WALL_I. A 10 mm juxta-pleural nodule and a 3 mm-wide, 30 mm-long vessel
    both touch the wall; a 2 mm speck lies in the lung; an 8 mm blob sits inside the chest wall."""
    g = world()
    wall_mm = WALL_I * SPACING[0]
    z = 20 * SPACING[2]
    nodule = ball(g, (wall_mm - 3.0, 20.0, z), 5.0)  # centre 3 mm from the wall: 2 mm embedded
    t = g[1] - 35.0  # vessel runs along j from j=35 mm to 65 mm, its side touching the wall
    tube = ((g[0] - (wall_mm - 1.0)) ** 2 + (g[2] - z) ** 2 <= 1.5**2) & (t >= 0) & (t <= 30.0)
    speck = ball(g, (20.0, 20.0, z), 1.0)
    outside = ball(g, (wall_mm + 10.0, 40.0, z), 4.0)
    prob = np.zeros(SHAPE, np.float32)
    prob[nodule], prob[tube], prob[speck], prob[outside] = 0.95, 0.8, 0.9, 0.7
    lungs = g[0] < wall_mm
    image = np.where(lungs, -850, 40).astype(np.int16)
    image[nodule | tube | speck] = 30
    return {"prob": prob, "image": image, "lungs": lungs, "nodule": nodule, "tube": tube}


def kept_masks(labels, features):
    return [labels == f["label"] for f in features]


def test_vessel_filter_off_keeps_nodule_and_vessel(scene):
    labels, feats = postprocess(scene["prob"], scene["image"], SPACING, scene["lungs"])
    assert labels.dtype == np.uint16 and labels.max() == len(feats) == 2
    masks = kept_masks(labels, feats)
    # largest first: the 10 mm nodule (~524 mm3) outweighs the tube (~212 mm3)
    assert np.array_equal(masks[0], scene["nodule"]) and np.array_equal(masks[1], scene["tube"])
    assert feats[0]["voxels"] > feats[1]["voxels"]
    # the speck (2 mm) and the chest-wall blob are gone
    assert not labels[scene["prob"] == 0.9].any() and not labels[scene["prob"] == 0.7].any()


def test_vessel_filter_removes_tube_keeps_juxtapleural_nodule(scene):
    s = PostprocessSettings(vessel_filter=True)
    labels, feats = postprocess(scene["prob"], scene["image"], SPACING, scene["lungs"], s)
    assert len(feats) == 1 and np.array_equal(labels == 1, scene["nodule"])
    f = feats[0]
    assert f["mean_probability"] == pytest.approx(0.95) and f["max_probability"] == pytest.approx(0.95)
    assert f["volume_mm3"] == pytest.approx(f["voxels"] * np.prod(SPACING))
    assert f["equivalent_diameter_mm"] == pytest.approx(10.0, rel=0.05)
    assert f["elongation"] < 1.3
    assert 0.5 < f["lung_overlap"] < 1.0  # part of it lies in the wall, still counted as lung


def test_juxtapleural_nodule_kept_when_lung_mask_excludes_it(scene):
    # an air-threshold lung mask leaves the soft-tissue nodule and vessel out entirely
    air_lungs = scene["lungs"] & (scene["image"] < -500)
    s = PostprocessSettings(vessel_filter=True)
    labels, feats = postprocess(scene["prob"], scene["image"], SPACING, air_lungs, s)
    assert len(feats) == 1 and np.array_equal(labels == 1, scene["nodule"])
    assert feats[0]["lung_overlap"] == 0.0 and feats[0]["lung_contact"] > 0.3


def test_no_lung_mask_and_min_diameter(scene):
    labels, feats = postprocess(scene["prob"], scene["image"], SPACING, None)
    assert len(feats) == 3  # nodule, tube, chest-wall blob (8 mm); the 2 mm speck still goes
    s = PostprocessSettings(min_diameter_mm=0.0, restrict_to_lung=False)
    assert len(postprocess(scene["prob"], scene["image"], SPACING, scene["lungs"], s)[1]) == 4


def test_tube_elongation_matches_pca_theory():
    # a straight tube of length L and radius r: elongation = sqrt((L^2/12) / (r^2/4)) = L/(r sqrt 3)
    g = world()
    r, length = 2.0, 30.0
    tube = ((g[0] - 30) ** 2 + (g[2] - 25) ** 2 <= r * r) & (g[1] >= 10) & (g[1] <= 10 + length)
    el, _ = elongation(np.argwhere(tube), SPACING)
    assert el == pytest.approx(length / (r * np.sqrt(3)), rel=0.1)
    # the same voxels read with swapped spacing are a different shape: spacing is honoured
    el_wrong, _ = elongation(np.argwhere(tube), (1.25, 0.7, 0.7))
    assert abs(el_wrong - el) > 1.0
    assert equivalent_diameter_mm(4 / 3 * np.pi * 27) == pytest.approx(6.0)


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="image shape"):
        postprocess(np.zeros((4, 4, 4), np.float32), np.zeros((4, 4, 5)), (1, 1, 1))


def test_min_confidence_cuts_on_mean_not_peak_probability(scene):
    prob = scene["prob"].copy()
    core = tuple(np.argwhere(scene["tube"])[len(np.argwhere(scene["tube"])) // 2])
    prob[core] = 0.99  # the vessel's core outpeaks the nodule (0.95); its mean stays ~0.8
    s = PostprocessSettings(crf=False, min_confidence=0.9)
    labels, feats = postprocess(prob, scene["image"], SPACING, scene["lungs"], s)
    assert len(feats) == 1 and np.array_equal(labels == 1, scene["nodule"])
    assert feats[0]["mean_probability"] == pytest.approx(0.95)
    off = postprocess(prob, scene["image"], SPACING, scene["lungs"], PostprocessSettings(crf=False))[1]
    assert len(off) == 2 and max(f["max_probability"] for f in off) == pytest.approx(0.99)


def test_shell_dense_sees_a_vessel_leaving_the_component_but_not_air_around_a_nodule():
    shape = (40, 40, 40)
    g = np.indices(shape)
    nodule = ((g - 10) ** 2).sum(0) <= 16
    vessel = ((g[0] - 28) ** 2 + (g[1] - 28) ** 2 <= 4)  # a tube along k through the whole volume
    image = np.full(shape, -850.0)
    image[nodule | vessel] = 40.0
    labels = np.zeros(shape, np.uint16)
    labels[nodule] = 1
    labels[vessel & (g[2] >= 15) & (g[2] < 25)] = 2  # the model marked a 10-voxel stretch of it
    f = {x["label"]: x for x in component_features(labels, (1.0, 1.0, 1.0), image=image)}
    assert f[1]["shell_dense"] == 0.0 and f[1]["std_hu"] == 0.0
    # the tube continues through both ends: its cross-sections are dense, the side is air
    assert 0.05 < f[2]["shell_dense"] < 0.5  # two 13-voxel end caps of a ~300-voxel shell


def _scene_mm(spacing, extent_mm=40.0):
    shape = tuple(int(round(extent_mm / s)) for s in spacing)
    return np.indices(shape).astype(float) * np.asarray(spacing)[:, None, None, None]


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 2.5)])
def test_blobness_tells_a_nodule_from_a_vessel_whatever_its_contrast_or_the_voxel_size(spacing):
    from medseg.postprocess.components import blobness

    g = _scene_mm(spacing)
    sphere = ((g - 20.0) ** 2).sum(0) <= 4.0**2
    tube = (g[0] - 20.0) ** 2 + (g[1] - 20.0) ** 2 <= 1.5**2
    on_vessel = sphere | ((g[0] - 24.0) ** 2 + (g[1] - 20.0) ** 2 <= 1.5**2)
    noise = np.random.default_rng(0).normal(0.0, 25.0, sphere.shape)

    def score(mask, hu):
        return blobness(np.where(mask, hu, -860.0) + noise, mask, spacing)

    solid, ggo, vessel, juxta = score(sphere, 40.0), score(sphere, -600.0), score(tube, 40.0), score(on_vessel, 40.0)
    assert solid > 0.5 and vessel < 0.1
    assert ggo == pytest.approx(solid, abs=0.08)  # shape, not contrast
    assert vessel < juxta < solid  # a nodule on a vessel: in between


def test_shape_measures_only_for_candidates_when_the_classifier_uses_them(scene):
    from medseg.postprocess.candidates import CandidateClassifier

    clf = CandidateClassifier(features=["prob_blobness"], mean=[0.0], scale=[1.0], coef=[1.0])
    s = PostprocessSettings(crf=False, candidate_classifier=clf)
    labels, feats = postprocess(scene["prob"], scene["image"], SPACING, scene["lungs"], s)
    assert feats and all(0.0 <= f["prob_blobness"] <= 1.0 and "hu_blobness" in f for f in feats)
    assert all(f["confidence"] == pytest.approx(1 / (1 + np.exp(-f["prob_blobness"]))) for f in feats)
    plain = postprocess(scene["prob"], scene["image"], SPACING, scene["lungs"], PostprocessSettings(crf=False))[1]
    assert plain and not any("prob_blobness" in f for f in plain)
