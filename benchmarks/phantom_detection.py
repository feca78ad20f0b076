"""Whole-scan nodule detection on fresh chest phantoms: sensitivity and false positives per scan.

    python benchmarks/phantom_detection.py [--count 4] [--seed 1000] [--model CKPT] [--json]

Generates ``--count`` phantoms (seeds ``--seed``...; the training phantoms of the bundled model
used seeds 100-103 and 200-203, the committed sample seed 0, so the defaults are unseen scans),
runs the whole ``medseg infer`` path on each (lung mask, ROI sliding window, CRF, components)
and matches the nodule masks with the phantom's truth: a predicted component detects every true
nodule it overlaps. Prints per scan and in total: sensitivity for nodules >= ``--min-mm`` (5 mm
by default) and false-positive components per scan, at the model's confidence cut
(``min_confidence`` in its plan, or ``--min-confidence``: what ``medseg infer`` reports) and for
all candidates; and the FROC (sensitivity at 0.125-8 FP per scan) scored by each component's
confidence (the model's candidate classifier, else its mean probability), by its mean and by its
peak probability, with the best confidence cut for <= 1 FP/scan.
The pipeline runs with the cut off and the cut is applied to the candidates afterwards: it is a
per-component filter, so this equals running with it. One JSON line with ``--json``.

``--work-dir DIR`` keeps each scan's pipeline outputs under a key of the network weights, the
plan (less its candidate classifier and cut), the phantom geometry and the CRF switch, and reuses
them: the classifier and the cut change no mask, so a refitted false-positive stage of the same
weights (``medseg train-fp``) is re-scored in seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _cut_at(curve: dict, rate: float) -> dict | None:
    """The best-sensitivity FROC point with at most ``rate`` FP/scan: its score cut and figures."""
    best = None
    for thr, fps, sens in zip(curve["threshold"], curve["fp_per_scan"], curve["sensitivity"]):
        if thr is not None and fps <= rate + 1e-12 and (best is None or sens > best["sensitivity"]):
            best = {"score_cut": round(thr, 4), "fp_per_scan": fps, "sensitivity": round(sens, 4)}
    return best


def _at_cut(cands: list[dict], n_big: int, n_scans: int, cut: float) -> dict:
    """Sensitivity and FP/scan when components with confidence below ``cut`` are dropped."""
    kept = [c for c in cands if c["confidence"] >= cut]
    found = {g for c in kept for g in c["hits_big"]}
    fp = sum(not c["hits"] for c in kept)
    return {"min_confidence": cut, "sensitivity": round(len(found) / n_big, 4) if n_big else None,
            "fp_per_scan": round(fp / n_scans, 2), "found": len(found), "false_positives": fp}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=4, help="phantoms (default 4)")
    ap.add_argument("--seed", type=int, default=1000, help="seed of the first phantom (default 1000)")
    ap.add_argument("--shape", type=int, nargs=3, default=(224, 224, 112), metavar=("I", "J", "K"))
    ap.add_argument("--spacing", type=float, nargs=3, default=(1.4, 1.4, 2.5), metavar=("SI", "SJ", "SK"))
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--min-mm", type=float, default=5.0, help="smallest nodule that counts (default 5 mm)")
    ap.add_argument("--no-crf", action="store_true", help="postprocess without the CRF")
    ap.add_argument("--min-confidence", type=float, default=None,
                    help="confidence cut to report (default: the model's plan)")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="keep and reuse each scan's outputs (keyed by the weights, the plan less its "
                         "classifier and cut, the geometry and --no-crf)")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--candidates-out", type=Path, default=None,
                    help="also write every candidate (seed, confidence, mean, peak, hits) as JSON, to study cuts")
    args = ap.parse_args(argv)
    if args.count < 1:
        ap.error("--count must be at least 1")

    from medseg.data.phantom import make_phantom
    from medseg.evaluation.froc import froc
    from medseg.inference.pipeline import InferenceSettings, Segmenter
    from medseg.io import read_volume, write_volume
    from medseg.models import load_checkpoint_dict
    from medseg.models.checkpoint import BUNDLED_MODEL
    from medseg.postprocess.candidates import CandidateClassifier, confidence
    from medseg.training.fp_reduction import scan_candidates

    seg = Segmenter(InferenceSettings(model=args.model, device=args.device, quiet=True, preview=False,
                                      save_probabilities=True, crf=False if args.no_crf else None,
                                      min_confidence=0.0))
    cut = float(seg.plan.inference.min_confidence if args.min_confidence is None else args.min_confidence)
    clf_dict = seg.plan.inference.candidate_classifier
    clf = CandidateClassifier.from_dict(clf_dict) if clf_dict else None
    scans, cands = [], []
    n_big = 0
    t_all = time.perf_counter()
    cache = None
    if args.work_dir is not None:
        payload = load_checkpoint_dict(args.model or BUNDLED_MODEL)
        # what shapes the masks: weights, plan (overlap, threshold, spacing...) and geometry; not
        # the classifier or the cut, which only score the components afterwards
        plan = {**payload["plan"], "inference": {k: v for k, v in (payload["plan"].get("inference") or {}).items()
                                                 if k not in ("candidate_classifier", "min_confidence")}}
        h = hashlib.sha256(json.dumps([plan, list(args.shape), list(args.spacing)], sort_keys=True,
                                      default=str).encode())
        state = payload["state_dict"]
        for name in sorted(state):
            h.update(name.encode())
            h.update(state[name].cpu().numpy().tobytes())
        cache = args.work_dir / f"{h.hexdigest()[:16]}-{'nocrf' if args.no_crf else 'crf'}"
    with tempfile.TemporaryDirectory(prefix="medseg-detect-") as work:
        for n in range(args.count):
            seed = args.seed + n
            ph = make_phantom(seed=seed, shape=args.shape, spacing=args.spacing)
            ct = write_volume(ph.ct, Path(work) / f"ph{seed}.nii.gz")
            truth = np.asarray(ph.nodules.array)
            image = np.asarray(ph.ct.array)
            sizes = {int(d["id"]): float(d["diameter_mm"]) for d in ph.info["nodules"]}
            kinds = {int(d["id"]): f"{d['diameter_mm']:.1f} mm {d['kind']} {d['location']}" for d in ph.info["nodules"]}
            spacing = tuple(float(s) for s in ph.ct.spacing)
            del ph
            t = time.perf_counter()
            out_dir = Path(work) / "out" if cache is None else cache / f"ph{seed}"
            files = {k: out_dir / f"ph{seed}_{k}.nii.gz" for k in ("nodules", "probabilities", "lungs")}
            cached = cache is not None and (out_dir / "complete").is_file()
            if not cached:
                res = seg.run(ct, out_dir, case_name=f"ph{seed}")
                files = {k: Path(res.outputs[k]) for k in files}
                if cache is not None:
                    (out_dir / "complete").write_text("")  # written last: the outputs are whole
            seconds = time.perf_counter() - t
            pred = read_volume(files["nodules"]).array
            prob = read_volume(files["probabilities"]).array
            lungs = read_volume(files["lungs"]).array
            # every kept component with the features the pipeline scored it by, and the nodules it hits
            feats = scan_candidates(pred, truth, spacing, prob, image, lungs)
            del image, prob, lungs
            big = [i for i, dmm in sizes.items() if dmm >= args.min_mm and (truth == i).any()]
            n_big += len(big)
            mine = []
            for f in feats:
                mine.append({"confidence": confidence(f, clf), "mean": f["mean_probability"],
                             "peak": f["max_probability"], "hits": f["hits"],
                             "hits_big": [(seed, g) for g in f["hits"] if g in big]})
            cands += mine
            at = _at_cut(mine, len(big), 1, cut)
            found_ids = {g for c in mine if c["confidence"] >= cut for _, g in c["hits_big"]}
            missed = [kinds[g] for g in big if g not in found_ids]
            scans.append({"seed": seed, "nodules_ge_min": len(big), "found": at["found"],
                          "false_positives": at["false_positives"],
                          "candidates_fp": sum(not c["hits"] for c in mine), "missed": missed,
                          "seconds": round(seconds, 1), "cached": cached})
            fp = at["false_positives"]
            if not args.json:
                print(f"seed {seed}: {scans[-1]['found']}/{len(big)} nodules >= {args.min_mm:g} mm found, "
                      f"{fp} false positives, {seconds:.0f} s" + (f"; missed: {'; '.join(missed)}" if missed else ""),
                      flush=True)
    # a hit on a nodule under --min-mm only is neither a detection nor a false positive
    scored = [c for c in cands if c["hits_big"] or not c["hits"]]
    curves = {key: froc([c[key] for c in scored], [c["hits_big"] for c in scored], n_big, len(scans))
              for key in ("confidence", "mean", "peak")}
    at_cut = _at_cut(cands, n_big, len(scans), cut)
    from medseg.models.device import describe_machine
    result = {
        "scans": len(scans),
        "machine": describe_machine().to_dict(),
        "shape": list(args.shape),
        "spacing": list(args.spacing),
        "model": args.model or "bundled",
        "crf": not args.no_crf,
        "min_mm": args.min_mm,
        "nodules": n_big,
        "min_confidence": cut,
        "sensitivity": at_cut["sensitivity"],
        "fp_per_scan": at_cut["fp_per_scan"],
        "all_candidates": _at_cut(cands, n_big, len(scans), 0.0),
        "froc_sensitivity_at_fp": {k: round(v, 4) for k, v in curves["confidence"]["sensitivity_at_fp"].items()},
        "cpm": None if curves["confidence"]["cpm"] is None else round(curves["confidence"]["cpm"], 4),
        "cpm_by_mean_probability": None if curves["mean"]["cpm"] is None else round(curves["mean"]["cpm"], 4),
        "cpm_by_peak": None if curves["peak"]["cpm"] is None else round(curves["peak"]["cpm"], 4),
        "candidate_classifier": clf is not None,
        # the best confidence cut (PostprocessSettings.min_confidence) for <= 1 FP per scan, and
        # the same by peak probability for comparison
        "confidence_cut_at_1fp": _cut_at(curves["confidence"]["curve"], 1.0),
        "peak_cut_at_1fp": _cut_at(curves["peak"]["curve"], 1.0),
        "seconds": round(time.perf_counter() - t_all, 1),
        "per_scan": scans,
    }
    if args.candidates_out:
        from medseg.io.atomic import write_json_atomic

        write_json_atomic(args.candidates_out, {"nodules": n_big, "scans": len(scans), "candidates": cands})
    if args.json:
        print(json.dumps(result))
    else:
        print(f"sensitivity (>= {args.min_mm:g} mm) {result['sensitivity']} at {result['fp_per_scan']} FP/scan "
              f"over {len(scans)} scans; FROC {result['froc_sensitivity_at_fp']} CPM {result['cpm']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
