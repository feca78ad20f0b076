"""The coarse pass as candidate context: its probability read back on input-grid boxes, and the
coarse_* features every fine candidate gets from it (what the network says with twice the context)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from model_factory import HUOracle, tiny_plan

from medseg.inference.lung_mask import compute_lung_mask
from medseg.inference.masses import coarse_pass
from medseg.inference.pipeline import InferenceSettings, Segmenter
from medseg.inference.predictor import Predictor
from medseg.models import build_network, save_checkpoint
from medseg.postprocess.candidates import COARSE_FEATURES, CandidateClassifier


@pytest.fixture(scope="module")
def chest():
    """A small LPS phantom with air around the body (the lung box does not start at voxel 0), and
    the same scan stored RAS (i and j flipped): the plan grid is reached through a flip there."""
    from medseg.data.phantom import make_phantom

    ph = make_phantom(seed=5, shape=(96, 96, 40), spacing=(1.5, 1.5, 2.5), noise_hu=10.0, body_fraction=0.75,
                      nodules=[{"kind": "solid", "location": "isolated", "diameter_mm": 10.0},
                               {"kind": "solid", "location": "isolated", "diameter_mm": 7.0}])
    flip = np.diag([-1.0, -1.0, 1.0])
    corner = ph.ct.index_to_world(np.array([ph.ct.shape[0] - 1, ph.ct.shape[1] - 1, 0]))
    ras = replace(ph.ct, array=np.ascontiguousarray(ph.ct.array[::-1, ::-1]), origin=tuple(corner),
                  direction=ph.ct.direction @ flip)
    return {"LPS": ph.ct, "RAS": ras}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    plan = replace(tiny_plan((16, 16, 16)), spacing=(1.75, 1.75, 2.0))  # not the scan's grid: resampling both ways
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", build_network(plan.network), plan)


@pytest.mark.parametrize("orient", ["LPS", "RAS"])
def test_coarse_probability_on_any_input_box_equals_the_whole_resampling(tiny_ckpt, chest, orient) -> None:
    """GridPrediction.on_input reads a box alone; it must give what resampling the whole coarse grid
    back to the input gives on that box (and zeros outside it), whatever the orientation."""
    torch.set_num_threads(1)
    vol = chest[orient]
    predictor = Predictor.from_checkpoint(str(tiny_ckpt), "cpu", precision="fp32")
    grid = coarse_pass(predictor, vol, compute_lung_mask(vol), 2.0)
    assert grid is not None and grid.probability.std() > 0
    whole = np.zeros(vol.shape, np.float32)
    whole[grid.geo.dst_box] = grid.geo.to_input(grid.probability)
    inside = grid.geo.dst_box
    rng = np.random.default_rng(1)
    boxes = [inside, tuple(slice(0, n) for n in vol.shape)]  # all of it; the whole scan, past its edges
    for _ in range(12):  # small boxes anywhere: inside, across the edge, outside
        lo = [int(rng.integers(0, n - 3)) for n in vol.shape]
        boxes.append(tuple(slice(a, min(a + int(rng.integers(1, 12)), n)) for a, n in zip(lo, vol.shape)))
    for box in boxes:
        np.testing.assert_allclose(grid.on_input(box), whole[box], atol=1e-5, err_msg=f"box {box}")
    assert np.abs(whole[inside]).max() > 0


def oracle(ckpt: Path, classifier: CandidateClassifier | None = None, **kw) -> Segmenter:
    seg = Segmenter(InferenceSettings(model=str(ckpt), device="cpu", quiet=True, preview=False, crf=False,
                                      min_confidence=0.0, masses=False, **kw))
    seg.predictor.model = HUOracle()
    if classifier is not None:
        seg.plan.inference.candidate_classifier = classifier.to_dict()
    return seg


def test_every_candidate_reads_the_coarse_pass_over_its_own_voxels(tiny_ckpt, chest) -> None:
    torch.set_num_threads(1)
    vol = chest["RAS"]
    seg = oracle(tiny_ckpt, coarse_features=True).segment(vol, keep_probabilities=True)
    assert seg.coarse is not None and "coarse_pass_s" in seg.timings
    whole = np.zeros(vol.shape, np.float32)
    whole[seg.coarse.geo.dst_box] = seg.coarse.geo.to_input(seg.coarse.probability)
    fine = [f for f in seg.features if f.get("kind") != "mass"]
    assert len(fine) >= 2
    for f in fine:
        voxels = whole[seg.labels == f["label"]]
        assert f["coarse_max_probability"] == pytest.approx(float(voxels.max()), abs=1e-5)
        assert f["coarse_mean_probability"] == pytest.approx(float(voxels.mean()), abs=1e-5)
    assert max(f["coarse_max_probability"] for f in fine) > 0.5, "the oracle's dense structures, coarse too"


def test_the_coarse_pass_runs_when_the_classifier_reads_it_even_without_masses(tiny_ckpt, chest) -> None:
    """--no-masses skips the coarse pass only when nothing needs it: a classifier that reads the
    coarse features must get them (a missing feature would silently fall back to the mean probability)."""
    torch.set_num_threads(1)
    vol = chest["LPS"]
    plain = oracle(tiny_ckpt).segment(vol)
    assert "coarse_pass_s" not in plain.timings
    assert not any(k in f for f in plain.features for k in COARSE_FEATURES)
    names = ["mean_probability", "coarse_max_probability"]
    clf = CandidateClassifier(features=names, mean=[0.0, 0.0], scale=[1.0, 1.0], coef=[1.0, -3.0], intercept=0.5)
    scored = oracle(tiny_ckpt, classifier=clf).segment(vol)
    assert "coarse_pass_s" in scored.timings
    fine = [f for f in scored.features if f.get("kind") != "mass"]
    assert fine
    for f in fine:
        expected = clf.decision(np.array([[f["mean_probability"], f["coarse_max_probability"]]]))[0]
        assert f["confidence"] == pytest.approx(float(expected)), "scored with the coarse feature, not the fallback"
