"""``medseg infer SCAN [SCAN ...] -o OUT_DIR``: nodule masks, lung masks and reports per scan."""

from __future__ import annotations

import argparse

from medseg.cli._common import (
    InOrder,
    add_inference_options,
    add_input_option,
    add_output_option,
    gather_inputs,
    inference_settings,
    require_output,
)
from medseg.errors import InputError

#: exit code when a CT held no plausible lung and no search was run (bad input is 2)
EXIT_NO_LUNG = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="segment lung nodules in CT scans (NIfTI/NRRD/MHA files or DICOM series folders)",
        description="Segment lung nodules; writes <case>_nodules.nii.gz, <case>_lungs.nii.gz, "
        "<case>_report.json, <case>_nodules.csv, <case>_preview.png (and <case>_seg.dcm for DICOM input). "
        "With several scans a bad one does not stop the others: they are written, then the command "
        "exits with code 2 and one line naming each scan that failed.",
    )
    p.add_argument("inputs", nargs="*", action=InOrder, metavar="SCAN", help="scan file or DICOM series folder")
    add_input_option(p, "SCAN")
    add_output_option(p, "OUT_DIR", "output folder (created if missing)", aliases=("--out-dir",), required=True)
    add_inference_options(p, EXIT_NO_LUNG)
    p.add_argument("--lung-mask", dest="lung_mask_files", action="append", default=None, metavar="MASK",
                   help="a precomputed lung mask on the scan's grid, used instead of computing one "
                        "(with several scans: one --lung-mask per scan, in order)")
    p.add_argument("--seeds", default=None, metavar="POINTS.csv",
                   help="known-nodule volumetry: segment the nodule at each point instead of searching; the CSV "
                        "header names the convention: x_lps_mm,y_lps_mm,z_lps_mm or x_ras_mm,y_ras_mm,z_ras_mm "
                        "(world) or i,j,k (voxels), optional id; writes <case>_seeds.csv (found or not per point)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-case summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.errors import ScansFailed
    from medseg.inference.pipeline import infer

    inputs = gather_inputs(args, "one or more scans")
    out_dir = require_output(args)
    if args.lung_mask_files and args.lung_mask is False:
        raise InputError(None, "--lung-mask and --crop-mode exclude each other (a crop has no lung mask)")
    try:
        results = infer(inputs, out_dir, lung_masks=args.lung_mask_files, seeds=args.seeds, quiet=args.quiet,
                        **inference_settings(args))
    except ScansFailed as exc:  # the good scans were written: say so, then the one-line summary
        _print_results(exc.results, args.quiet)
        raise
    _print_results(results, args.quiet)
    return EXIT_NO_LUNG if any(r.status == "no_lung" for r in results) else 0


def _print_results(results: list, quiet: bool) -> None:
    for r in results:
        if r.status == "no_lung":  # always said, --quiet or not: this is not "0 nodules"
            print(f"{r.case}: NO PLAUSIBLE LUNG in this CT: no nodule search was run -> {r.outputs['report']}")
        elif r.seeds_found is not None and not quiet:
            print(f"{r.case}: {r.seeds_found} of {r.n_seeds} seed points have a nodule -> {r.outputs['seeds_csv']}")
        elif not quiet:
            size = "" if r.largest_diameter_mm is None else f", largest {r.largest_diameter_mm:.1f} mm"
            body = " (no plausible lung: the whole image was searched)" if r.status == "body_search" else ""
            print(f"{r.case}: {r.n_nodules} nodule(s){size}{body} in {r.timings.get('total_s', 0):.1f} s "
                  f"-> {r.outputs['report']}")
        if not quiet:
            for w in r.warnings:
                print(f"  warning: {w}")
