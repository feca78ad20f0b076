"""Cohort tables: ``OUT/summary.csv`` (one row per case) and ``OUT/nodules.csv`` (every nodule).

Both are rebuilt from the per-case records (the done/failed markers), so they are right after a
resume, and written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from medseg.io.atomic import write_text_atomic

SUMMARY_COLUMNS = ["case_id", "input", "status", "n_nodules", "largest_diameter_mm", "runtime_s", "error",
                   "warnings", "output_dir"]
_AXES = ("x", "y", "z")


def summary_row(record: dict[str, Any]) -> dict[str, Any]:
    """One ``summary.csv`` row from a case record."""
    diameter = record.get("largest_diameter_mm")
    return {
        "case_id": record["case_id"],
        "input": record.get("input", ""),
        "status": record["status"],
        "n_nodules": "" if record["status"] != "done" else int(record.get("n_nodules") or 0),
        "largest_diameter_mm": "" if diameter is None else round(float(diameter), 2),
        "runtime_s": round(float(record.get("runtime_s") or 0.0), 2),
        "error": record.get("error") or "",
        "warnings": "; ".join(record.get("warnings") or []),
        "output_dir": record.get("output_dir") or "",
    }


def nodule_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat ``nodules.csv`` rows of one case: 3-vectors become ``<key>_x/_y/_z`` columns."""
    rows = []
    for nodule in record.get("nodules") or []:
        row: dict[str, Any] = {"case_id": record["case_id"]}
        for key, value in nodule.items():
            if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
                row.update({f"{key}_{axis}": v for axis, v in zip(_AXES, value)})
            elif isinstance(value, (list, tuple, dict)):
                row[key] = json.dumps(value)
            else:
                row[key] = value
        rows.append(row)
    return rows


def write_tables(out_dir: str | Path, records: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``nodules.csv`` for ``records`` (in the given order)."""
    out = Path(out_dir)
    summary = _csv([summary_row(r) for r in records], SUMMARY_COLUMNS)
    rows = [row for r in records if r["status"] == "done" for row in nodule_rows(r)]
    columns = ["case_id"]
    for row in rows:
        columns += [k for k in row if k not in columns]
    nodules = _csv(rows, columns)
    return write_text_atomic(out / "summary.csv", summary), write_text_atomic(out / "nodules.csv", nodules)


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
