"""Write a :class:`~medseg.inference.pipeline.Segmentation` to files, each atomically.

``<case>_nodules.nii.gz`` (instance labels), ``_lungs.nii.gz``, ``_report.json``,
``_nodules.csv``, ``_preview.png``, ``_probabilities.nii.gz`` when kept, and ``_seg.dcm`` for
DICOM input; the image files are ``.nrrd`` or ``.mha`` instead with ``output_format``. The written lung mask holds the found lesions too (a mass against the chest wall
belongs to the lung, though an air threshold leaves it out). A scan where no search ran (status ``no_lung``) gets its report and lung mask only:
no nodule mask or table that could be read as "0 nodules".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.io import write_mask
from medseg.io.writers import image_suffix
from medseg.report.tables import build_report, write_nodule_csv, write_report_json, write_seed_csv

if TYPE_CHECKING:
    from medseg.inference.pipeline import Segmentation


def write_outputs(
    seg: Segmentation,
    out_dir: str | os.PathLike[str],
    name: str,
    *,
    input_path: str = "",
    model: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    preview: bool = True,
    dicom_seg: bool = True,
    output_format: str = "nii.gz",
) -> dict[str, str]:
    """Write ``seg``'s files as ``out_dir/<name>_*``; returns {kind: path}.

    ``output_format`` (``nii.gz``, ``nrrd`` or ``mha``) is the format of the image files (nodule
    labels, lung mask, probabilities).
    """
    ext = image_suffix(output_format)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    volume = seg.volume
    outputs: dict[str, str] = {}
    warnings = list(seg.warnings)
    if seg.probability is not None:
        outputs["probabilities"] = str(write_mask(seg.probability_full(), volume,
                                                  out / f"{name}_probabilities{ext}", np.float32))
    if seg.searched:
        outputs["nodules"] = str(write_mask(seg.labels, volume, out / f"{name}_nodules{ext}", np.uint16))
    lungs = np.zeros(volume.shape, np.uint8) if seg.lungs is None else seg.lungs | (seg.labels > 0).astype(np.uint8)
    outputs["lungs"] = str(write_mask(lungs, volume, out / f"{name}_lungs{ext}", np.uint8))
    if preview and seg.searched:
        from medseg.report.preview import write_preview

        outputs["preview"] = str(write_preview(out / f"{name}_preview.png", volume, seg.labels, seg.nodules))
    if dicom_seg and seg.searched and volume.meta.get("format") == "dicom":
        _write_dicom_seg(seg, out / f"{name}_seg.dcm", outputs, warnings)
    if seg.searched:
        outputs["csv"] = str(write_nodule_csv(out / f"{name}_nodules.csv", seg.nodules))
    outputs["report"] = str(out / f"{name}_report.json")
    report = build_report(name, input_path, seg.nodules, geometry=volume.summary(), model=model or {},
                          settings=settings or {}, timings=seg.timings, warnings=warnings,
                          lung_volume_ml=seg.lung_volume_ml, outputs=outputs, status=seg.status)
    report["model"]["windows"] = {k: seg.stats.get(k) for k in ("windows_total", "windows_run")}
    if seg.seeds is not None:
        report["seeds"] = seg.seeds
        outputs["seeds_csv"] = str(write_seed_csv(out / f"{name}_seeds.csv", seg.seeds))
        report["outputs"] = outputs
    write_report_json(outputs["report"], report)
    return outputs


def _write_dicom_seg(seg: Segmentation, path: Path, outputs: dict[str, str], warnings: list[str]) -> None:
    """One segment per nodule, named from its record; what kept the SEG from being written (no
    nodule, a source without a FrameOfReferenceUID...) or had to be filled in becomes a warning."""
    from medseg import __version__
    from medseg.io.dicom_seg import NoduleSegment, SegNotWritten, write_dicom_seg

    notes: list[str] = []
    try:
        nodules = [NoduleSegment.from_record(n) for n in seg.nodules]
        outputs["dicom_seg"] = str(write_dicom_seg(seg.labels, seg.volume, path, software_version=__version__,
                                                   nodules=nodules, notes=notes))
    except SegNotWritten as exc:
        warnings.append(f"DICOM SEG not written: {exc.problem}")
    except Exception as exc:  # a SEG failure must not lose the other outputs
        warnings.append(f"DICOM SEG not written ({exc.__class__.__name__}: {exc})")
    warnings.extend(f"DICOM SEG: {note}" for note in notes)
