"""Lesion-wise matching, FROC / CPM with hand-counted TP/FP, and ``medseg evaluate`` on folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.cli import main
from medseg.errors import InputError
from medseg.evaluation.api import evaluate
from medseg.evaluation.froc import froc, froc_curve
from medseg.evaluation.lesions import match_lesions
from medseg.io import Volume, write_volume

SPACING = (1.0, 1.0, 1.5)
SHAPE = (40, 40, 12)


def cube(arr, i, j, k, value, size=(3, 3, 3)):
    arr[i : i + size[0], j : j + size[1], k : k + size[2]] = value


def hand_counted_cases():
    """Two scans, four lesions; candidates (score: hit):
    scan 0: 0.95 -> L1, 0.7 -> L1 again (a second piece), 0.9 FP, 0.3 FP; L2 missed
    scan 1: 0.8 -> L3, 0.4 -> L4, 0.6 FP, 0.5 FP, 0.2 FP."""
    cases = []
    gt0, p0 = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.float32)
    cube(gt0, 5, 5, 2, 1, size=(7, 3, 3))  # L1, hit by two separate predictions
    cube(p0, 5, 5, 2, 0.95)
    cube(p0, 9, 5, 2, 0.7)
    cube(gt0, 25, 25, 6, 1)  # L2 missed
    cube(p0, 5, 25, 6, 0.9)
    cube(p0, 30, 5, 2, 0.3)
    cases.append((gt0, p0))
    gt1, p1 = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.float32)
    cube(gt1, 5, 5, 2, 1)
    cube(p1, 6, 6, 3, 0.8)  # L3, partial overlap
    cube(gt1, 20, 20, 2, 1)
    cube(p1, 20, 20, 2, 0.4)  # L4
    for (i, j), s in zip([(30, 30), (5, 30), (30, 15)], [0.6, 0.5, 0.2]):
        cube(p1, i, j, 6, s)
    cases.append((gt1, p1))
    return cases


def test_match_lesions_counts():
    gt, prob = hand_counted_cases()[0]
    m = match_lesions(prob > 0, gt, SPACING, probability=prob)
    assert (m["n_gt"], m["n_pred"], m["tp"], m["fn"], m["fp"]) == (2, 4, 1, 1, 2)
    assert m["sensitivity"] == 0.5
    assert sorted(c["score"] for c in m["candidates"]) == pytest.approx([0.3, 0.7, 0.9, 0.95])
    l1 = next(lz for lz in m["lesions"] if lz["detected"])
    assert l1["volume_mm3"] == pytest.approx(63 * 1.5)
    assert l1["dice"] == pytest.approx(2 * 54 / (63 + 54))  # both 27-voxel pieces lie inside L1


def test_candidate_score_peak_or_mean_probability():
    gt, prob = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.float32)
    cube(prob, 5, 5, 2, 0.6)
    prob[6, 6, 3] = 0.99  # one confident voxel in a lukewarm component: peak 0.99, mean ~0.614
    mean = (26 * 0.6 + 0.99) / 27
    by_peak = match_lesions(prob > 0, gt, SPACING, probability=prob)
    by_mean = match_lesions(prob > 0, gt, SPACING, probability=prob, score="mean")
    assert [c["score"] for c in by_peak["candidates"]] == pytest.approx([0.99])
    assert [c["score"] for c in by_mean["candidates"]] == pytest.approx([mean])
    with pytest.raises(ValueError, match="score"):
        match_lesions(prob > 0, gt, SPACING, probability=prob, score="max")


def test_froc_hand_counted():
    # scores and hits as listed in hand_counted_cases; lesions keyed (scan, id)
    scores = [0.95, 0.7, 0.9, 0.3, 0.8, 0.4, 0.6, 0.5, 0.2]
    hits = [[(0, 1)], [(0, 1)], [], [], [(1, 1)], [(1, 2)], [], [], []]
    thr, fps, sens = froc_curve(scores, hits, n_lesions=4, n_scans=2)
    assert fps.tolist() == [0, 0, 0.5, 0.5, 0.5, 1.0, 1.5, 1.5, 2.0, 2.5]
    assert sens.tolist() == [0, 0.25, 0.25, 0.5, 0.5, 0.5, 0.5, 0.75, 0.75, 0.75]
    r = froc(scores, hits, n_lesions=4, n_scans=2)
    step = [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 0.75]  # at 1/8 .. 8 FP/scan, off the step curve
    assert list(r["sensitivity_at_fp_step"].values()) == step
    assert r["cpm_step"] == pytest.approx(sum(step) / 7)
    # LUNA16 interpolates linearly between operating points: (0 FP, 0.25) .. (0.5 FP, 0.5) gives
    # 0.3125 at 1/8 and 0.375 at 1/4; from 1.5 FP on it is 0.75, flat past the last candidate
    interpolated = [0.3125, 0.375, 0.5, 0.5, 0.75, 0.75, 0.75]
    assert list(r["sensitivity_at_fp"].values()) == pytest.approx(interpolated)
    assert r["cpm"] == pytest.approx(sum(interpolated) / 7) and "LUNA16" in r["cpm_definition"]


def test_froc_ties_enter_together():
    # a TP and an FP with equal scores cannot be separated by any threshold
    _, fps, sens = froc_curve([0.5, 0.5], [[("a", 1)], []], n_lesions=1, n_scans=1)
    assert fps.tolist() == [0, 1] and sens.tolist() == [0, 1]


@pytest.fixture()
def folders(tmp_path):
    pred_dir, gt_dir, prob_dir = (tmp_path / n for n in ("pred", "gt", "prob"))
    for d in (pred_dir, gt_dir, prob_dir):
        d.mkdir()
    for n, (gt, prob) in enumerate(hand_counted_cases()):
        case = f"case{n}"
        ref = Volume(array=gt, spacing=SPACING)
        write_volume(ref, gt_dir / f"{case}.nii.gz")
        write_volume(ref.with_array((prob > 0).astype(np.uint8)), pred_dir / f"{case}_nodules.nii.gz")
        write_volume(ref.with_array(prob), prob_dir / f"{case}_probabilities.nii.gz")
    return pred_dir, gt_dir, prob_dir


def test_evaluate_folders_pool_lesions_and_froc(folders):
    pred_dir, gt_dir, prob_dir = folders
    r = evaluate(pred_dir, gt_dir, probabilities=prob_dir, quiet=True)
    assert r["n_cases"] == 2 and [c["case"] for c in r["cases"]] == ["case0", "case1"]
    assert r["lesion_sensitivity"] == 0.75
    assert r["fp_per_scan"] == 2.5
    assert r["cpm"] == pytest.approx((0.3125 + 0.375 + 0.5 + 0.5 + 0.75 * 3) / 7)  # LUNA16, interpolated
    assert r["froc"]["cpm_step"] == pytest.approx((0.25 + 0.25 + 0.5 + 0.5 + 0.75 * 3) / 7)
    assert r["dice"] == pytest.approx(np.mean([c["dice"] for c in r["cases"]]))


def test_cli_json_has_dice_and_hd95(folders, capsys):
    pred_dir, gt_dir, prob_dir = folders
    assert main(["evaluate", str(pred_dir / "case1_nodules.nii.gz"), str(gt_dir / "case1.nii.gz"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"dice", "hd95", "iou", "assd", "surface_dice_1mm", "lesion_sensitivity", "fp_per_scan"} <= set(out)
    assert "cpm" not in out  # no probabilities given
    assert main(["evaluate", str(pred_dir), str(gt_dir), "--prob", str(prob_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cpm"] > 0 and len(out["cases"]) == 2
    assert out["cpm_step"] > 0 and "LUNA16" in out["cpm_definition"]  # --json says which figure is which


def test_grid_mismatch_and_missing_case_are_input_errors(folders, tmp_path, capsys):
    pred_dir, gt_dir, _ = folders
    gt = gt_dir / "case0.nii.gz"
    other = tmp_path / "other.nii.gz"
    write_volume(Volume(array=np.zeros(SHAPE, np.uint8), spacing=(1.0, 1.0, 2.0)), other)
    with pytest.raises(InputError, match="differs from ground truth"):
        evaluate(other, gt)
    write_volume(Volume(array=np.zeros(SHAPE, np.uint8), spacing=SPACING), gt_dir / "case2.nii.gz")
    with pytest.raises(InputError, match="no prediction for 1 case"):
        evaluate(pred_dir, gt_dir)
    assert main(["evaluate", str(other), str(gt)]) == 2
    assert "differs from ground truth" in capsys.readouterr().err


def test_phantom_set_ground_truth_and_infer_named_predictions(tmp_path):
    # phantom set: <name>.nii.gz (CT) beside <name>_nodules.nii.gz; infer writes <name>_nodules too
    gt_dir, pred_dir = tmp_path / "set", tmp_path / "out"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt, prob = hand_counted_cases()[1]
    ref = Volume(array=gt, spacing=SPACING)
    write_volume(ref.with_array(np.full(SHAPE, -800, np.int16)), gt_dir / "ph0.nii.gz")
    write_volume(ref, gt_dir / "ph0_nodules.nii.gz")
    write_volume(ref.with_array((gt > 0).astype(np.uint8)), gt_dir / "ph0_lungs.nii.gz")
    write_volume(ref.with_array((prob > 0).astype(np.uint8)), pred_dir / "ph0_nodules.nii.gz")
    r = evaluate(pred_dir, gt_dir, quiet=True)
    assert r["n_cases"] == 1 and r["cases"][0]["case"] == "ph0"
    assert (r["n_gt_lesions"], r["n_detected"], r["n_false_positives"]) == (2, 2, 3)
