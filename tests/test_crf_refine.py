"""Dense-CRF refinement: boundary onto the intensity edge, spacing in mm, work only near candidates."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("pydensecrf.densecrf", reason="CRF refinement needs the optional pydensecrf2")

from medseg.evaluation.metrics import dice  # noqa: E402
from medseg.postprocess import PostprocessSettings, postprocess  # noqa: E402
from medseg.postprocess.crf import CRFSettings, candidate_boxes, refine  # noqa: E402

SPACING = (0.7, 0.7, 2.5)


def scene(spacing, shape_mm=(42.0, 42.0, 40.0), centre=(21.0, 21.0, 20.0), radius=6.0, prob_radius=8.0, seed=0):
    """A solid nodule (radius mm) in lung, and a network-like probability whose 0.5 level sits at
    prob_radius mm (dilated when > radius) with a 1 mm logistic edge."""
    shape = tuple(int(round(m / s)) for m, s in zip(shape_mm, spacing))
    g = np.indices(shape).astype(float) * np.asarray(spacing)[:, None, None, None]
    r = np.sqrt(((g - np.asarray(centre)[:, None, None, None]) ** 2).sum(0))
    truth = r <= radius
    rng = np.random.default_rng(seed)
    image = (np.where(truth, 20.0, -820.0) + rng.normal(0, 25, shape)).astype(np.float32)
    prob = (1 / (1 + np.exp((r - prob_radius) / 1.0))).astype(np.float32)
    return image, prob, truth


@pytest.mark.parametrize("prob_radius", [7.5, 7.0])
def test_dilated_boundary_moves_to_intensity_edge(prob_radius):
    image, prob, truth = scene(SPACING, prob_radius=prob_radius)
    before = prob >= 0.5
    after = refine(prob, image, SPACING)
    assert dice(after, truth) > dice(before, truth) + 0.05
    assert after.sum() < before.sum()  # shrunk towards the edge ...
    assert (after & truth).sum() >= 0.98 * truth.sum()  # ... without cutting into the nodule
    # through postprocess(): the same refinement, then components
    labels, feats = postprocess(prob, image, SPACING, settings=PostprocessSettings(crf=True))
    assert len(feats) == 1 and dice(labels > 0, truth) == pytest.approx(dice(after, truth))


def test_torch_backend_agrees_with_pydensecrf():
    # same model, exact truncated kernels: also pulls the dilated boundary onto the edge
    image, prob, truth = scene(SPACING, shape_mm=(30.0, 30.0, 30.0), centre=(15.0, 15.0, 15.0), prob_radius=7.0)
    before = prob >= 0.5
    exact = refine(prob, image, SPACING, settings=CRFSettings(backend="torch"))
    lattice = refine(prob, image, SPACING)
    assert dice(exact, truth) > dice(before, truth) + 0.1
    assert dice(exact, lattice) > 0.85


def test_same_physical_scene_same_result_on_different_grids():
    # kernels in mm: the same nodule and probability sampled on three grids give the same world
    # volume after refinement (threshold alone: (7/6)^3 = 1.59 x the nodule)
    ratios = []
    for spacing in [(0.7, 0.7, 2.5), (0.7, 0.7, 1.25), (1.0, 1.0, 1.0)]:
        image, prob, truth = scene(spacing, prob_radius=7.0)
        refined = refine(prob, image, spacing)
        ratios.append(refined.sum() / truth.sum())
    assert max(ratios) < 1.3 and max(ratios) - min(ratios) < 0.15, ratios


def test_kernels_are_in_mm():
    # doubling every spacing and every mm setting describes the same problem: identical result;
    # an implementation that ignored spacing would see wider kernels and a wider box instead
    image, prob, _ = scene(SPACING, prob_radius=7.0)
    base = CRFSettings()
    a = refine(prob, image, SPACING, settings=base)
    doubled = dataclasses.replace(base, pad_mm=2 * base.pad_mm, bilateral_sigma_mm=2 * base.bilateral_sigma_mm,
                                  smooth_sigma_mm=2 * base.smooth_sigma_mm)
    b = refine(prob, image, tuple(2 * s for s in SPACING), settings=doubled)
    assert np.array_equal(a, b)
    wider = dataclasses.replace(base, bilateral_sigma_mm=2 * base.bilateral_sigma_mm)
    assert not np.array_equal(a, refine(prob, image, SPACING, settings=wider))


def test_axis_order_of_spacing_is_honoured():
    image, prob, _ = scene(SPACING)
    a = refine(prob, image, SPACING)
    perm = (2, 0, 1)
    b = refine(prob.transpose(perm).copy(), image.transpose(perm).copy(), tuple(SPACING[p] for p in perm))
    assert dice(a, b.transpose(np.argsort(perm))) > 0.98


def test_only_boxes_around_candidates_change():
    image, prob, truth = scene(SPACING, shape_mm=(84.0, 42.0, 40.0))
    # a second nodule-like blob far away whose probability stays under the threshold: no candidate
    g = np.indices(prob.shape).astype(float) * np.asarray(SPACING)[:, None, None, None]
    far = ((g - np.array([63.0, 21.0, 20.0])[:, None, None, None]) ** 2).sum(0) <= 36.0
    image[far] = 20.0
    prob[far] = 0.45
    pad_mm = 6.0
    before = prob >= 0.5
    after = refine(prob, image, SPACING)
    changed = np.argwhere(after != before)
    assert len(changed) > 0 and not after[far].any()
    (box,) = candidate_boxes(before, SPACING, pad_mm)
    lo = np.array([s.start for s in box])
    hi = np.array([s.stop for s in box])
    assert (changed >= lo).all() and (changed < hi).all()
    # the box's margin is pad_mm in world units on every axis, not a fixed voxel count
    core = np.argwhere(before)
    margin_mm = (core.min(0) - lo) * np.asarray(SPACING)
    assert np.all(margin_mm >= pad_mm) and np.all(margin_mm < pad_mm + np.asarray(SPACING))


def test_guard_refuses_a_collapse():
    # the network marks only the core of the nodule (0.5 level at 4.5 mm of 6 mm): a strong
    # bilateral vote erases the whole candidate; the guard keeps the threshold mask instead
    image, prob, truth = scene(SPACING, prob_radius=4.5)
    before = prob >= 0.5
    strong = CRFSettings(bilateral_weight=6.0, min_kept_fraction=0.0, max_growth=float("inf"))
    collapsed = refine(prob, image, SPACING, settings=strong)
    assert collapsed.sum() < 0.4 * before.sum()
    guarded = refine(prob, image, SPACING, settings=dataclasses.replace(strong, min_kept_fraction=0.5))
    assert np.array_equal(guarded, before)


def test_threshold_other_than_half_is_the_crf_decision_level():
    # with no pairwise terms the CRF returns the unary, so the refined mask is the threshold mask
    image, prob, _ = scene(SPACING, prob_radius=7.0)
    off = CRFSettings(bilateral_weight=0.0)
    for t in (0.3, 0.5, 0.7):
        assert np.array_equal(refine(prob, image, SPACING, threshold=t, settings=off), prob >= t)


def test_auto_backend_falls_back_to_torch_without_pydensecrf(monkeypatch):
    """A machine without the optional pydensecrf2 build still refines (default backend 'auto')."""
    import builtins

    from medseg.postprocess.crf import resolve_backend

    assert resolve_backend("auto") == "pydensecrf"  # installed in the dev environment
    real_import = builtins.__import__

    def no_pydensecrf(name, *args, **kwargs):
        if name.startswith("pydensecrf"):
            raise ImportError("not installed")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pydensecrf)
    assert resolve_backend("auto") == "torch"
    assert resolve_backend("pydensecrf") == "pydensecrf"


def test_candidates_with_a_box_over_max_box_mm_are_left_as_thresholded():
    """A long vessel-like candidate (over max_box_mm) is not refined; the nodule beside it still is."""
    image, prob, truth = scene(SPACING, shape_mm=(84.0, 42.0, 40.0), prob_radius=7.5)
    g = np.indices(prob.shape).astype(float) * np.asarray(SPACING)[:, None, None, None]
    tube = ((g[1] - 36.0) ** 2 + (g[2] - 20.0) ** 2 <= 4.0) & (g[0] >= 2.0) & (g[0] <= 80.0)
    image[tube], prob[tube] = 30.0, 0.55  # dilated: a CRF would trim it
    before = prob >= 0.5
    assert len(candidate_boxes(before, SPACING, 6.0)) == 2
    assert len(candidate_boxes(before, SPACING, 6.0, max_box_mm=60.0)) == 1
    after = refine(prob, image, SPACING, settings=CRFSettings(max_box_mm=60.0))
    np.testing.assert_array_equal(after[tube], before[tube])
    assert dice(after & ~tube, truth) > dice(before & ~tube, truth) + 0.05  # the nodule still moved to its edge
