"""``medseg batch INPUT -o OUT_DIR``: segment a folder tree or CSV manifest of scans, resumably."""

from __future__ import annotations

import argparse

from medseg.cli._common import (
    InOrder,
    add_inference_options,
    add_input_option,
    add_output_option,
    inference_settings,
)
from medseg.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="segment many scans (folder or CSV manifest), resumable, on local workers or Dask",
        description="Segment every scan under INPUT (NIfTI/NRRD/MHA/MHD files and DICOM CT series, searched "
        "recursively) or listed in a CSV manifest (columns: path[, case_id]). Re-running the same command "
        "resumes: finished cases are skipped. Writes OUT_DIR/<case>/..., OUT_DIR/summary.csv and "
        "OUT_DIR/nodules.csv. Takes every inference option of `medseg infer`. Exit code 1 when any case failed.",
    )
    p.add_argument("inputs", nargs="*", action=InOrder, metavar="INPUT",
                   help="folder or CSV manifest (optional when the pipeline names one)")
    add_input_option(p, "INPUT")
    add_output_option(p, "OUT_DIR", "output folder", aliases=("--out-dir",))
    p.add_argument("--workers", type=int, help="worker processes (default 1, or one per GPU; 0 = in this process)")
    p.add_argument("--scheduler", help="Dask scheduler address (tcp://host:8786) or 'local' for a local Dask "
                                       "cluster (needs medseg[cluster])")
    p.add_argument("--pipeline", help="pipeline YAML (see pipelines/); command-line options override it")
    add_inference_options(p, exit_no_lung=3)
    p.add_argument("--no-retry-failed", dest="retry_failed", action="store_false",
                   help="on resume, keep earlier failures instead of retrying them")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.batch.runner import run_batch

    inputs = list(getattr(args, "ordered_inputs", []))
    if len(inputs) > 1:
        raise InputError(None, f"batch takes one INPUT (a folder or CSV manifest), got {len(inputs)}: "
                               "list the scans in a CSV manifest instead")
    summary = run_batch(
        inputs[0] if inputs else None, args.output, workers=args.workers, scheduler=args.scheduler,
        pipeline=args.pipeline, quiet=args.quiet, retry_failed=args.retry_failed, **inference_settings(args),
    )
    if not args.quiet:
        resumed = f", {summary.n_skipped} from an earlier run" if summary.n_skipped else ""
        no_lung = f", {summary.n_no_lung} with no plausible lung (not searched)" if summary.n_no_lung else ""
        print(f"{summary.n_done} done{no_lung}, {summary.n_failed} failed{resumed}: {summary.summary_csv}")
    return 0 if summary.ok else 1
