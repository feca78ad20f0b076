"""Thick-slice copies of LIDC nodule crops, for training on how 2.5-5 mm series show a nodule.

    python sample_data/make_thick_crops.py --lidc DIR --out DIR --thickness MM [MM ...]
        [--exclude-patients FILE | --held-out-of CKPT] [--one-per-crop] [--random-phase]
        [--min-ratio R] [--min-slices N] [--seed S]

Each crop of ``DIR/image`` (with its ``DIR/mask``) is written again at each ``--thickness`` that
is more than ``--min-ratio`` times its own slice spacing (``--one-per-crop``: one thickness drawn
per crop), as ``OUT/image/<name>_z<MM>.nii.gz`` and ``OUT/mask/...``: a folder ``medseg train
--data`` reads. ``--random-phase`` drops a random number of leading slices first, so nodules fall
at every position within a thick slab. Patients to keep out of training (the validation or test
patients): ``--exclude-patients`` (one id a line) or ``--held-out-of CKPT`` (the checkpoint's
``split.val_patients``). The resampling is :mod:`medseg.data.thick_slices`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

try:
    from medseg.data.thick_slices import thick_slice_copy
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from medseg.data.thick_slices import thick_slice_copy

from medseg.errors import InputError
from medseg.io import read_volume, write_mask


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lidc", required=True, type=Path, help="crop folder with image/ and mask/")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--thickness", required=True, type=float, nargs="+", metavar="MM")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--exclude-patients", type=Path, metavar="FILE", help="skip the patients listed")
    who.add_argument("--held-out-of", type=Path, metavar="CKPT", help="skip a checkpoint's validation patients")
    p.add_argument("--one-per-crop", action="store_true", help="one thickness drawn per crop, not all")
    p.add_argument("--random-phase", action="store_true", help="random slab phase per copy")
    p.add_argument("--min-ratio", type=float, default=1.0,
                   help="a thickness is used only above this many times the crop's slice spacing (default 1)")
    p.add_argument("--min-slices", type=int, default=3, help="thick slices a copy needs at least (default 3)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _excluded(args: argparse.Namespace) -> set[str]:
    if args.exclude_patients:
        from medseg.data.hybrid import read_patient_list

        return set(read_patient_list(args.exclude_patients))
    if args.held_out_of:
        from medseg.models import load_checkpoint_dict

        patients = (load_checkpoint_dict(args.held_out_of).get("split") or {}).get("val_patients")
        if not patients:
            raise InputError(args.held_out_of, "checkpoint records no split.val_patients")
        return set(patients)
    return set()


def make_thick_crops(args: argparse.Namespace) -> int:
    """Write the copies; returns how many."""
    images = sorted((args.lidc / "image").glob("*.nii*"))
    if not images:
        raise InputError(args.lidc / "image", "holds no .nii/.nii.gz crops")
    excluded, rng, written = _excluded(args), np.random.default_rng(args.seed), 0
    for path in images:
        if path.name[:14] in excluded:  # LIDC-IDRI-PPPP
            continue
        mask_path = args.lidc / "mask" / path.name
        if not mask_path.is_file():
            raise InputError(mask_path, "missing: every crop needs its mask")
        thicknesses = [float(rng.choice(args.thickness))] if args.one_per_crop else args.thickness
        image, mask = read_volume(path), read_volume(mask_path)
        for mm in thicknesses:
            if image.spacing[2] * args.min_ratio >= mm:
                continue
            step = mm / image.spacing[2]
            phase = int(rng.integers(0, max(int(step), 1))) if args.random_phase else 0
            if phase >= image.shape[2]:
                continue
            copy = thick_slice_copy(image, mask, mm, phase=phase, min_slices=args.min_slices)
            if copy is None:
                continue
            name = path.name.replace(".nii", f"_z{mm:g}.nii", 1)
            write_mask(np.rint(copy[0].array).astype(np.int16), copy[0], args.out / "image" / name, np.int16)
            write_mask(copy[1].array, copy[1], args.out / "mask" / name, np.uint8)
            written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        n = make_thick_crops(args)
    except InputError as exc:
        print(f"make_thick_crops: {exc}", file=sys.stderr)
        return 2
    print(f"{n} thick-slice crops in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
