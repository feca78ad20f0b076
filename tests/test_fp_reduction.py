"""Second-stage false-positive reduction: the candidate classifier, its fit and cut, ``medseg train-fp``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.cli import main as cli_main
from medseg.models import build_network, load_checkpoint_dict, save_checkpoint
from medseg.plan import NetworkPlan, Plan
from medseg.postprocess import CandidateClassifier, PostprocessSettings, postprocess
from medseg.postprocess.candidates import DEFAULT_FEATURES, FEATURES, confidence
from medseg.training.fp_reduction import ScanCandidates, fit_fp_reduction, scan_candidates


def candidate(nodule: bool, rng: np.random.Generator) -> dict:
    """Feature dict of a synthetic candidate: nodules round and confident, FPs elongated."""
    return {
        "mean_probability": rng.uniform(0.85, 0.95) if nodule else rng.uniform(0.6, 0.92),
        "max_probability": rng.uniform(0.9, 1.0),
        "equivalent_diameter_mm": rng.uniform(5, 20) if nodule else rng.uniform(3, 12),
        "elongation": rng.uniform(1.0, 1.4) if nodule else rng.uniform(1.6, 4.0),
        "flatness": rng.uniform(1.0, 1.5),
        "mean_hu": rng.uniform(-300, 50),
        "std_hu": rng.uniform(20, 150),
        "shell_dense": rng.uniform(0.0, 0.3),
        "lung_contact": rng.uniform(0.3, 1.0),
        "prob_blobness": rng.uniform(0.2, 0.7),
        "hu_blobness": rng.uniform(0.2, 0.7),
        "coarse_max_probability": rng.uniform(0.5, 1.0),  # says nothing here (see the coarse-agreement test)
    }


def synthetic_scans(n_scans: int = 6, seed: int = 0) -> list[ScanCandidates]:
    rng = np.random.default_rng(seed)
    scans = []
    for s in range(n_scans):
        cands = [{**candidate(True, rng), "hits": [g]} for g in (1, 2, 3)]
        cands += [{**candidate(False, rng), "hits": []} for _ in range(20)]
        scans.append(ScanCandidates(f"s{s}", cands, nodules=[1, 2, 3, 4]))  # nodule 4 is never found
    return scans


def test_classifier_learns_the_separating_feature_and_round_trips():
    scans = synthetic_scans()
    names = list(DEFAULT_FEATURES)
    x = np.array([[FEATURES[n](c) for n in names] for s in scans for c in s.candidates])
    y = np.array([bool(c["hits"]) for s in scans for c in s.candidates], float)
    clf = CandidateClassifier.fit(x, y, l2=1.0)  # weakly regularised: the separating direction wins
    p = clf.decision(x)
    assert p[y == 1].min() > p[y == 0].max()  # elongation separates these perfectly
    assert clf.coef[names.index("log_elongation")] < 0
    again = CandidateClassifier.from_dict(clf.to_dict())
    assert again.score(scans[0].candidates[0]) == pytest.approx(float(p[0]))
    assert clf.score({"mean_probability": 0.9}) is None  # missing features: no score ...
    assert confidence({"mean_probability": 0.9}, clf) == 0.9  # ... so the mean probability stands in
    with pytest.raises(ValueError, match="unknown candidate features"):
        CandidateClassifier(features=["nope"], mean=[0], scale=[1], coef=[0])
    with pytest.raises(ValueError, match="both"):
        CandidateClassifier.fit(x, np.zeros(len(x)))


def test_cut_is_chosen_out_of_fold_for_the_target_fp_rate():
    res = fit_fp_reduction(synthetic_scans(), target_fp_per_scan=1.0, folds=3)
    r = res.report
    assert r["scans"] == 6 and r["nodules"] == 24 and r["nodules_with_a_candidate"] == 18
    oof = r["out_of_fold"]
    assert oof["fp_per_scan"] <= 1.0
    assert oof["sensitivity"] == pytest.approx(0.75)  # every found nodule kept; the unfound 4th caps it
    assert 0.0 < res.min_confidence < 1.0
    # the mean probability alone overlaps between classes: the classifier ranks better
    assert oof["cpm"] > oof["cpm_mean_probability"]
    with pytest.raises(ValueError, match="two scans"):
        fit_fp_reduction(synthetic_scans(1))


def test_coarse_agreement_scales_the_score_and_its_cut_is_chosen_on_the_scaled_scores():
    """Where the fine features cannot tell nodules from false positives but the coarse pass can (real
    lung), multiplying by the coarse peak probability must rank better out of fold, and the cut
    must be chosen on those products (a cut chosen on the plain regression would not fit them)."""
    rng = np.random.default_rng(3)
    scans = synthetic_scans(8, seed=3)
    for s in scans:
        for c in s.candidates:
            c.update(candidate(True, rng))  # nodules and false positives alike in every fine feature
            c["coarse_max_probability"] = rng.uniform(0.8, 1.0) if c["hits"] else rng.uniform(0.0, 0.05)
    plain = fit_fp_reduction(scans, 1.0, folds=4, coarse_agreement=0.0)
    agree = fit_fp_reduction(scans, 1.0, folds=4, coarse_agreement=0.5)
    assert agree.report["out_of_fold"]["cpm"] > plain.report["out_of_fold"]["cpm"] + 0.3
    assert agree.report["out_of_fold"]["sensitivity"] == pytest.approx(0.75)  # every found nodule
    clf = agree.classifier
    assert clf.coarse_agreement == 0.5 and clf.inputs == [*clf.features, "coarse_max_probability"]
    c = scans[0].candidates[0]
    lr = CandidateClassifier(**{**clf.to_dict(), "coarse_agreement": 0.0}).score(c)
    assert clf.score(c) == pytest.approx(lr * c["coarse_max_probability"] ** 0.5)
    scores = [clf.score(c) for s in scans for c in s.candidates]
    hits = [bool(c["hits"]) for s in scans for c in s.candidates]
    kept = [h for sc, h in zip(scores, hits) if sc >= agree.min_confidence]
    assert sum(kept) == sum(hits) and len(kept) - sum(kept) <= len(scans), "the cut lies between the classes"
    assert CandidateClassifier.from_dict(clf.to_dict()) == clf
    old = {k: v for k, v in plain.classifier.to_dict().items() if k != "coarse_agreement"}
    assert CandidateClassifier.from_dict(old).coarse_agreement == 0.0, "checkpoints from before load unchanged"
    assert clf.score({k: v for k, v in c.items() if k != "coarse_max_probability"}) is None


def test_scan_candidates_records_which_true_nodules_each_component_hits():
    labels = np.zeros((20, 20, 10), np.uint16)
    truth = np.zeros_like(labels)
    labels[2:6, 2:6, 2:5], truth[3:7, 3:7, 2:5] = 1, 7  # overlaps nodule 7
    labels[12:18, 12:14, 2:4] = 2  # touches nothing
    prob = np.where(labels > 0, 0.8, 0.0).astype(np.float32)
    image = np.full(labels.shape, -800.0, np.float32)
    lungs = np.ones(labels.shape, np.uint8)
    feats = scan_candidates(labels, truth, (1.0, 1.0, 2.0), prob, image, lungs)
    assert [f["hits"] for f in feats] == [[7], []]
    assert feats[0]["mean_probability"] == pytest.approx(0.8) and feats[0]["lung_contact"] == 1.0


def test_postprocess_confidence_is_the_classifier_score():
    rng = np.random.default_rng(1)
    prob = np.zeros((40, 40, 20), np.float32)
    prob[5:11, 5:11, 5:11] = 0.9  # a round blob
    prob[20:22, 5:35, 10:12] = 0.9  # a rod of the same probability
    image = np.where(prob > 0, 30.0, -850.0).astype(np.float32)
    lungs = np.ones(prob.shape, bool)
    names = list(DEFAULT_FEATURES)
    x = np.array([[FEATURES[n](candidate(n_, rng)) for n in names] for n_ in [True] * 30 + [False] * 30])
    clf = CandidateClassifier.fit(x, np.array([1.0] * 30 + [0.0] * 30))
    s = PostprocessSettings(crf=False, candidate_classifier=clf, min_confidence=0.5)
    labels, feats = postprocess(prob, image, (1.0, 1.0, 1.0), lungs, s)
    assert len(feats) == 1 and labels[8, 8, 8] == 1 and labels[21, 20, 10] == 0
    assert feats[0]["confidence"] > 0.5 and feats[0]["confidence"] != pytest.approx(feats[0]["mean_probability"])


class RimOracle(torch.nn.Module):
    """Nodule logit rising above -300 HU: nodules and vessels alike, so there are FPs to learn."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = 8.0 * (x - 0.5)
        return torch.cat([torch.zeros_like(d), d], dim=1)


