"""Generate chest-CT phantoms with ground truth (a "phantom set") into a folder.

    python sample_data/generate.py --out DIR --count N --seed S [--shape I J K] [--spacing SI SJ SK]

Phantom ``n`` (1-based) is written as ``<prefix>_<nn>.nii.gz`` with ``_nodules.nii.gz``,
``_lungs.nii.gz`` and ``.json`` beside it, from seed ``S + (n - 1) * step``: the same command always
writes the same files. Everything is done by ``medseg.data.phantom``; this script only parses
arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    from medseg.data.phantom import make_phantom, save_phantom, subsolid_nodules
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from medseg.data.phantom import make_phantom, save_phantom, subsolid_nodules


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--count", type=int, default=1, help="number of phantoms (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first phantom (default 0)")
    p.add_argument("--seed-step", type=int, default=1, help="seed increment between phantoms (default 1)")
    p.add_argument("--nodules", choices=("random", "subsolid"), default="random",
                   help="nodule set: random (4-8 of every kind and size) or subsolid (8, mostly small "
                        "ground-glass and part-solid: what models miss)")
    p.add_argument("--shape", type=int, nargs=3, default=(256, 256, 128), metavar=("I", "J", "K"))
    p.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 2.0), metavar=("SI", "SJ", "SK"),
                   help="voxel size in mm (default 1 1 2)")
    p.add_argument("--orientation", default="LPS", help="array orientation code, e.g. LPS (default) or RAS")
    p.add_argument("--noise-hu", type=float, default=25.0, help="CT noise standard deviation (default 25)")
    p.add_argument("--prefix", default="chest_phantom", help="file name prefix (default chest_phantom)")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be at least 1")

    from tqdm import tqdm

    bar = tqdm(range(args.count), unit="phantom", disable=args.quiet or not sys.stderr.isatty())
    for n in bar:
        t0 = time.perf_counter()
        seed = args.seed + n * args.seed_step
        specs = subsolid_nodules(seed) if args.nodules == "subsolid" else None
        while True:
            try:
                ph = make_phantom(seed=seed, shape=args.shape, spacing=args.spacing, nodules=specs,
                                  orientation=args.orientation, noise_hu=args.noise_hu)
                break
            except ValueError:  # an explicit nodule found no room: place one fewer
                if not specs or len(specs) == 1:
                    raise
                specs = specs[:-1]
        name = f"{args.prefix}_{n + 1:02d}"
        paths = save_phantom(ph, args.out, name)
        if not args.quiet:
            nods = ph.info["nodules"]
            desc = ", ".join(f"{d['diameter_mm']:.1f} mm {d['kind']} {d['location']}" for d in nods)
            bar.write(f"{paths['ct']}  seed {seed}  {time.perf_counter() - t0:.1f} s  "
                      f"{len(nods)} nodules: {desc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
