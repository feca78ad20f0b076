"""``medseg measure SCAN MASK [--json] [-o OUT.csv]``: per-nodule measurements of an existing mask."""

from __future__ import annotations

import argparse
import dataclasses
import json

from medseg.cli._common import InOrder, add_input_option, add_output_option, gather_inputs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "measure",
        help="measure the nodules of an existing mask (any tool's) on its scan",
        description="Per-nodule volume (mm3), 3D longest diameter and the axial long and short axes "
        "(Lung-RADS/RECIST) of a nodule mask on its scan's grid, in world mm. A label map gives one nodule "
        "per value (ids kept); a binary mask one per 26-connected component. Columns as medseg infer's CSV.",
    )
    p.add_argument("scan", nargs="?", action=InOrder, help="the scan the mask was drawn on (file or DICOM series folder)")
    p.add_argument("mask", nargs="?", action=InOrder, help="binary mask or label map on the scan's grid")
    add_input_option(p, "PATH")
    add_output_option(p, "OUT.csv", "write the nodule table to this CSV file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.report.measure_mask import measure_mask, write_measurements_csv

    scan, mask = gather_inputs(args, "SCAN and MASK", count=2)
    result = measure_mask(scan, mask)
    if args.output:
        write_measurements_csv(args.output, result)
    if args.json:
        print(json.dumps(dataclasses.asdict(result)))
        return 0
    how = "label values" if result.instances == "labels" else "26-connected components"
    print(f"{len(result.nodules)} nodule(s) in {mask} (by {how})")
    if result.nodules:
        print(f"{'id':>5} {'volume mm3':>11} {'longest mm':>10} {'axial long':>10} {'axial short':>11}  type")
    for n in result.nodules:
        print(f"{n['id']:>5} {n['volume_mm3']:>11.1f} {n['longest_diameter_mm']:>10.1f} "
              f"{n['axial_long_axis_mm']:>10.1f} {n['axial_short_axis_mm']:>11.1f}  {n['type']}")
    if args.output:
        print(f"-> {args.output}")
    return 0
