"""``medseg train-fp -o OUT.pt``: fit a model's second-stage candidate classifier (FP reduction)."""

from __future__ import annotations

import argparse
import json

from medseg.cli._common import add_output_option, device_name, require_output, window_size
from medseg.postprocess.candidates import COARSE_AGREEMENT


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-fp",
        help="fit the false-positive-reduction stage of a trained model on whole scans",
        description="Runs the model over whole scans with nodule masks (generated phantoms and/or folders of "
        "<name>.nii.gz + <name>_nodules.nii.gz), fits a candidate classifier on the components it finds and "
        "chooses the confidence cut for --target-fp false positives per scan on out-of-fold scores. Writes a "
        "copy of the checkpoint whose plan carries both; `medseg infer --model OUT.pt` applies them.",
    )
    add_output_option(p, "OUT.pt", "checkpoint to write (.pt)", aliases=("--out",), required=True)
    p.add_argument("--model", default=None, help="checkpoint to start from (default: the bundled model)")
    p.add_argument("--data", "-i", "--input", dest="data", action="append", default=[], metavar="DIR",
                   help="folder of scans with _nodules masks (repeatable)")
    p.add_argument("--phantoms", type=int, default=0, help="also generate this many whole-scan phantoms")
    p.add_argument("--seed", type=int, default=3000, help="seed of the first phantom (default 3000)")
    p.add_argument("--shape", type=int, nargs=3, default=(224, 224, 112), metavar=("I", "J", "K"))
    p.add_argument("--spacing", type=float, nargs=3, default=(1.4, 1.4, 2.5), metavar=("SI", "SJ", "SK"))
    p.add_argument("--target-fp", type=float, default=1.0, help="false positives per scan the cut aims at (default 1)")
    p.add_argument("--min-mm", type=float, default=5.0, help="smallest nodule that counts for sensitivity (default 5)")
    p.add_argument("--window", type=window_size, default=None, metavar="X,Y,Z",
                   help="sliding-window size in plan voxels to fit for (default: the model plan's); kept in the output's plan")
    p.add_argument("--overlap", type=float, default=None,
                   help="sliding-window overlap to fit for (default: the model plan's); kept in the output's plan")
    p.add_argument("--coarse-agreement", type=float, default=COARSE_AGREEMENT, metavar="A",
                   help="multiply each candidate's P(nodule) by the coarse pass's peak probability over it to the "
                        "power A (default %(default)s; 0 = off)")
    p.add_argument("--work-dir", default=None, help="keep per-scan outputs here (resumable); default: a temp folder")
    p.add_argument("--device", type=device_name, default="auto", metavar="auto|cpu|cuda|cuda:N")
    p.add_argument("--quiet", action="store_true", help="only the result line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from medseg.training.fp_reduction import train_fp_reduction

    out = require_output(args)
    problem = ("give --data folders or --phantoms 2 or more" if not args.data and args.phantoms < 2
               else "--target-fp must be positive" if args.target_fp <= 0
               else "--coarse-agreement must be 0 or more" if args.coarse_agreement < 0
               else None)
    if problem:
        print(f"medseg train-fp: {problem}", file=sys.stderr)
        return 2
    res = train_fp_reduction(
        args.model, out, data=args.data, phantoms=args.phantoms, seed=args.seed, shape=tuple(args.shape),
        spacing=tuple(args.spacing), target_fp_per_scan=args.target_fp, min_mm=args.min_mm,
        work_dir=args.work_dir, device=args.device, window=args.window, overlap=args.overlap,
        coarse_agreement=args.coarse_agreement,
    )
    print(json.dumps({"out": out, **res.report}))
    return 0
