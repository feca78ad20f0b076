"""Does 3D dense-CRF refinement help? Dice with and without it on held-out LIDC nodule crops.

    python benchmarks/crf_benchmark.py [--data DIR] [--model CKPT] [--source model|blurred-gt]
                                       [--limit N] [--quick] [--crf key=value ...] [--json]

Validation crops are those of patients held out from training: the ``val`` patients of the
model's run (``splits.json`` and the fold in ``config.json`` beside the checkpoint, or the
checkpoint's recorded split), else the
last 20% of patients by id. For each crop the nodule probability comes from

- ``model``: the network, through ``Segmenter(model=CKPT, lung_mask=False).segment(image).probability_full()``
  (crop mode), the default when a checkpoint is given or the bundled model exists;
- ``blurred-gt``: a documented stand-in while no model exists: the ground truth's signed distance
  (mm) with a random boundary shift of -1.5..+1.5 mm (both too large and too small masks), a 1 mm
  logistic edge and smooth noise; seeded per crop, so runs are comparable.

Prints Dice at the threshold without CRF (the baseline, same process) and with CRF, the paired
difference, how many crops got better/worse, and the CRF time per nodule.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
import zlib
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lidc_nodule_vois"
PATIENT = re.compile(r"LIDC-IDRI-\d{4}")


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    denom = int(pred.sum()) + int(gt.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(pred, gt).sum()) / denom


def validation_patients(patients: list[str], model: str | None) -> tuple[set[str], str]:
    """Held-out patients and where that split came from."""
    if model:
        run_dir = Path(model).resolve().parent
        splits = run_dir / "splits.json"
        if splits.is_file():
            data = json.loads(splits.read_text())
            config = run_dir / "config.json"  # the training run records its fold there
            fold = int(json.loads(config.read_text()).get("fold", 0)) if config.is_file() else 0
            val = {m.group(0) for key in data["folds"][fold]["val"] for m in [PATIENT.search(str(key))] if m}
            if val:
                return val, f"{splits} fold {fold}"
        from medseg.models import load_checkpoint_dict

        val = set(load_checkpoint_dict(model).get("split", {}).get("val_patients", []))
        if val:
            return val, f"{model} (recorded split)"
    ordered = sorted(set(patients))
    return set(ordered[int(0.8 * len(ordered)) :]), "last 20% of patients by id"


def blurred_gt(gt: np.ndarray, spacing: tuple[float, float, float], seed: int) -> np.ndarray:
    """Stand-in probabilities: shifted, softened and noisy ground truth (see module docstring)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    inside = ndimage.distance_transform_edt(gt, sampling=spacing)
    outside = ndimage.distance_transform_edt(~gt, sampling=spacing)
    sdf = inside - outside  # mm, positive inside
    shift = rng.uniform(-1.5, 1.5)  # > 0 erodes, < 0 dilates
    noise = ndimage.gaussian_filter(rng.normal(0, 1, gt.shape), sigma=[1.0 / s for s in spacing])
    noise *= 0.6 / (noise.std() + 1e-9)
    return (1.0 / (1.0 + np.exp(-(sdf - shift) / 1.0 + noise))).astype(np.float32)


