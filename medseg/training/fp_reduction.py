"""Fit the second-stage candidate classifier of a trained model (``medseg train-fp``).

Whole scans with nodule masks (phantoms generated on the fly, or folders of ``X.nii.gz`` with
``X_nodules.nii.gz``) go through the full ``medseg infer`` path with no confidence cut; every
kept component becomes a candidate with its features and whether it touches a true nodule.
A :class:`~medseg.postprocess.CandidateClassifier` is fitted to them, and the confidence cut for
the target false positives per scan is chosen on **out-of-fold** scores (scans split into
folds, each scored by a classifier that did not see it), so the cut is not flattered by the
fit. The classifier and the cut are written into a copy of the checkpoint's plan: they belong
to those weights (their probabilities' calibration), not to the code.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import write_json_atomic
from medseg.postprocess.candidates import (
    COARSE_AGREEMENT,
    DEFAULT_FEATURES,
    CandidateClassifier,
    classifier_inputs,
    feature_vector,
)
from medseg.postprocess.components import ContextProbability, component_features

log = logging.getLogger("medseg.training")


@dataclass
class ScanCandidates:
    """One scan's candidates: feature dicts with ``hits`` (ids of the true nodules they touch)."""

    name: str
    candidates: list[dict[str, Any]]
    nodules: list[int]  # ids of the true nodules that count (at least ``min_mm``)


def scan_candidates(
    labels: np.ndarray,
    truth: np.ndarray,
    spacing: tuple[float, float, float],
    probability: np.ndarray,
    image: np.ndarray,
    lung_mask: np.ndarray,
    context: ContextProbability | None = None,
) -> list[dict[str, Any]]:
    """Features of each predicted component (instance ``labels`` 1..N, as ``medseg infer`` writes
    them) with ``hits``: the ids of the ``truth`` instances it overlaps. ``context``: the coarse
    pass's probability over input-grid boxes, for the coarse_* features."""
    feats = component_features(labels, spacing, probability, image, lung_mask, context=context)
    for f in feats:
        (i0, i1), (j0, j1), (k0, k1) = f["bbox"]
        box = (slice(i0, i1), slice(j0, j1), slice(k0, k1))
        inside = labels[box] == f["label"]
        ids = np.unique(truth[box][inside])
        f["hits"] = [int(i) for i in ids if i > 0]
    return feats


