"""Accuracy of a nodule model on LIDC-style crops, against a classical HU-threshold baseline.

    python benchmarks/lidc_accuracy.py --data ../shared/data/lidc_nodule_vois [--model CKPT] [--json]

Runs the model (bundled by default) on every crop in ``DATA/image`` in crop mode (no lung
masking) and compares with ``DATA/mask``. Prints Dice mean/median, Dice by nodule size
(<6, 6-10, >10 mm) and by texture when ``DATA/nodules.csv`` is present, for the model and for
the baseline (HU threshold, then the connected component nearest the crop centre). When the
checkpoint records its validation patients, the same figures are also given for those held-out
patients alone (``held_out``): only they measure generalisation.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from medseg.data.thick_slices import coarsen
from medseg.models.device import describe_machine

SIZE_BINS = (("lt6mm", 0.0, 6.0), ("6to10mm", 6.0, 10.0), ("gt10mm", 10.0, float("inf")))


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = pred.astype(bool), gt.astype(bool)
    denom = p.sum() + g.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(p, g).sum() / denom)


def threshold_baseline(hu: np.ndarray, threshold: float = -500.0) -> np.ndarray:
    """Classical baseline: voxels above ``threshold`` HU, keep the component nearest the centre."""
    import cc3d

    labels = cc3d.connected_components(hu > threshold, connectivity=26)
    if labels.max() == 0:
        return np.zeros(hu.shape, bool)
    centre = (np.array(hu.shape) - 1) / 2.0
    at_centre = labels[tuple(np.round(centre).astype(int))]
    if at_centre:
        return labels == at_centre
    stats = cc3d.statistics(labels)
    centroids = np.asarray(stats["centroids"])[1:]
    nearest = int(np.argmin(np.linalg.norm(centroids - centre, axis=1))) + 1
    return labels == nearest


def texture_group(texture: str) -> str:
    t = texture.lower()
    if t.startswith("non-solid"):
        return "ground_glass"
    if t.startswith("part solid") or t == "solid/mixed":
        return "part_solid"
    return "solid"


def summarise(rows: list[dict], key: str) -> dict:
    values = np.array([r[key] for r in rows], dtype=float)
    out: dict = {
        "cases": len(rows),
        "dice_mean": round(float(values.mean()), 4) if len(values) else None,
        "dice_median": round(float(np.median(values)), 4) if len(values) else None,
    }
    if rows and "diameter_mm" in rows[0]:
        out["dice_by_size"] = {
            name: _group_stats([r[key] for r in rows if lo <= r["diameter_mm"] < hi]) for name, lo, hi in SIZE_BINS
        }
        groups = sorted({r["texture"] for r in rows})
        out["dice_by_texture"] = {g: _group_stats([r[key] for r in rows if r["texture"] == g]) for g in groups}
    return out


def _group_stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "dice_mean": None}
    return {"n": len(values), "dice_mean": round(float(np.mean(values)), 4), "dice_median": round(float(np.median(values)), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="folder with image/, mask/ and optional nodules.csv")
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=None, help="only the first N crops (smoke runs)")
    parser.add_argument("--tta", action="store_true", help="average the 8 axis flips (medseg infer --tta)")
    parser.add_argument("--held-out-only", action="store_true",
                        help="only the crops of the checkpoint's validation patients")
    parser.add_argument("--coarse-spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                        help="first resample each crop and its mask to voxels at least this coarse (mm), "
                             "as a coarser scan would show them: how the model does on thick-slice scans")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                        help="network precision (default: the model's plan, auto)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)

    from medseg.inference.pipeline import Segmenter
    from medseg.io import read_volume
    from medseg.models import load_checkpoint_dict
    from medseg.models.checkpoint import BUNDLED_MODEL

    images = sorted((args.data / "image").glob("*.nii.gz"))[: args.limit]
    if not images:
        print(f"no crops found in {args.data / 'image'}", file=sys.stderr)
        return 2
    table = {}
    if (args.data / "nodules.csv").is_file():
        with open(args.data / "nodules.csv", newline="") as fh:
            table = {r["file"]: r for r in csv.DictReader(fh)}
    payload = load_checkpoint_dict(args.model or BUNDLED_MODEL)
    held_out = set(payload.get("split", {}).get("val_patients", []))
    if args.held_out_only:
        if not held_out:
            print(f"{args.model or BUNDLED_MODEL} records no validation patients", file=sys.stderr)
            return 2
        images = [p for p in images if p.name[:14] in held_out]
    # the probabilities of the shipped path (crop mode); the CRF is scored by crf_benchmark.py
    segmenter = Segmenter(model=args.model, device=args.device, lung_mask=False, quiet=True, tta=args.tta,
                          crf=False, precision=args.precision)
    threshold = segmenter.plan.inference.threshold if hasattr(segmenter, "plan") else 0.5

    rows = []
    vanished: list[str] = []
    t0 = time.perf_counter()
    for path in images:
        image, mask = read_volume(path), read_volume(args.data / "mask" / path.name)
        if args.coarse_spacing:
            image, mask = coarsen(image, args.coarse_spacing), coarsen(mask, args.coarse_spacing, binary=True)
            if not mask.array.any():  # a nodule under half a coarse voxel: nothing left to score
                vanished.append(path.name)
                continue
        prob = segmenter.segment(image, keep_probabilities=True).probability_full()
        gt = mask.array > 0
        row = {
            "file": path.name,
            "patient": path.name[:14],
            "model": dice(prob >= threshold, gt),
            "baseline": dice(threshold_baseline(np.asarray(image.array, dtype=np.float32)), gt),
        }
        meta = table.get(path.name)
        if meta:
            row["diameter_mm"] = float(meta["diameter_mm"])
            row["texture"] = texture_group(meta["Texture"])
        rows.append(row)
    seconds = time.perf_counter() - t0

    result = {
        "model": str(args.model or BUNDLED_MODEL),
        "tta": args.tta,
        "precision": segmenter.model_info()["precision"],
        "coarse_spacing": args.coarse_spacing,
        **({"vanished_at_coarse_spacing": len(vanished)} if args.coarse_spacing else {}),
        **summarise(rows, "model"),
        "baseline": summarise(rows, "baseline"),
        "seconds_per_crop": round(seconds / len(rows), 4),
        "machine": describe_machine().to_dict(),
    }
    held = [r for r in rows if r["patient"] in held_out]
    if held:
        result["held_out"] = {**summarise(held, "model"), "baseline": summarise(held, "baseline")}
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
