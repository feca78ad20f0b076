"""Whole-scan detection on real anatomy: held-out LIDC nodules in held-out real chest CT.

    python benchmarks/real_detection.py [--count 8] [--per-scan 6] [--model CKPT] [--work-dir DIR] [--json]

The test scans are hybrids (``medseg.data.hybrid``): real LIDC nodules of the patients the
checkpoint held out from training (its ``split.val_patients``), placed in parenchyma, beside
vessels and against the pleura of a real chest CT that no fitting step uses
(``real_chest/chest_ct_5mm_mass.nrrd``, 0.63 x 0.63 x 5 mm; its own 45 mm mass is kept clear of).
Beside them it scores the real chest as it is (its real mass is the lesion, everything else a
false positive) and real scans with no nodule (``real_ct/torso_ct_3mm.nii.gz``, lung bases).

Every scan goes through ``Segmenter.segment``, the path ``medseg infer`` ships, with the
confidence cut off; the cut is applied afterwards (a per-component filter, so this equals running
with it). A candidate detects each true lesion it overlaps. It prints:

* sensitivity at 1/8 .. 8 FP/scan and the CPM as LUNA16 computes it (interpolated), and the step
  figure, for lesions >= ``--min-mm`` (5 mm; smaller ones count neither as found nor as FP);
* the model's operating point (its ``min_confidence``): sensitivity and FP/scan;
* every figure by size, texture and placement kind; the real mass (found, Dice);
* FP/scan on the real background with no nodule; lung-mask Dice on the labelled real scans.

``--work-dir`` keeps the hybrids and each scan's candidates with their features, keyed by the
network's weights and the settings but not by the candidate classifier: a re-run, or a checkpoint
whose FP stage was refitted for the same network (``medseg train-fp``), re-scores in seconds.
``--failures DIR`` writes a preview of each missed lesion >= ``--min-mm``. One JSON line with
``--json``.

All test scans share one real background: its own false positives recur in every hybrid, so
FP/scan is that anatomy's. The hidden real scans are what checks the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: the component features a candidate classifier reads (see medseg.postprocess.candidates.FEATURES)
CLASSIFIER_INPUTS = ("mean_probability", "max_probability", "equivalent_diameter_mm", "elongation", "flatness",
                     "mean_hu", "std_hu", "shell_dense", "lung_contact", "prob_blobness", "hu_blobness",
                     "coarse_mean_probability", "coarse_max_probability")
SIZE_BINS = ((3, 5, "3-5mm"), (5, 10, "5-10mm"), (10, 20, "10-20mm"), (20, 30, "20-30mm"), (30, 1e9, ">=30mm"))


@dataclass
class Lesion:
    """One true lesion of a test scan."""

    key: str
    diameter_mm: float
    texture: str
    kind: str
    centre_lps: list[float]


@dataclass
class Candidate:
    """One reported component, with the lesions it overlaps."""

    confidence: float
    hits: list[str]
    mass: bool
    centre_lps: list[float]
    diameter_mm: float
    #: what a candidate classifier reads (medseg.postprocess.candidates.FEATURES' inputs); None for masses
    features: dict | None = None


@dataclass
class ScanResult:
    """Truth and candidates of one scan."""

    name: str
    group: str  # hybrid | real_mass | no_nodule
    lesions: list[Lesion]
    candidates: list[Candidate]
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- scoring
def match(labels: np.ndarray, truth: np.ndarray, nodules: list[dict], features: list[dict],
          keys: dict[int, str]) -> list[Candidate]:
    """Candidates of a segmentation, each with the lesion keys (truth label -> key) it overlaps."""
    by_label = {int(f["label"]): f for f in features}
    out = []
    for n in nodules:
        comp = labels == n["id"]
        hit = np.unique(truth[comp])
        f = by_label.get(n["id"], {})
        mass = f.get("kind") == "mass"
        out.append(Candidate(float(n["confidence"] if n.get("confidence") is not None else n["mean_probability"] or 0),
                             [keys[int(h)] for h in hit if int(h) in keys], mass,
                             list(n["centre_lps_mm"]), float(n["longest_diameter_mm"]),
                             None if mass or not f else {k: float(f[k]) for k in CLASSIFIER_INPUTS if k in f}))
    return out


def rescore(scans: list[ScanResult], classifier) -> int:  # noqa: ANN001
    """Each fine-pass candidate's confidence from its cached features: ``classifier``'s P(nodule)
    (a CandidateClassifier), or the mean probability without one, as the pipeline scores it.
    Masses keep theirs (the coarse pass's mean probability). Returns how many were re-scored."""
    from medseg.postprocess.candidates import confidence

    n = 0
    for s in scans:
        for c in s.candidates:
            if c.features is not None:
                score = confidence(c.features, classifier)
                if score is not None:
                    c.confidence, n = float(score), n + 1
    return n


def size_bin(d: float) -> str:
    return next(name for lo, hi, name in SIZE_BINS if lo <= d < hi) if d >= SIZE_BINS[0][0] else "<3mm"


def score(scans: list[ScanResult], min_mm: float, cut: float) -> dict:
    """FROC, operating point and breakdowns for lesions >= ``min_mm``."""
    from medseg.evaluation.froc import froc

    counted = {les.key: les for s in scans for les in s.lesions if les.diameter_mm >= min_mm}
    small = {les.key for s in scans for les in s.lesions if les.diameter_mm < min_mm}
    scores, hits = [], []
    for s in scans:
        for c in s.candidates:
            h = [k for k in c.hits if k in counted]
            if c.hits and not h and set(c.hits) <= small:
                continue  # on a lesion below the size floor: neither found nor a false positive
            scores.append(c.confidence)
            hits.append(h)
    fr = froc(scores, hits, len(counted), len(scans))
    kept = [c for s in scans for c in s.candidates if c.mass or c.confidence >= cut]
    found = {k for c in kept for k in c.hits if k in counted}
    fps = sum(not c.hits for c in kept)
    return {
        "n_scans": len(scans), "n_lesions": len(counted),
        "operating_point": {"min_confidence": cut, "sensitivity": _ratio(len(found), len(counted)),
                            "fp_per_scan": round(fps / max(len(scans), 1), 3), "found": len(found)},
        "all_candidates": {"sensitivity": _ratio(len({k for s in scans for c in s.candidates for k in c.hits
                                                      if k in counted}), len(counted)),
                           "fp_per_scan": round(sum(not c.hits for s in scans for c in s.candidates)
                                                / max(len(scans), 1), 2)},
        "cpm": _round(fr["cpm"]), "sensitivity_at_fp": _rounded(fr["sensitivity_at_fp"]),
        "cpm_step": _round(fr["cpm_step"]), "sensitivity_at_fp_step": _rounded(fr["sensitivity_at_fp_step"]),
        "by_size": _breakdown(counted, found, lambda le: size_bin(le.diameter_mm)),
        "by_texture": _breakdown(counted, found, lambda le: le.texture),
        "by_kind": _breakdown(counted, found, lambda le: le.kind),
        "found_at_1fp": _found_at(fr, scans, counted, 1.0),
    }


def _found_at(fr: dict, scans: list[ScanResult], counted: dict, rate: float) -> dict:
    """Breakdown by size and texture at the best confidence cut with <= ``rate`` FP/scan."""
    best = None
    for thr, fp, sens in zip(fr["curve"]["threshold"], fr["curve"]["fp_per_scan"], fr["curve"]["sensitivity"]):
        if thr is not None and fp <= rate + 1e-12 and (best is None or sens > best[1]):
            best = (thr, sens)
    if best is None:
        return {}
    found = {k for s in scans for c in s.candidates if c.confidence >= best[0] for k in c.hits if k in counted}
    return {"score_cut": round(best[0], 4), "sensitivity": round(best[1], 4),
            "by_size": _breakdown(counted, found, lambda le: size_bin(le.diameter_mm)),
            "by_texture": _breakdown(counted, found, lambda le: le.texture)}


def _breakdown(counted: dict, found: set, key) -> dict:
    groups: dict[str, list[int]] = {}
    for k, les in counted.items():
        g = groups.setdefault(key(les), [0, 0])
        g[0] += k in found
        g[1] += 1
    return {g: {"found": f, "n": n, "sensitivity": _ratio(f, n)} for g, (f, n) in sorted(groups.items())}


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _rounded(d: dict) -> dict:
    return {k: round(v, 4) for k, v in d.items()}


# ----------------------------------------------------------------------------- test scans
def held_out_patients(model: str | None) -> set[str]:
    """The LIDC patients the checkpoint's training never saw (its validation split)."""
    import torch

    from medseg.models import BUNDLED_MODEL

    payload = torch.load(model or BUNDLED_MODEL, map_location="cpu", weights_only=True)
    patients = set(payload.get("split", {}).get("val_patients", []))
    if not patients:
        sys.exit("the checkpoint records no held-out patients (split.val_patients): give --patients-from")
    return patients


def hybrid_scans(args: argparse.Namespace, patients: set[str], work: Path) -> list[tuple[str, Path, Path, dict]]:
    """Build (or reuse from ``work``) ``--count`` hybrids of the held-out background."""
    from medseg.io import read_volume

    pool: list = []
    background = avoid = None
    out = []
    for i in range(args.count):
        name = f"hyb_{Path(args.background).name.split('.')[0]}_s{args.seed + i}_n{args.per_scan}"
        js = work / "hybrids" / f"{name}.json"
        if not js.is_file():
            from medseg.data.hybrid import build_hybrid, load_lidc_nodules, write_hybrid

            if not pool:
                pool = sorted((n for n in load_lidc_nodules(args.lidc)
                               if n.patient_id in patients and n.diameter_mm >= 3.0), key=lambda n: n.file)
            if background is None:
                background = read_volume(args.background)
                avoid = read_volume(args.avoid).array > 0 if args.avoid else None
            rng = np.random.default_rng(args.seed + i)
            chosen = [pool[j] for j in rng.choice(len(pool), size=min(args.per_scan, len(pool)), replace=False)]
            scan = build_hybrid(background, chosen, seed=args.seed + i, avoid=avoid)
            write_hybrid(scan, work / "hybrids", name, lungs=False)
        out.append((name, work / "hybrids" / f"{name}.nii.gz", work / "hybrids" / f"{name}_nodules.nii.gz",
                    json.loads(js.read_text())))
    return out


def drop_on_background_lesion(scans: list[ScanResult], label: Path | None) -> int:
    """Drop the hybrids' candidates centred on the background's own lesion (the real mass, scored in
    the unmodified scan): in a hybrid it is neither a placed nodule nor a false positive."""
    from medseg.io import read_volume

    if label is None:
        return 0
    vol = read_volume(label)
    mask = np.asarray(vol.array) > 0
    dropped = 0
    for s in scans:
        keep = []
        for c in s.candidates:
            ijk = np.rint(vol.world_to_index(np.asarray(c.centre_lps))).astype(int)
            inside = all(0 <= i < n for i, n in zip(ijk, mask.shape)) and mask[tuple(ijk)]
            if inside and not c.hits:
                dropped += 1
            else:
                keep.append(c)
        s.candidates = keep
    return dropped


def hybrid_lesions(name: str, info: dict) -> tuple[list[Lesion], dict[int, str]]:
    lesions, keys = [], {}
    for n in info["nodules"]:  # phantom-set fields: id, kind (texture class), placement
        key = f"{name}/{n['id']}"
        keys[int(n["id"])] = key
        lesions.append(Lesion(key, float(n["diameter_mm"]), n["kind"], n["placement"], list(n["centre_lps_mm"])))
    return lesions, keys


def real_lesion(label: Path) -> Lesion:
    """The background's own lesion (the real mass) as a lesion of the unmodified scan."""
    from medseg.io import read_volume
    from medseg.postprocess.components import equivalent_diameter_mm

    vol = read_volume(label)
    m = np.asarray(vol.array) > 0
    centre = vol.index_to_world(np.argwhere(m).mean(0))
    return Lesion("real_mass/1", equivalent_diameter_mm(float(m.sum()) * vol.voxel_volume_mm3), "solid",
                  "juxta_pleural", [float(c) for c in centre])


# ----------------------------------------------------------------------------- running
def cache_key(args: argparse.Namespace, payload: dict) -> str:
    """What makes the candidates: the network's weights, the plan's inference settings and this
    run's. Not the candidate classifier or its cut: they only score candidates (``rescore``), so
    an FP-stage refit of the same network (``medseg train-fp``) re-scores the cached ones."""
    from medseg.models.checkpoint import weights_digest

    h = hashlib.sha256(weights_digest(payload["state_dict"]).encode())
    plan = {k: v for k, v in (payload.get("plan", {}).get("inference") or {}).items()
            if k not in ("candidate_classifier", "min_confidence")}
    # "coarse": the candidates carry the coarse pass's features (caches made before them do not)
    settings = [args.precision, args.no_crf, args.no_masses, args.overlap, args.window, args.tta, args.runtime, plan,
                "coarse"]
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def run_scan(segmenter, name: str, group: str, image: Path, truth: Path | None, lesions: list[Lesion],
             keys: dict[int, str], cache: Path) -> ScanResult:
    """Segment one scan (or reuse its cached candidates) and match them with the truth."""
    from medseg.io import read_volume

    path = cache / f"{name}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        return ScanResult(name, group, lesions, [Candidate(**c) for c in data["candidates"]], data["seconds"],
                          data.get("extra", {}))
    volume = read_volume(image)
    t = time.perf_counter()
    seg = segmenter.segment(volume, keep_probabilities=True)
    seconds = time.perf_counter() - t
    _add_all_shape_measures(seg)
    lab = np.zeros(volume.shape, np.uint16) if truth is None else np.asarray(read_volume(truth).array).astype(np.uint16)
    cands = match(seg.labels, lab, seg.nodules, seg.features, keys)
    extra = {"status": seg.status, "lesion_dice": _lesion_dice(seg.labels, lab, keys)}
    _write_json(path, {"candidates": [c.__dict__ for c in cands], "seconds": seconds, "extra": extra})
    return ScanResult(name, group, lesions, cands, seconds, extra)


