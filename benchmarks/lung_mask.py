"""Lung mask: time on a 512 x 512 x 305 chest CT and agreement on real scans, whole and cropped.

    python benchmarks/lung_mask.py [--quick] [--json]

Time: the real 5 mm chest CT (``real_chest/``) repeated to 305 slices (512 x 512 x 305 at
0.63 x 0.63 x 1 mm, the size of a thin-slice scan), against a baseline in the same process: a
plain full-resolution threshold and connected-component labelling (``scipy.ndimage.label`` of
HU < -400), the least any lung mask does. Agreement: Dice against TotalSegmentator's lobes on the
labelled 30-slice scan, and against the whole-field mask on crops of the real chest (cut through
both lungs, each hemithorax, no outside air, a small field inside the chest). One JSON line with
``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CROPS = {
    "cut_through_both_lungs": np.s_[130:380, 150:400, :],
    "right_hemithorax": np.s_[0:256, :, :],
    "left_hemithorax": np.s_[256:, :, :],
    "no_outside_air": np.s_[110:400, 130:420, :],
    "small_field_inside_the_chest": np.s_[160:360, 180:380, 10:50],
}


def _crop(vol, box):  # noqa: ANN001, ANN202
    from medseg.io import Volume

    start = [b.start or 0 for b in box]
    return Volume(np.ascontiguousarray(vol.array[box]), vol.spacing, origin=tuple(vol.index_to_world(start)),
                  direction=vol.direction)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1)), 4)


def timing(chest, repeats: int) -> dict:  # noqa: ANN001
    from scipy import ndimage

    from medseg.inference.lung_mask import compute_lung_mask
    from medseg.io import Volume

    z = 5 if repeats > 1 else 1
    big = Volume(np.repeat(np.asarray(chest.array), z, axis=2), (chest.spacing[0], chest.spacing[1], chest.spacing[2] / z),
                 origin=chest.origin, direction=chest.direction)
    t = time.perf_counter()
    res = compute_lung_mask(big)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    ndimage.label(np.asarray(big.array) < -400)
    base = time.perf_counter() - t
    return {"shape": list(big.shape), "lung_mask_s": round(ours, 2), "baseline_threshold_label_s": round(base, 2),
            "ratio_to_baseline": round(ours / base, 2), "lung_ml": round(res.volume_ml)}


def agreement(chest) -> dict:  # noqa: ANN001
    from medseg.inference.lung_mask import compute_lung_mask
    from medseg.io import read_volume

    ct = read_volume(SHARED / "real_ct" / "torso_ct_3mm_30slices.nii.gz")
    lobes = np.isin(read_volume(SHARED / "real_ct" / "torso_ct_3mm_30slices_totalseg_labels.nii.gz").array,
                    [10, 11, 12, 13, 14])
    out = {"totalsegmentator_lobes_dice": _dice(compute_lung_mask(ct).mask > 0, lobes)}
    full = compute_lung_mask(chest).mask > 0
    for name, box in CROPS.items():
        res = compute_lung_mask(_crop(chest, box))
        out[f"{name}_dice_vs_whole_field"] = _dice(res.mask > 0, full[box])
        out[f"{name}_found"] = res.found
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="time the 61-slice scan as it is")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from medseg.io import read_volume

    if not SHARED.is_dir():
        print(f"shared real data not found at {SHARED}", file=sys.stderr)
        return 2
    chest = read_volume(SHARED / "real_chest" / "chest_ct_5mm_mass.nrrd")
    from medseg.models.device import describe_machine
    result = {"benchmark": "lung_mask", **timing(chest, 1 if args.quick else 5), **agreement(chest),
              "machine": describe_machine().to_dict()}
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
