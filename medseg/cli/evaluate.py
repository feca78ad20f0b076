"""``medseg evaluate PRED GT [--prob PROB] [--json]``: segmentation and detection metrics."""

from __future__ import annotations

import argparse
import json

from medseg.cli._common import InOrder, add_input_option, gather_inputs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="compare predicted nodule masks with ground truth (file or folders)")
    p.add_argument("pred", nargs="?", action=InOrder, help="predicted mask file, or folder of <case>_nodules.nii.gz / <case>.nii.gz")
    p.add_argument("gt", nargs="?", action=InOrder, help="ground-truth mask file, or folder matched by case name")
    add_input_option(p, "PATH")
    p.add_argument("--prob", help="probability map file/folder (<case>_probabilities.nii.gz): adds FROC/CPM")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _fmt(v: object, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}{unit}"
    return f"{v}{unit}"


def run(args: argparse.Namespace) -> int:
    from medseg.evaluation.api import evaluate

    pred, gt = gather_inputs(args, "PRED and GT", count=2)
    res = evaluate(pred, gt, probabilities=args.prob, quiet=args.quiet or args.json)
    if args.json:
        print(json.dumps(res))
        return 0
    if res["n_cases"] > 1:
        print(f"{'case':<28} {'dice':>7} {'hd95 mm':>8} {'found':>6} {'fp':>4}")
        for c in res["cases"]:
            les = c["lesions"]
            print(f"{c['case'][:28]:<28} {_fmt(c['dice']):>7} {_fmt(c['hd95']):>8} "
                  f"{les['tp']}/{les['n_gt']:<4} {les['fp']:>4}")
        print()
    rows = [
        ("cases", res["n_cases"]),
        ("dice", _fmt(res["dice"])),
        ("iou", _fmt(res["iou"])),
        ("hd95", _fmt(res["hd95"], " mm")),
        ("assd", _fmt(res["assd"], " mm")),
        ("surface dice @1mm", _fmt(res["surface_dice_1mm"])),
        ("rel. volume error", _fmt(res["rel_volume_error"])),
        ("lesion sensitivity", f"{_fmt(res['lesion_sensitivity'])} ({res['n_detected']}/{res['n_gt_lesions']})"),
        ("FP per scan", _fmt(res["fp_per_scan"])),
    ]
    if "cpm" in res:
        rows.append(("CPM (LUNA16, interpolated)", _fmt(res["cpm"])))
        rows.append(("CPM (step curve)", _fmt(res["cpm_step"])))
    for k, v in rows:
        print(f"{k:>20}: {v}")
    return 0
