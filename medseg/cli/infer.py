"""``medseg infer INPUT [INPUT ...] -o OUT_DIR``: nodule masks, lung masks and reports per scan."""

from __future__ import annotations

import argparse

#: exit code when a CT held no plausible lung and no search was run (bad input is 2)
EXIT_NO_LUNG = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="segment lung nodules in CT scans (NIfTI/NRRD/MHA files or DICOM series folders)",
        description="Segment lung nodules; writes <case>_nodules.nii.gz, <case>_lungs.nii.gz, "
        "<case>_report.json, <case>_nodules.csv, <case>_preview.png (and <case>_seg.dcm for DICOM input).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="scan file or DICOM series folder")
    p.add_argument("-o", "--out-dir", required=True, help="output folder (created if missing)")
    p.add_argument("--model", default=None, help="checkpoint (.pt); default: the bundled lung-nodule model")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                   help="network precision (default: the model's): auto = bf16 where the CPU (AVX512_BF16/AMX) "
                        "or GPU runs it natively, else fp32; fp16 is for CUDA")
    p.add_argument("--tta", action="store_true", help="average over flipped copies (8x slower)")
    p.add_argument("--overlap", type=_overlap, default=None,
                   help="sliding-window overlap in [0, 1) (default: the model's, 0.5); lower is faster but "
                        "changes the masks")
    p.add_argument("--min-confidence", type=_unit, default=None,
                   help="drop nodules whose confidence (the model's candidate classifier, else the mean "
                        "probability) is below this, in [0, 1] (default: the model's; 0 keeps every "
                        "candidate, e.g. for a reader who wants high sensitivity)")
    p.add_argument("--save-probabilities", action="store_true", help="also write <case>_probabilities.nii.gz")
    crf = p.add_mutually_exclusive_group()
    crf.add_argument("--crf", dest="crf", action="store_true", default=None, help="refine with a 3D dense CRF")
    crf.add_argument("--no-crf", dest="crf", action="store_false", help="no CRF refinement")
    p.add_argument(
        "--crop-mode",
        action="store_true",
        help="input is a nodule crop, not a whole chest CT: no lung mask, the whole image is searched",
    )
    p.add_argument("--on-no-lung", choices=["fail", "search_body"], default="fail",
                   help="a CT with no plausible lung (under 100 mL): 'fail' reports it (status no_lung, "
                        f"exit code {EXIT_NO_LUNG}, no nodule search; default) or 'search_body' searches the "
                        "whole image instead and says so")
    p.add_argument("--no-masses", action="store_true",
                   help="skip the coarse second pass that finds masses of 30-100 mm")
    p.add_argument("--no-preview", action="store_true", help="do not write the preview PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-case summary")
    p.set_defaults(func=run)


def _overlap(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"overlap must be in [0, 1), got {text}")
    return value


def _unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"min-confidence must be in [0, 1], got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    from medseg.inference.pipeline import infer

    results = infer(
        args.inputs,
        args.out_dir,
        model=args.model,
        device=args.device,
        tta=args.tta,
        overlap=args.overlap,
        min_confidence=args.min_confidence,
        save_probabilities=args.save_probabilities,
        crf=args.crf,
        lung_mask=not args.crop_mode,
        preview=not args.no_preview,
        quiet=args.quiet,
        on_no_lung=args.on_no_lung,
        masses=not args.no_masses,
        precision=args.precision,
    )
    for r in results:
        if r.status == "no_lung":  # always said, --quiet or not: this is not "0 nodules"
            print(f"{r.case}: NO PLAUSIBLE LUNG in this CT: no nodule search was run -> {r.outputs['report']}")
        elif not args.quiet:
            size = "" if r.largest_diameter_mm is None else f", largest {r.largest_diameter_mm:.1f} mm"
            body = " (no plausible lung: the whole image was searched)" if r.status == "body_search" else ""
            print(f"{r.case}: {r.n_nodules} nodule(s){size}{body} in {r.timings.get('total_s', 0):.1f} s "
                  f"-> {r.outputs['report']}")
        if not args.quiet:
            for w in r.warnings:
                print(f"  warning: {w}")
    return EXIT_NO_LUNG if any(r.status == "no_lung" for r in results) else 0
