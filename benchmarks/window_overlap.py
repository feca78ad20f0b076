"""Sliding-window size and overlap: work per scan against how much the output moves.

    python benchmarks/window_overlap.py [--scan FILE] [--configs 48,48,16@0.5 96,96,32@0.25 ...]
                                        [--model CKPT] [--precision auto|fp32|bf16] [--json]

Each configuration (window in plan voxels @ overlap) runs the shipped predictor over the lung box of
one real scan (default: the real 5 mm chest CT), in this process. For each it prints the windows
run, network seconds, the speed ratio against the first configuration (the training patch at
overlap 0.5, the reference), and how far its output is from the reference: Dice of the p >= 0.5
masks in the lung, components >= 3 mm of the reference that it also marks, and the largest
probability difference.

It also measures **placement dependence**, the reason overlap 0.5 is the default: the same
configuration on the scan with its first ``--shift`` slices of every axis cut off, so every window
falls elsewhere on the anatomy; masks are compared on the voxels both cover. A network whose
output did not depend on where windows fall (no per-window statistics) would give Dice 1.0 there.
Detection figures for a configuration come from ``benchmarks/real_detection.py --window --overlap``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class Config:
    window: tuple[int, int, int] | None  # None: the plan's training patch
    overlap: float

    @classmethod
    def parse(cls, text: str) -> Config:
        window, _, overlap = text.partition("@")
        size = None if window in ("", "plan") else tuple(int(v) for v in window.split(","))
        return cls(size, float(overlap or 0.5))  # type: ignore[arg-type]


@dataclass
class Row:
    window: list[int]
    overlap: float
    windows_run: int
    network_s: float
    speedup_vs_reference: float
    dice_vs_reference: float
    reference_components_found: str
    max_abs_probability_difference: float
    placement_dice: float


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def components_found(reference: np.ndarray, other: np.ndarray, voxel_mm3: float, min_mm: float = 3.0) -> str:
    """``k/n``: reference components >= ``min_mm`` (equivalent diameter) that ``other`` overlaps."""
    from scipy import ndimage

    labels, n = ndimage.label(reference, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel())
    min_voxels = np.pi / 6.0 * min_mm**3 / voxel_mm3
    big = [i for i in range(1, n + 1) if sizes[i] >= min_voxels]
    hit = set(np.unique(labels[other & (labels > 0)]).tolist())
    return f"{sum(i in hit for i in big)}/{len(big)}"


def predict(predictor, volume, lung: np.ndarray) -> tuple[np.ndarray, dict]:  # noqa: ANN001
    roi = predictor.predict_roi(volume, lung)
    return roi.full(volume.shape), roi.stats


def shifted(volume, lung: np.ndarray, shift: int):  # noqa: ANN001, ANN201
    """The scan and mask without their first ``shift`` planes along every axis (origin moved)."""
    cut = (slice(shift, None),) * 3
    origin = volume.index_to_world(np.array([shift] * 3, float))
    return dataclasses.replace(volume, array=np.asarray(volume.array)[cut], origin=tuple(origin)), lung[cut]


def measure(config: Config, reference: tuple[np.ndarray, float] | None, volume, lung: np.ndarray,  # noqa: ANN001
            args: argparse.Namespace) -> tuple[Row, np.ndarray]:
    from medseg.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(args.model, device="cpu", window=config.window,
                                          overlap=config.overlap, precision=args.precision)
    prob, stats = predict(predictor, volume, lung)
    mask = (prob >= 0.5) & lung
    ref_mask, ref_s = (mask, stats["network_s"]) if reference is None else reference
    ref_prob = prob if reference is None else args.reference_probability
    sv, sl = shifted(volume, lung, args.shift)
    prob_s, _ = predict(predictor, sv, sl)
    cut = (slice(args.shift, None),) * 3
    placement = dice(mask[cut], (prob_s >= 0.5) & sl)
    row = Row(list(predictor.window), config.overlap, int(stats["windows_run"]), round(stats["network_s"], 2),
              round(ref_s / stats["network_s"], 2), round(dice(ref_mask, mask), 4),
              components_found(ref_mask, mask, volume.voxel_volume_mm3),
              round(float(np.abs(prob - ref_prob)[lung].max()), 3), round(placement, 4))
    return row, prob


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scan", default=str(SHARED / "real_chest" / "chest_ct_5mm_mass.nrrd"))
    ap.add_argument("--configs", nargs="+", default=["plan@0.5", "plan@0.25", "96,96,32@0.5", "96,96,32@0.25",
                                                     "128,128,32@0.25"],
                    help="WINDOW@OVERLAP, WINDOW = X,Y,Z plan voxels or 'plan'; the first is the reference")
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"])
    ap.add_argument("--shift", type=int, default=7, help="planes cut off for the placement test (default 7)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from medseg.inference.lung_mask import compute_lung_mask
    from medseg.io import read_volume

    torch.set_num_threads(max(1, torch.get_num_threads()))
    volume = read_volume(args.scan)
    lung = compute_lung_mask(volume).mask > 0
    rows: list[Row] = []
    reference = None
    t0 = time.perf_counter()
    for text in args.configs:
        row, prob = measure(Config.parse(text), reference, volume, lung, args)
        if reference is None:
            reference = ((prob >= 0.5) & lung, row.network_s)
            args.reference_probability = prob
        rows.append(row)
        if not args.json:
            print("  ".join(f"{k}={v}" for k, v in asdict(row).items()), flush=True)
    result = {"benchmark": "window_overlap", "scan": Path(args.scan).name, "model": args.model or "bundled",
              "precision": args.precision or "plan", "shift": args.shift, "rows": [asdict(r) for r in rows],
              "elapsed_s": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