def _add_all_shape_measures(seg) -> None:  # noqa: ANN001
    """The Hessian shape measures of every fine candidate, which the pipeline computes only when its
    classifier reads them: cached, they let any refitted classifier re-score the candidates."""
    from medseg.postprocess.components import SHAPE_MEASURES, add_shape_measures

    todo = [f for f in seg.features if f.get("kind") != "mass" and "bbox" in f
            and not all(k in f for k in SHAPE_MEASURES)]
    if todo and seg.probability is not None:
        add_shape_measures(todo, seg.labels, seg.volume.spacing, seg.probability_full(),
                           np.asarray(seg.volume.array, np.float32))


def _lesion_dice(labels: np.ndarray, truth: np.ndarray, keys: dict[int, str]) -> dict[str, float]:
    """Dice of each true lesion against the union of the components that overlap it."""
    out = {}
    for t, key in keys.items():
        m = truth == t
        ids = np.unique(labels[m])
        pred = np.isin(labels, ids[ids > 0])
        out[key] = round(float(2 * (pred & m).sum() / max(pred.sum() + m.sum(), 1)), 4)
    return out


def _write_json(path: Path, data: dict) -> None:
    from medseg.io import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)


def lung_mask_dice(shared: Path) -> dict[str, float]:
    """Lung-mask Dice against TotalSegmentator's lobes on the labelled real scan, whole and cropped."""
    from medseg.inference.lung_mask import compute_lung_mask
    from medseg.io import Volume, read_volume

    ct = read_volume(shared / "real_ct" / "torso_ct_3mm_30slices.nii.gz")
    ref = np.isin(read_volume(shared / "real_ct" / "torso_ct_3mm_30slices_totalseg_labels.nii.gz").array,
                  [10, 11, 12, 13, 14])
    out = {}
    for name, box in {"whole": np.s_[:, :, :], "cut_through_lung": np.s_[15:105, 10:90, :],
                      "right_side": np.s_[0:61, :, :], "left_side": np.s_[61:, :, :]}.items():
        start = [b.start or 0 for b in box]
        sub = Volume(np.ascontiguousarray(ct.array[box]), ct.spacing, origin=tuple(ct.index_to_world(start)),
                     direction=ct.direction)
        m = compute_lung_mask(sub).mask > 0
        r = ref[box]
        out[name] = round(float(2 * (m & r).sum() / max(m.sum() + r.sum(), 1)), 4)
    return out


