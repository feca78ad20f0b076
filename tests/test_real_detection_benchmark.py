"""benchmarks/real_detection.py scoring: lesion matching, the size floor, operating point, breakdowns."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "real_detection.py"
_spec = importlib.util.spec_from_file_location("real_detection", _PATH)
rd = importlib.util.module_from_spec(_spec)
sys.modules["real_detection"] = rd  # dataclasses look their module up while being built
_spec.loader.exec_module(rd)


def _nodule(i: int, conf: float) -> dict:
    return {"id": i, "confidence": conf, "mean_probability": conf, "centre_lps_mm": [0, 0, 0], "longest_diameter_mm": 8}


def test_match_gives_each_candidate_the_lesions_it_overlaps() -> None:
    truth = np.zeros((20, 20, 20), np.uint16)
    truth[2:6, 2:6, 2:6] = 1
    truth[10:14, 10:14, 10:14] = 2
    labels = np.zeros_like(truth)
    labels[3:5, 3:5, 3:5] = 1  # on lesion 1
    labels[15:18, 15:18, 15:18] = 2  # a false positive
    labels[9:15, 9:11, 9:11] = 3  # touches lesion 2
    cands = rd.match(labels, truth, [_nodule(1, 0.9), _nodule(2, 0.8), _nodule(3, 0.1)],
                     [{"label": 3, "kind": "mass"}], {1: "s/1", 2: "s/2"})
    assert [c.hits for c in cands] == [["s/1"], [], ["s/2"]]
    assert [c.mass for c in cands] == [False, False, True]


def _scan(name: str, lesions: list[tuple[str, float]], cands: list[tuple[float, list[str], bool]]) -> rd.ScanResult:
    les = [rd.Lesion(k, d, "solid", "parenchyma", [0, 0, 0]) for k, d in lesions]
    return rd.ScanResult(name, "hybrid", les, [rd.Candidate(c, h, m, [0, 0, 0], 8.0) for c, h, m in cands])


def test_score_operating_point_size_floor_and_breakdowns() -> None:
    scans = [
        _scan("a", [("a/1", 8.0), ("a/2", 12.0), ("a/3", 4.0)],
              [(0.9, ["a/1"], False), (0.3, ["a/2"], False), (0.8, [], False), (0.95, ["a/3"], False)]),
        _scan("b", [("b/1", 40.0)], [(0.2, ["b/1"], True), (0.1, [], False)]),
    ]
    r = rd.score(scans, min_mm=5.0, cut=0.5)
    assert r["n_lesions"] == 3, "the 4 mm lesion is below the floor"
    op = r["operating_point"]
    # at the cut: a/1 found, a/2 cut, b/1 is a mass (always reported) and found; one FP (0.8)
    assert op["found"] == 2 and op["sensitivity"] == pytest.approx(2 / 3, abs=1e-4) and op["fp_per_scan"] == 0.5
    # the candidate on the 4 mm lesion is neither a find nor a false positive
    assert r["all_candidates"]["fp_per_scan"] == 1.0 and r["all_candidates"]["sensitivity"] == 1.0
    assert r["by_size"]["5-10mm"] == {"found": 1, "n": 1, "sensitivity": 1.0}
    assert r["by_size"][">=30mm"]["found"] == 1 and r["by_size"]["10-20mm"]["found"] == 0
    assert 0 < r["cpm"] <= 1 and r["sensitivity_at_fp"]["8.0"] == 1.0


def test_size_bins() -> None:
    assert [rd.size_bin(d) for d in (2.0, 3.0, 7.0, 29.9, 30.0, 95.0)] == \
        ["<3mm", "3-5mm", "5-10mm", "20-30mm", ">=30mm", ">=30mm"]


def test_cache_key_follows_the_network_and_settings_not_the_fp_stage() -> None:
    import argparse

    import torch

    args = argparse.Namespace(precision=None, no_crf=False, no_masses=False, overlap=None, window=None, tta=False,
                              runtime="torch")
    weights = {"w": torch.ones(3), "b": torch.zeros(2)}
    base = {"state_dict": weights, "plan": {"inference": {"overlap": 0.5, "threshold": 0.5, "min_confidence": 0.6,
                                                          "candidate_classifier": {"coef": [1.0]}}}}
    refit = {"state_dict": weights, "plan": {"inference": {"overlap": 0.5, "threshold": 0.5, "min_confidence": 0.9,
                                                           "candidate_classifier": {"coef": [-2.0]}}}}
    key = rd.cache_key(args, base)
    assert rd.cache_key(args, refit) == key, "a refitted FP stage re-scores the same candidates"
    other = {**base, "state_dict": {"w": torch.ones(3) * 1.001, "b": torch.zeros(2)}}
    assert rd.cache_key(args, other) != key, "other weights make other candidates"
    moved = {**base, "plan": {"inference": {**base["plan"]["inference"], "threshold": 0.4}}}
    assert rd.cache_key(args, moved) != key, "the plan's threshold shapes the candidates"
    assert rd.cache_key(argparse.Namespace(**{**vars(args), "overlap": 0.25}), base) != key


def test_rescore_leaves_masses_and_featureless_candidates_alone() -> None:
    from medseg.postprocess.candidates import CandidateClassifier

    clf = CandidateClassifier(features=["mean_probability"], mean=[0.0], scale=[1.0], coef=[4.0], intercept=-2.0)
    scan = rd.ScanResult("s", "hybrid", [], [
        rd.Candidate(0.3, [], False, [0, 0, 0], 6.0, {"mean_probability": 0.75}),
        rd.Candidate(0.6, [], True, [0, 0, 0], 40.0, None),  # a mass: the coarse pass's probability
    ])
    assert rd.rescore([scan], clf) == 1
    assert scan.candidates[0].confidence == pytest.approx(1 / (1 + np.exp(-(4.0 * 0.75 - 2.0))))
    assert scan.candidates[1].confidence == 0.6