def parse_overrides(items: list[str]):
    from medseg.postprocess.crf import CRFSettings

    s = CRFSettings()
    for item in items:
        key, _, value = item.partition("=")
        if key not in {f.name for f in dataclasses.fields(s)}:
            raise SystemExit(f"unknown CRF setting {key!r}")
        current = getattr(s, key)
        s = dataclasses.replace(s, **{key: value if isinstance(current, str) else type(current)(float(value))})
    return s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with image/ and mask/")
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled model if present)")
    parser.add_argument("--source", choices=("model", "blurred-gt"), default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=None, help="at most N validation crops")
    parser.add_argument("--quick", action="store_true", help="smoke size: 8 crops")
    parser.add_argument("--threshold", type=float, default=None, help="default: the plan's (model) or 0.5")
    parser.add_argument("--crf", nargs="*", default=[], metavar="KEY=VALUE", help="CRFSettings overrides")
    parser.add_argument("--backends", default="pydensecrf",
                        help="comma list of CRF backends to measure in this run: pydensecrf,torch")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)

    from medseg.io import read_volume
    from medseg.postprocess.crf import refine

    images = sorted((args.data / "image").glob("*.nii.gz"))
    if not images:
        print(f"no crops in {args.data / 'image'}", file=sys.stderr)
        return 2
    model = args.model
    if model is None and args.source != "blurred-gt":
        from medseg.models.checkpoint import BUNDLED_MODEL

        model = str(BUNDLED_MODEL) if Path(BUNDLED_MODEL).is_file() else None
    source = args.source or ("model" if model else "blurred-gt")
    if source == "model" and not model:
        print("no model: pass --model CKPT or use --source blurred-gt", file=sys.stderr)
        return 2
    val, split_from = validation_patients([PATIENT.search(p.name).group(0) for p in images],
                                          model if source == "model" else None)
    crops = [p for p in images if PATIENT.search(p.name).group(0) in val]
    limit = 8 if args.quick and args.limit is None else args.limit
    crops = crops[:limit] if limit else crops
    base = parse_overrides(args.crf)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    per_backend = {b: dataclasses.replace(base, backend=b) for b in backends}

    segmenter, threshold = None, 0.5
    if source == "model":
        from medseg.inference.pipeline import Segmenter

        segmenter = Segmenter(model=model, device=args.device, lung_mask=False, quiet=True, crf=False)
        threshold = float(segmenter.plan.inference.threshold)
    threshold = args.threshold if args.threshold is not None else threshold

    rows = []
    for path in crops:
        image, mask = read_volume(path), read_volume(args.data / "mask" / path.name)
        gt = mask.array > 0
        hu = np.asarray(image.array, dtype=np.float32)
        if segmenter is not None:
            prob = segmenter.segment(image, keep_probabilities=True).probability_full()
        else:
            prob = blurred_gt(gt, image.spacing, seed=zlib.crc32(path.name.encode()))
        row = {"file": path.name, "voxels": int(hu.size), "without": dice(prob >= threshold, gt)}
        for b, settings in per_backend.items():
            t0 = time.perf_counter()
            refined = refine(prob, hu, image.spacing, threshold, settings)
            row[f"{b}_seconds"] = time.perf_counter() - t0
            row[b] = dice(refined, gt)
        rows.append(row)

    without = np.array([r["without"] for r in rows])
    from medseg.models.device import describe_machine
    result = {
        "source": source,
        "model": model if source == "model" else None,
        "split": split_from,
        "crops": len(rows),
        "threshold": threshold,
        "crf_settings": {k: v for k, v in dataclasses.asdict(base).items() if k != "backend"},
        "dice_without_crf": round(float(without.mean()), 4),
        "dice_median_without_crf": round(float(np.median(without)), 4),
        "crf": {},
        "machine": describe_machine().to_dict(),
    }
    for b in per_backend:
        with_ = np.array([r[b] for r in rows])
        secs = np.array([r[f"{b}_seconds"] for r in rows])
        diff = with_ - without
        result["crf"][b] = {
            "dice_with_crf": round(float(with_.mean()), 4),
            "dice_median_with_crf": round(float(np.median(with_)), 4),
            "dice_delta_mean": round(float(diff.mean()), 4),
            "ratio_with_vs_without": round(float(with_.mean() / max(without.mean(), 1e-9)), 4),
            "improved": int((diff > 0.005).sum()),
            "worsened": int((diff < -0.005).sum()),
            "worst_delta": round(float(diff.min()), 4),
            "crf_seconds_per_nodule_mean": round(float(secs.mean()), 4),
            "crf_seconds_per_nodule_median": round(float(np.median(secs)), 4),
        }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            if k == "crf":
                for b, figures in v.items():
                    print(f"{'CRF ' + b:>30}:")
                    for kk, vv in figures.items():
                        print(f"{kk:>30}: {vv}")
            else:
                print(f"{k:>30}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