def write_failures(scans: list[ScanResult], hybrids: dict[str, Path], min_mm: float, cut: float, out: Path) -> list[str]:
    """A preview (axial slice through the centre, truth in red) of each missed lesion >= ``min_mm``."""
    from PIL import Image

    from medseg.io import atomic_path, read_volume

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for s in scans:
        found = {k for c in s.candidates if c.mass or c.confidence >= cut for k in c.hits}
        missed = [les for les in s.lesions if les.diameter_mm >= min_mm and les.key not in found]
        if not missed or s.name not in hybrids:
            continue
        vol = read_volume(hybrids[s.name])
        truth = np.asarray(read_volume(str(hybrids[s.name]).replace(".nii.gz", "_nodules.nii.gz")).array)
        for les in missed:
            i, j, k = np.rint(vol.world_to_index(np.asarray(les.centre_lps))).astype(int)
            sl = np.asarray(vol.array[:, :, k], np.float32)
            box = (slice(max(i - 48, 0), i + 48), slice(max(j - 48, 0), j + 48))
            g = (np.clip((sl[box] + 1000) / 1400, 0, 1) * 255).astype(np.uint8).T
            rgb = np.stack([g] * 3, -1)
            label = int(les.key.rsplit("/", 1)[1])
            edge = np.equal(truth[:, :, k][box], label).T
            rgb[edge & ~np.roll(edge, 1, 0) | edge & ~np.roll(edge, 1, 1)] = (255, 0, 0)
            name = f"{les.key.replace('/', '_')}_{les.kind}_{les.texture}_{les.diameter_mm:.0f}mm.png"
            with atomic_path(out / name) as tmp:
                Image.fromarray(np.kron(rgb, np.ones((3, 3, 1), np.uint8))).save(tmp, format="PNG")
            written.append(name)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=8, help="hybrid scans (default 8)")
    ap.add_argument("--per-scan", type=int, default=6, help="held-out LIDC nodules per hybrid (default 6)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first hybrid")
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--lidc", default=str(SHARED / "lidc_nodule_vois"))
    ap.add_argument("--background", default=str(SHARED / "real_chest" / "chest_ct_5mm_mass.nrrd"),
                    help="held-out real chest CT the hybrids are built in")
    ap.add_argument("--avoid", default=str(SHARED / "real_chest" / "chest_ct_5mm_mass_label.nrrd"),
                    help="its own lesion label: placed nodules keep clear, and it is scored as a lesion")
    ap.add_argument("--no-nodule", nargs="*", default=[str(SHARED / "real_ct" / "torso_ct_3mm.nii.gz")],
                    help="real scans with no nodule (FP/scan)")
    ap.add_argument("--min-mm", type=float, default=5.0, help="smallest lesion counted (default 5 mm)")
    ap.add_argument("--min-confidence", type=float, default=None, help="operating point (default: the model's)")
    ap.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"])
    ap.add_argument("--overlap", type=float, default=None)
    ap.add_argument("--window", type=lambda t: tuple(int(v) for v in t.split(",")), default=None,
                    help="sliding-window size X,Y,Z in plan voxels (default: the plan's)")
    ap.add_argument("--tta", action="store_true", help="average the 8 axis flips")
    ap.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime", "openvino"])
    ap.add_argument("--no-crf", action="store_true")
    ap.add_argument("--no-masses", action="store_true")
    ap.add_argument("--work-dir", default=None, help="keep hybrids and candidates here (re-runs re-score)")
    ap.add_argument("--failures", default=None, help="write a preview of each missed lesion to this folder")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import tempfile

    import torch

    from medseg.inference.pipeline import InferenceSettings, Segmenter
    from medseg.models import BUNDLED_MODEL, load_checkpoint_dict
    from medseg.postprocess import CandidateClassifier

    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="real_detection_"))
    segmenter = Segmenter(InferenceSettings(model=args.model, device="cpu", quiet=True, preview=False,
                                            min_confidence=0.0, precision=args.precision, overlap=args.overlap, window=args.window, tta=args.tta, runtime=args.runtime,
                                            crf=False if args.no_crf else None, masses=not args.no_masses,
                                            coarse_features=True))
    cut = float(segmenter.plan.inference.min_confidence if args.min_confidence is None else args.min_confidence)
    cache = work / "candidates" / cache_key(args, load_checkpoint_dict(args.model or BUNDLED_MODEL))
    t0 = time.perf_counter()
    hybrids = hybrid_scans(args, held_out_patients(args.model), work)
    scans = []
    for name, image, truth, info in hybrids:
        lesions, keys = hybrid_lesions(name, info)
        scans.append(run_scan(segmenter, name, "hybrid", image, truth, lesions, keys, cache))
        print(f"{name}: {len(lesions)} lesions, {len(scans[-1].candidates)} candidates, "
              f"{scans[-1].seconds:.0f} s", file=sys.stderr)
    on_mass = drop_on_background_lesion(scans, Path(args.avoid) if args.avoid else None)
    mass = real_lesion(Path(args.avoid))
    real = run_scan(segmenter, "real_chest", "real_mass", Path(args.background), Path(args.avoid), [mass],
                    {1: mass.key}, cache)
    clean = [run_scan(segmenter, Path(p).name.split(".")[0], "no_nodule", Path(p), None, [], {}, cache)
             for p in args.no_nodule]
    fitted = segmenter.plan.inference.candidate_classifier
    rescore(scans + [real] + clean, CandidateClassifier.from_dict(fitted) if fitted else None)
    from medseg.models.device import describe_machine
    result = {
        "benchmark": "real_detection", "model": args.model or "bundled", "work_dir": str(work),
        "settings": {"precision": args.precision or "plan", "runtime": args.runtime, "overlap": args.overlap,
                     "window": args.window, "tta": args.tta, "crf": not args.no_crf, "masses": not args.no_masses},
        "background": Path(args.background).name, "hybrids": len(scans), "per_scan": args.per_scan,
        "min_mm": args.min_mm, "hybrid_candidates_on_the_real_mass_dropped": on_mass,
        "hybrid_scans": score(scans, args.min_mm, cut),
        "with_real_chest": score(scans + [real], args.min_mm, cut),
        "real_mass": {"found": any(mass.key in c.hits for c in real.candidates),
                      "dice": real.extra.get("lesion_dice", {}).get(mass.key),
                      "other_candidates_at_cut": sum(1 for c in real.candidates
                                                     if not c.hits and (c.mass or c.confidence >= cut))},
        "no_nodule_fp_per_scan": {s.name: sum(1 for c in s.candidates if c.mass or c.confidence >= cut)
                                  for s in clean},
        "lung_mask_dice": lung_mask_dice(SHARED),
        "seconds_per_scan": round(float(np.mean([s.seconds for s in scans + [real] + clean])), 1),
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "machine": describe_machine().to_dict(),
    }
    if args.failures:
        result["failure_previews"] = write_failures(scans, {n: img for n, img, _, _ in hybrids}, args.min_mm, cut,
                                                    Path(args.failures))
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
