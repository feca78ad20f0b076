"""``medseg info PATH [--json]``: size, spacing, orientation, origin, modality, intensity range."""

from __future__ import annotations

import argparse
import json

import numpy as np


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a scan's size, spacing, orientation and intensity range")
    p.add_argument("path", help="NIfTI/NRRD/MHA/MHD file or DICOM series folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.io import read_volume

    vol = read_volume(args.path)
    facts = vol.summary()
    facts["intensity_range"] = [float(np.min(vol.array)), float(np.max(vol.array))]
    facts["dtype"] = str(vol.array.dtype)
    facts["path"] = args.path
    if args.json:
        print(json.dumps(facts))
        return 0
    unit = " HU" if (vol.modality or "").upper() == "CT" else ""
    lines = [
        ("path", args.path),
        ("size", " x ".join(str(s) for s in facts["size"])),
        ("spacing", " x ".join(f"{s:g}" for s in facts["spacing"]) + " mm"),
        ("orientation", facts["orientation"]),
        ("origin", ", ".join(f"{o:.2f}" for o in facts["origin"]) + " mm (LPS)"),
        ("modality", facts["modality"] or "unknown"),
        ("intensity", f"{facts['intensity_range'][0]:g} to {facts['intensity_range'][1]:g}{unit} ({facts['dtype']})"),
    ]
    for key, value in lines:
        print(f"{key:>12}: {value}")
    return 0
