"""Place real LIDC nodules into real chest CT backgrounds ("hybrid" scans) and write a phantom-style set.

    python sample_data/make_hybrids.py --lidc DIR --background FILE [--background FILE ...] --out DIR
        --per-scan N --seed S [--count C] [--patients-from FILE | --exclude-patients FILE]
        [--region all|left|right|upper|lower] [--lung-mask FILE ...] [--avoid FILE ...]

    python sample_data/make_hybrids.py --lidc DIR --write-split TRAIN.txt TEST.txt [--split-fraction 0.2]
        [--split-seed 0]

For each background, ``--count`` scans are written with seeds ``S, S+1, ...`` as
``<background>_hybrid_s<seed>[_<region>].nii.gz`` with ``_nodules.nii.gz``, ``_lungs.nii.gz`` and
``.json`` beside it (the layout ``medseg train --data`` and ``medseg train-fp --data`` read). Each
scan draws ``--per-scan`` different crops from the allowed patients (seeded by the seed and the
background's name). ``--write-split`` writes two disjoint patient lists for ``--patients-from``,
so that training hybrids and benchmark hybrids never share a patient. Everything is done by
``medseg.data.hybrid``; this script only parses arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

try:
    from medseg.data import hybrid
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from medseg.data import hybrid

from medseg.errors import InputError
from medseg.io import Volume, case_name, read_volume


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lidc", required=True, type=Path, help="LIDC crop folder (image/, mask/, nodules.csv)")
    p.add_argument("--background", action="append", type=Path, default=[], metavar="FILE",
                   help="background chest CT (repeat for several)")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--per-scan", type=int, default=6, help="nodules drawn per scan (default 6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first scan of each background (default 0)")
    p.add_argument("--count", type=int, default=1, help="scans per background, seeds S, S+1, ... (default 1)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--patients-from", type=Path, metavar="FILE", help="draw only from the patients listed")
    who.add_argument("--exclude-patients", type=Path, metavar="FILE", help="never draw the patients listed")
    p.add_argument("--region", choices=hybrid.REGIONS, default="all",
                   help="keep nodules in the left/right lung or upper/lower half (default all)")
    p.add_argument("--kinds", nargs="+", choices=hybrid.KINDS, default=list(hybrid.KINDS),
                   help="placement kinds (default all three, in equal shares)")
    p.add_argument("--lung-mask", action="append", type=Path, default=[], metavar="FILE",
                   help="lung mask of each background, in the same order (default: computed)")
    p.add_argument("--avoid", action="append", type=Path, default=[], metavar="FILE",
                   help="mask of each background's own lesions to keep clear of, in the same order")
    p.add_argument("--min-diameter", type=float, default=0.0, help="smallest LIDC diameter_mm drawn")
    p.add_argument("--max-diameter", type=float, default=float("inf"), help="largest LIDC diameter_mm drawn")
    p.add_argument("--no-augment", action="store_true", help="no random axial rotation or mirroring")
    p.add_argument("--no-lungs", action="store_true", help="do not write <name>_lungs.nii.gz")
    p.add_argument("--write-split", nargs=2, type=Path, metavar=("TRAIN", "TEST"),
                   help="write disjoint patient lists (one id a line) for --patients-from")
    p.add_argument("--split-fraction", type=float, default=0.2, help="share of nodules in TEST (default 0.2)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the patient split (default 0)")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    return p


def _pool(args: argparse.Namespace, nodules: list[hybrid.LidcNodule]) -> list[hybrid.LidcNodule]:
    include = hybrid.read_patient_list(args.patients_from) if args.patients_from else None
    exclude = hybrid.read_patient_list(args.exclude_patients) if args.exclude_patients else None
    pool = hybrid.filter_by_patients(nodules, include, exclude)
    pool = [n for n in pool if not (n.diameter_mm < args.min_diameter or n.diameter_mm > args.max_diameter)]
    if not pool:
        raise InputError(args.lidc, "no LIDC crops within the diameter limits")
    return pool


def _optional_masks(paths: list[Path], backgrounds: list[Path], what: str) -> list[Path | None]:
    if not paths:
        return [None] * len(backgrounds)
    if len(paths) != len(backgrounds):
        raise InputError(paths[0], f"give one {what} per --background ({len(paths)} for {len(backgrounds)})")
    return list(paths)


def _mask_array(path: Path | None, background: Volume, what: str) -> np.ndarray | None:
    if path is None:
        return None
    vol = read_volume(path)
    if vol.shape != background.shape:
        raise InputError(path, f"{what} shape {vol.shape} differs from the background {background.shape}")
    return vol.array > 0


def _write_split(args: argparse.Namespace, nodules: list[hybrid.LidcNodule]) -> None:
    split = hybrid.split_by_patient(nodules, args.split_fraction, args.split_seed)
    hybrid.write_patient_list(args.write_split[0], split.train)
    hybrid.write_patient_list(args.write_split[1], split.test)
    if not args.quiet:
        print(f"{args.write_split[0]}: {len(split.train)} patients; {args.write_split[1]}: {len(split.test)} patients")


def _make(args: argparse.Namespace, pool: list[hybrid.LidcNodule]) -> None:
    lung_paths = _optional_masks(args.lung_mask, args.background, "--lung-mask")
    avoid_paths = _optional_masks(args.avoid, args.background, "--avoid")
    for bg_path, lung_path, avoid_path in zip(args.background, lung_paths, avoid_paths):
        background = read_volume(bg_path)
        lung = _mask_array(lung_path, background, "lung mask")
        avoid = _mask_array(avoid_path, background, "avoid mask")
        stem = case_name(bg_path)
        for n in range(args.count):
            t0 = time.perf_counter()
            seed = args.seed + n
            chosen = hybrid.sample_nodules(pool, args.per_scan, seed, salt=bg_path.name)
            scan = hybrid.build_hybrid(background, chosen, seed, lung_mask=lung, region=args.region,
                                       kinds=args.kinds, avoid=avoid, augment=not args.no_augment,
                                       background_name=bg_path.name)
            name = f"{stem}_hybrid_s{seed}" + ("" if args.region == "all" else f"_{args.region}")
            paths = hybrid.write_hybrid(scan, args.out, name, lungs=not args.no_lungs)
            if not args.quiet:
                desc = ", ".join(f"{p.diameter_mm:.1f} mm {p.texture_class} {p.kind}" for p in scan.nodules)
                print(f"{paths.ct}  seed {seed}  {time.perf_counter() - t0:.1f} s  {len(scan.nodules)} nodules: {desc}")
                for s in scan.skipped:
                    print(f"  skipped {s}")


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.count < 1 or args.per_scan < 1:
        p.error("--count and --per-scan must be at least 1")
    if args.background and args.out is None:
        p.error("--out is required with --background")
    if not args.background and not args.write_split:
        p.error("give --background FILE (and --out DIR), or --write-split TRAIN TEST")
    try:
        nodules = hybrid.load_lidc_nodules(args.lidc)
        if args.write_split:
            _write_split(args, nodules)
        if args.background:
            _make(args, _pool(args, nodules))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