def test_cli_train_fp_writes_a_checkpoint_that_infer_applies(tmp_path, monkeypatch):
    from medseg.inference import predictor as predictor_mod
    from medseg.inference.pipeline import InferenceSettings, Segmenter

    torch.manual_seed(0)
    plan = Plan(spacing=(2.0, 2.0, 2.5), patch_size=(32, 32, 16),
                network=NetworkPlan(filters=[8, 16, 32], kernel_size=[[3, 3, 3]] * 3,
                                    strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], deep_supr_num=1))
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_network(plan.network), plan)
    original = predictor_mod.Predictor.from_checkpoint.__func__

    def with_oracle(cls, path, device="auto", **kw):
        p = original(cls, path, device, **kw)
        p.model = RimOracle()
        return p

    monkeypatch.setattr(predictor_mod.Predictor, "from_checkpoint", classmethod(with_oracle))
    out = tmp_path / "fp.pt"
    args = ["train-fp", "--model", str(ckpt), "-o", str(out), "--phantoms", "3", "--seed", "50",
            "--shape", "96", "96", "40", "--spacing", "2.0", "2.0", "2.5", "--min-mm", "4", "--device", "cpu",
            "--work-dir", str(tmp_path / "work"), "--overlap", "0.25", "--quiet"]
    assert cli_main(args) == 0
    payload = load_checkpoint_dict(out)
    inf = payload["plan"]["inference"]
    assert inf["overlap"] == 0.25 and inf["window"] is None  # fitted at 0.25: the model now runs so
    assert inf["candidate_classifier"]["features"] == list(DEFAULT_FEATURES) and 0 < inf["min_confidence"] < 1
    assert payload["fp_reduction"]["candidates"] > payload["fp_reduction"]["true_candidates"] > 0
    assert torch.equal(payload["state_dict"][next(iter(payload["state_dict"]))],
                       load_checkpoint_dict(ckpt)["state_dict"][next(iter(payload["state_dict"]))])
    # resumable: a second run reuses the per-scan candidates and gives the same fit
    assert cli_main([*args[:4], str(tmp_path / "again.pt"), *args[5:]]) == 0
    assert load_checkpoint_dict(tmp_path / "again.pt")["plan"]["inference"] == inf
    # infer with the new checkpoint keeps fewer components than with the cut off
    scan = tmp_path / "work" / "phantoms" / "phantom50.nii.gz"
    cut = Segmenter(InferenceSettings(model=str(out), device="cpu", quiet=True, preview=False)).run(scan, tmp_path / "a")
    off = Segmenter(InferenceSettings(model=str(out), device="cpu", quiet=True, preview=False,
                                      min_confidence=0.0)).run(scan, tmp_path / "b")
    assert cut.n_nodules < off.n_nodules
    assert all(n["confidence"] >= inf["min_confidence"] for n in cut.nodules)
    assert cli_main(["train-fp", "-o", str(tmp_path / "x.pt")]) == 2  # no scans given


