"""``medseg info SCAN [SCAN ...] [--json]``: size, spacing, orientation, origin, modality, intensity range."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from medseg.cli._common import InOrder, add_input_option, gather_inputs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a scan's size, spacing, orientation and intensity range")
    p.add_argument("paths", nargs="*", action=InOrder, metavar="SCAN", help="NIfTI/NRRD/MHA/MHD file or DICOM series folder")
    add_input_option(p, "SCAN")
    p.add_argument("--json", action="store_true", help="print one JSON object (one per line for several scans)")
    p.set_defaults(func=run)


def facts_of(path: str) -> dict[str, Any]:
    """What ``medseg info`` shows about one scan, as JSON-able values."""
    from medseg.io import read_volume

    vol = read_volume(path)
    facts = vol.summary()
    facts["intensity_range"] = [float(np.min(vol.array)), float(np.max(vol.array))]
    facts["dtype"] = str(vol.array.dtype)
    facts["path"] = path
    return facts


def run(args: argparse.Namespace) -> int:
    paths = gather_inputs(args, "a scan")
    for n, path in enumerate(paths):
        facts = facts_of(path)
        if args.json:
            print(json.dumps(facts))
            continue
        if n:
            print()
        unit = " HU" if (facts["modality"] or "").upper() == "CT" else ""
        lines = [
            ("path", path),
            ("size", " x ".join(str(s) for s in facts["size"])),
            ("spacing", " x ".join(f"{s:g}" for s in facts["spacing"]) + " mm"),
            ("orientation", facts["orientation"]),
            ("origin", ", ".join(f"{o:.2f}" for o in facts["origin"]) + " mm (LPS)"),
            ("modality", facts["modality"] or "unknown"),
            ("intensity", f"{facts['intensity_range'][0]:g} to {facts['intensity_range'][1]:g}{unit} "
                          f"({facts['dtype']})"),
        ]
        for key, value in lines:
            print(f"{key:>12}: {value}")
    return 0