def _matrix(scans: list[ScanCandidates], names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    rows, labels, groups, hits = [], [], [], []
    for s_idx, scan in enumerate(scans):
        for c in scan.candidates:
            x = feature_vector(c, names)
            if x is None:
                raise ValueError(f"{scan.name}: candidate {c.get('label')} lacks a feature of {names}")
            rows.append(x)
            labels.append(1.0 if c["hits"] else 0.0)
            groups.append(s_idx)
            hits.append([(s_idx, g) for g in c["hits"] if g in scan.nodules])
    return np.array(rows).reshape(-1, len(names)), np.array(labels), np.array(groups), hits


@dataclass
class FPReductionResult:
    """The fitted classifier, its cut and the out-of-fold figures that chose the cut."""

    classifier: CandidateClassifier
    min_confidence: float
    report: dict[str, Any] = field(default_factory=dict)


def fit_fp_reduction(
    scans: list[ScanCandidates],
    target_fp_per_scan: float = 1.0,
    folds: int = 5,
    l2: float = 10.0,
    features: list[str] | None = None,
    coarse_agreement: float = COARSE_AGREEMENT,
) -> FPReductionResult:
    """Fit the classifier on all scans; choose the cut on out-of-fold scores for the target rate.
    ``coarse_agreement``: see :class:`~medseg.postprocess.candidates.CandidateClassifier`."""
    from medseg.evaluation.froc import froc

    names = list(features or DEFAULT_FEATURES)
    x, y, groups, hits = _matrix(scans, classifier_inputs(names, coarse_agreement))
    fitted = x[:, : len(names)]  # the regression's columns; a coarse one only scales its output
    if len(scans) < 2:
        raise ValueError("need at least two scans (the cut is chosen on scans the classifier did not see)")
    folds = max(2, min(folds, len(scans)))
    oof = np.zeros(len(y))
    for k in range(folds):
        test = groups % folds == k
        if not test.any():
            continue
        clf = CandidateClassifier.fit(fitted[~test], y[~test], l2=l2, features=names, coarse_agreement=coarse_agreement)
        oof[test] = clf.decision(x[test])
    n_lesions = sum(len(s.nodules) for s in scans)
    # a candidate touching only a nodule that does not count is neither a detection nor an FP
    keep = [bool(h) or not y[i] for i, h in enumerate(hits)]
    scores = [float(s) for s, k in zip(oof, keep) if k]
    kept_hits = [h for h, k in zip(hits, keep) if k]
    curve = froc(scores, kept_hits, n_lesions, len(scans))
    by_mean = froc([float(v) for v, k in zip(x[:, names.index("mean_probability")], keep) if k]
                   if "mean_probability" in names else scores, kept_hits, n_lesions, len(scans))
    # the lowest cut within the FP budget: sensitivity only grows as the cut falls, so this spends
    # the budget on sensitivity (on the fitting scans the curve is often flat near the target; the
    # higher cut would leave no margin for nodules that score a little lower on new scans)
    cut, at = 1.0, {"fp_per_scan": 0.0, "sensitivity": 0.0}
    c = curve["curve"]
    for thr, fps, sens in zip(c["threshold"], c["fp_per_scan"], c["sensitivity"]):
        if thr is not None and fps <= target_fp_per_scan + 1e-12 and thr < cut:
            cut, at = float(thr), {"fp_per_scan": fps, "sensitivity": sens}
    final = CandidateClassifier.fit(fitted, y, l2=l2, features=names, coarse_agreement=coarse_agreement)
    found_any = len({h for hs in hits for h in hs})
    report = {
        "scans": len(scans),
        "nodules": n_lesions,
        "nodules_with_a_candidate": found_any,
        "candidates": len(y),
        "true_candidates": int(y.sum()),
        "target_fp_per_scan": target_fp_per_scan,
        "min_confidence": round(cut, 6),
        "out_of_fold": {
            "sensitivity": round(at["sensitivity"], 4),
            "fp_per_scan": round(at["fp_per_scan"], 3),
            "cpm": None if curve["cpm"] is None else round(curve["cpm"], 4),
            "cpm_mean_probability": None if by_mean["cpm"] is None else round(by_mean["cpm"], 4),
            "sensitivity_at_fp": {k: round(v, 4) for k, v in curve["sensitivity_at_fp"].items()},
        },
        "folds": folds,
        "l2": l2,
        "coarse_agreement": coarse_agreement,
    }
    return FPReductionResult(final, cut, report)


# ------------------------------------------------------------------ scans through the pipeline
def _scan_dirs(data: Iterable[Path]) -> Iterator[tuple[str, Path, Path]]:
    for folder in data:
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(folder, "is not a folder of scans with <name>_nodules masks")
        pairs = 0
        for img in sorted(folder.glob("*.nii*")):
            stem = img.name.split(".nii")[0]
            if stem.endswith(("_nodules", "_lungs", "_vessels", "_airways")):
                continue
            mask = folder / img.name.replace(stem, f"{stem}_nodules", 1)
            if mask.is_file():
                pairs += 1
                yield stem, img, mask
        if not pairs:
            raise InputError(folder, "holds no <name>.nii.gz with a <name>_nodules.nii.gz beside it")


def collect_candidates(
    segmenter: Any,
    scans: Iterable[tuple[str, Path, Path]],
    work_dir: Path,
    min_mm: float = 5.0,
    sizes: dict[str, dict[int, float]] | None = None,
    key: dict[str, Any] | None = None,
) -> list[ScanCandidates]:
    """Run ``segmenter.segment`` (confidence cut off) on each (name, image, truth) and gather candidates.

    Each scan's candidates are kept in ``work_dir/<name>/candidates.json`` with ``key`` (what made
    them: weights, window, overlap), so an interrupted run resumes, and a run with other weights or
    settings in the same folder computes them again instead of fitting to stale ones. ``sizes``
    gives true nodule diameters per scan (phantoms); otherwise a nodule's equivalent diameter from
    its mask decides whether it counts (>= ``min_mm``).
    """
    from medseg.io import read_volume
    from medseg.postprocess.components import equivalent_diameter_mm

    out = []
    for name, image_path, truth_path in scans:
        d = Path(work_dir) / name
        done = d / "candidates.json"
        if done.is_file():
            data = json.loads(done.read_text())
            if data.get("key") == key:
                out.append(ScanCandidates(name, data["candidates"], data["nodules"]))
                continue
            log.info("%s: cached candidates were made by other weights or settings; recomputing", name)
        d.mkdir(parents=True, exist_ok=True)
        image, truth = read_volume(image_path), read_volume(truth_path)
        seg = segmenter.segment(image, keep_probabilities=True)
        if not seg.searched:
            log.warning("%s: no plausible lung, no candidates", name)
            continue
        labels, prob = seg.labels, seg.probability_full()
        lungs = seg.lungs if seg.lungs is not None else np.ones(image.shape, np.uint8)
        t = np.asarray(truth.array)
        if t.dtype.kind == "f":
            t = np.rint(t).astype(np.int64)
        if t.max() == 1:  # a binary mask: its components are the nodules
            import cc3d

            t = cc3d.connected_components(t > 0, connectivity=26)
        context = None if seg.coarse is None else seg.coarse.on_input
        cands = scan_candidates(labels, t, image.spacing, prob, np.asarray(image.array), lungs, context)
        if sizes and name in sizes:
            present = set(np.unique(t).tolist())
            nodules = [i for i, dmm in sizes[name].items() if dmm >= min_mm and i in present]
        else:
            ids, counts = np.unique(t[t > 0], return_counts=True)
            vox = float(np.prod(image.spacing))
            nodules = [int(i) for i, c in zip(ids, counts) if equivalent_diameter_mm(c * vox) >= min_mm]
        for c in cands:  # JSON-able
            c.pop("bbox", None)
        write_json_atomic(done, {"candidates": cands, "nodules": nodules, "key": key})
        out.append(ScanCandidates(name, cands, nodules))
        log.info("%s: %d candidates, %d on true nodules", name, len(cands), sum(bool(c["hits"]) for c in cands))
    return out


def phantom_scans(count: int, seed: int, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                  folder: Path) -> tuple[list[tuple[str, Path, Path]], dict[str, dict[int, float]]]:
    """Generate (or reuse) ``count`` phantoms from ``seed`` in ``folder``: scan list and nodule sizes."""
    from medseg.data.phantom import make_phantom
    from medseg.io import write_volume

    scans, sizes = [], {}
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(seed, seed + count):
        name = f"phantom{s}"
        img, mask, info = folder / f"{name}.nii.gz", folder / f"{name}_nodules.nii.gz", folder / f"{name}.json"
        if not info.is_file():
            ph = make_phantom(seed=s, shape=shape, spacing=spacing)
            write_volume(ph.ct, img)
            write_volume(ph.nodules, mask)
            # written last and atomically: its presence marks a complete phantom on resume
            write_json_atomic(info, {str(n["id"]): float(n["diameter_mm"]) for n in ph.info["nodules"]})
        sizes[name] = {int(k): v for k, v in json.loads(info.read_text()).items()}
        scans.append((name, img, mask))
    return scans, sizes


def train_fp_reduction(
    model: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    data: list[str | os.PathLike[str]] | None = None,
    phantoms: int = 0,
    seed: int = 3000,
    shape: tuple[int, int, int] = (224, 224, 112),
    spacing: tuple[float, float, float] = (1.4, 1.4, 2.5),
    target_fp_per_scan: float = 1.0,
    min_mm: float = 5.0,
    work_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    folds: int = 5,
    l2: float = 10.0,
    window: tuple[int, int, int] | None = None,
    overlap: float | None = None,
    coarse_agreement: float = COARSE_AGREEMENT,
) -> FPReductionResult:
    """Collect candidates of ``model`` on scans, fit the classifier, write ``out`` (a checkpoint
    whose plan carries ``candidate_classifier`` and ``min_confidence``). Returns the fit.
    ``coarse_agreement``: see :class:`~medseg.postprocess.candidates.CandidateClassifier`.

    ``window`` and ``overlap`` (None: the model plan's) set how the network is run; they go into
    ``out``'s plan with the classifier, which is fitted to the probabilities of that setting."""
    import torch

    from medseg.inference.pipeline import InferenceSettings, Segmenter
    from medseg.io.atomic import atomic_path
    from medseg.models import load_checkpoint_dict
    from medseg.models.checkpoint import BUNDLED_MODEL, weights_digest

    if not data and phantoms < 2:
        raise ValueError("give scan folders (data) or at least two phantoms")
    payload = load_checkpoint_dict(model or BUNDLED_MODEL)
    with tempfile.TemporaryDirectory(prefix="medseg-fp-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        scans: list[tuple[str, Path, Path]] = list(_scan_dirs([Path(p) for p in data or []]))
        sizes: dict[str, dict[int, float]] = {}
        if phantoms:
            ph_scans, sizes = phantom_scans(phantoms, seed, shape, spacing, work / "phantoms")
            scans += ph_scans
        # the fine pass's candidates only: masses come from the coarse pass, which no classifier scores;
        # the coarse pass still runs, for the candidates' coarse_* features
        seg = Segmenter(InferenceSettings(model=None if model is None else str(model), device=device, quiet=True,
                                          preview=False, dicom_seg=False, min_confidence=0.0, crf=None,
                                          masses=False, coarse_features=True, window=window, overlap=overlap))
        seg.plan.inference.candidate_classifier = None  # candidates of the network, not of an older fit
        key = {"weights": weights_digest(payload["state_dict"]), "window": list(seg.predictor.window),
               "overlap": float(seg.predictor.overlap), "precision": str(seg.predictor.precision),
               "coarse_scale": float(seg.plan.inference.mass_scale)}
        cands = collect_candidates(seg, scans, work / "candidates", min_mm=min_mm, sizes=sizes, key=key)
    result = fit_fp_reduction(cands, target_fp_per_scan, folds=folds, l2=l2, coarse_agreement=coarse_agreement)
    payload["plan"].setdefault("inference", {})
    payload["plan"]["inference"]["candidate_classifier"] = result.classifier.to_dict()
    payload["plan"]["inference"]["min_confidence"] = result.min_confidence
    if overlap is not None:
        payload["plan"]["inference"]["overlap"] = float(overlap)
    if window is not None:
        payload["plan"]["inference"]["window"] = [int(v) for v in window]
    payload["fp_reduction"] = {**result.report, "phantoms": {"count": phantoms, "seed": seed, "shape": list(shape),
                                                             "spacing": list(spacing)} if phantoms else None,
                               "data": [str(p) for p in data or []]}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp_path:
        torch.save(payload, tmp_path)
    return result