class _CountingSegmenter:
    """Stands in for ``Segmenter``: one fixed component on the truth, and a count of the runs."""

    def __init__(self) -> None:
        self.runs = 0

    def segment(self, image, keep_probabilities=False):
        from types import SimpleNamespace

        self.runs += 1
        labels = np.zeros(image.shape, np.int32)
        labels[4:9, 4:9, 4:9] = 1
        prob = labels.astype(np.float32) * 0.9
        return SimpleNamespace(searched=True, labels=labels, lungs=None, probability_full=lambda: prob,
                               coarse=None)


def test_cached_candidates_are_reused_only_for_the_same_weights_and_settings(tmp_path):
    import nibabel as nib

    from medseg.training.fp_reduction import collect_candidates

    truth = np.zeros((16, 16, 16), np.uint8)
    truth[5:9, 5:9, 5:9] = 1
    nib.save(nib.Nifti1Image(np.full(truth.shape, -800, np.int16), np.eye(4)), str(tmp_path / "s.nii.gz"))
    nib.save(nib.Nifti1Image(truth, np.eye(4)), str(tmp_path / "s_nodules.nii.gz"))
    scans = [("s", tmp_path / "s.nii.gz", tmp_path / "s_nodules.nii.gz")]
    seg = _CountingSegmenter()
    key = {"weights": "abc", "window": [48, 48, 16], "overlap": 0.5}
    first = collect_candidates(seg, scans, tmp_path / "work", min_mm=1.0, key=key)
    assert seg.runs == 1 and first[0].candidates[0]["hits"] == [1]
    collect_candidates(seg, scans, tmp_path / "work", min_mm=1.0, key=dict(key))
    assert seg.runs == 1  # resumed from the cache
    collect_candidates(seg, scans, tmp_path / "work", min_mm=1.0, key={**key, "overlap": 0.25})
    assert seg.runs == 2  # other settings: computed again, not fitted to stale candidates
    collect_candidates(seg, scans, tmp_path / "work", min_mm=1.0, key={**key, "weights": "def"})
    assert seg.runs == 3
