"""The per-scan report: JSON (everything) and CSV (one row per nodule), written atomically."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from medseg.io.atomic import write_json_atomic, write_text_atomic

#: CSV columns, in order. World coordinates are given in both conventions, named explicitly.
CSV_COLUMNS = (
    "id",
    "centre_lps_x_mm",
    "centre_lps_y_mm",
    "centre_lps_z_mm",
    "centre_ras_x_mm",
    "centre_ras_y_mm",
    "centre_ras_z_mm",
    "volume_mm3",
    "longest_diameter_mm",
    "axial_long_axis_mm",
    "axial_short_axis_mm",
    "mean_axial_diameter_mm",
    "equivalent_diameter_mm",
    "mean_hu",
    "max_hu",
    "mean_probability",
    "confidence",
    "solid_share",
    "type",
    "texture",
    "voxels",
)


def csv_rows(nodules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten measurement dicts into CSV rows."""
    rows = []
    for n in nodules:
        row = {k: n.get(k) for k in CSV_COLUMNS}
        for prefix, key in (("centre_lps", "centre_lps_mm"), ("centre_ras", "centre_ras_mm")):
            for axis, value in zip("xyz", n[key]):
                row[f"{prefix}_{axis}_mm"] = value
        rows.append(row)
    return rows


def write_nodule_csv(path: str | os.PathLike[str], nodules: list[dict[str, Any]]) -> Path:
    """One row per nodule (header only when there are none)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(nodules):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return write_text_atomic(path, buf.getvalue())


def build_report(
    case: str,
    input_path: str,
    nodules: list[dict[str, Any]],
    *,
    geometry: dict[str, Any],
    model: dict[str, Any],
    settings: dict[str, Any],
    timings: dict[str, float],
    warnings: list[str],
    lung_volume_ml: float | None,
    outputs: dict[str, str],
    status: str = "ok",
) -> dict[str, Any]:
    """The JSON report as a plain dict."""
    from medseg import __version__

    return {
        "case": case,
        "input": input_path,
        "software": {"name": "medseg", "version": __version__},
        "coordinate_convention": (
            "centre_lps_mm: DICOM/ITK patient LPS world mm (x to patient left, y to posterior, "
            "z to head); centre_ras_mm: the same point in NIfTI RAS (x, y negated)"
        ),
        "geometry": geometry,
        "model": model,
        "settings": settings,
        "lung_volume_ml": None if lung_volume_ml is None else round(lung_volume_ml, 1),
        "status": status,
        # None when no search ran (status no_lung): unknown, not zero
        "n_nodules": len(nodules) if status != "no_lung" else None,
        "nodules": nodules,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "warnings": warnings,
        "outputs": outputs,
    }


def write_report_json(path: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    return write_json_atomic(path, report)


#: seeds CSV columns (``medseg infer --seeds``): the given point, found or not, its nodule
SEED_COLUMNS = ("seed_id", "seed_lps_x_mm", "seed_lps_y_mm", "seed_lps_z_mm", "found", "distance_mm", "label",
                "volume_mm3", "longest_diameter_mm", "axial_long_axis_mm", "axial_short_axis_mm", "type", "mean_hu")


def write_seed_csv(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> Path:
    """One row per seed point, found or not."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(SEED_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        flat = {**r, **{f"seed_lps_{a}_mm": v for a, v in zip("xyz", r["seed_lps_mm"])}}
        writer.writerow({k: "" if flat.get(k) is None else flat.get(k) for k in SEED_COLUMNS})
    return write_text_atomic(path, buf.getvalue())
