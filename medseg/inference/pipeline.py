"""Whole-scan inference: read -> lung mask -> ROI sliding window -> postprocess -> report.

``Segmenter`` loads the model once and processes many scans (batch workers reuse it);
``infer()`` is the ``medseg.infer`` Python API the CLI wraps.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.io import Volume, read_volume, write_mask
from medseg.io import case_name as _strip_extension

log = logging.getLogger(__name__)


@dataclass
class InferenceSettings:
    """How ``medseg infer`` runs."""

    model: str | None = None  # checkpoint path; None = bundled model
    device: str = "auto"  # auto|cpu|cuda
    tta: bool = False
    overlap: float | None = None  # sliding-window overlap; None = the model plan's (0.5)
    min_confidence: float | None = None  # component mean-probability cut; None = the model plan's
    save_probabilities: bool = False
    lung_mask: bool = True  # False = "crop mode": no lung masking/ROI (for nodule crops)
    crf: bool | None = None  # None = PostprocessSettings default
    dicom_seg: bool = True  # write DICOM SEG for DICOM input
    preview: bool = True
    quiet: bool = False


@dataclass
class CaseResult:
    """What one scan produced."""

    case: str
    input: str
    outputs: dict[str, str]
    nodules: list[dict]
    n_nodules: int
    largest_diameter_mm: float | None
    warnings: list[str]
    timings: dict[str, float] = field(default_factory=dict)


class Segmenter:
    """Loads the model once; ``run`` segments one scan and writes its outputs."""

    def __init__(self, settings: InferenceSettings | None = None, **overrides: Any) -> None:
        from medseg.inference.predictor import Predictor

        self.settings = dataclasses.replace(settings or InferenceSettings(), **overrides)
        self.predictor = Predictor.from_checkpoint(self.settings.model, self.settings.device, tta=self.settings.tta,
                                                   overlap=self.settings.overlap)
        self.plan = self.predictor.plan

    # ----------------------------------------------------------------- pieces
    def lung_mask(self, volume: Volume) -> tuple[np.ndarray | None, float | None, list[str]]:
        """Lung mask (None in crop mode), its volume (mL) and warnings."""
        from medseg.inference.lung_mask import compute_lung_mask, ct_warning

        if not self.settings.lung_mask:
            note = ct_warning(volume)
            return None, None, [note] if note else []
        res = compute_lung_mask(volume)
        return res.mask, res.volume_ml, list(res.warnings)

    def predict_probabilities(self, volume: Volume) -> np.ndarray:
        """float32 nodule probability on the volume's own grid (honours ``settings.lung_mask``)."""
        mask, _, _ = self.lung_mask(volume)
        if mask is not None and not mask.any():
            return np.zeros(volume.shape, np.float32)
        return self.predictor.predict_roi(volume, mask).full(volume.shape)

    def _postprocess_settings(self):
        from medseg.postprocess import PostprocessSettings

        s = PostprocessSettings(threshold=float(self.plan.inference.threshold))
        if self.settings.crf is not None:
            s.crf = bool(self.settings.crf)
        if not self.settings.lung_mask:
            s.restrict_to_lung = False
        # Detection: only on whole scans. A crop is known to hold its nodule.
        if self.settings.lung_mask:
            cut = self.settings.min_confidence
            s.min_confidence = float(self.plan.inference.min_confidence if cut is None else cut)
            if self.plan.inference.candidate_classifier:
                from medseg.postprocess import CandidateClassifier

                s.candidate_classifier = CandidateClassifier.from_dict(self.plan.inference.candidate_classifier)
        return s

    # ----------------------------------------------------------------- one case
    def run(
        self, input_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], case_name: str | None = None
    ) -> CaseResult:
        """Segment one scan; writes ``<case>_*`` outputs to ``out_dir`` and returns the summary."""
        from medseg.postprocess import postprocess
        from medseg.report.measure import measure_nodules
        from medseg.report.tables import build_report, write_nodule_csv, write_report_json

        name = case_name or _case(input_path)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        volume = read_volume(input_path)
        timings["read_s"] = time.perf_counter() - t

        t = time.perf_counter()
        mask, lung_ml, warnings = self.lung_mask(volume)
        timings["lung_mask_s"] = time.perf_counter() - t

        labels = np.zeros(volume.shape, np.uint16)
        lung_roi, lung_box = None, None  # the lung mask's part in the ROI box, once ``mask`` is dropped
        probability_roi = None
        stats: dict[str, Any] = {}
        features: list[dict] = []
        if mask is not None and not mask.any():
            if not any("lung" in w for w in warnings):
                warnings.append("no lung found: no nodule search was run")
        else:
            t = time.perf_counter()
            bar = _progress(self.settings.quiet, self.predictor.count_windows(volume, mask), name)
            roi = self.predictor.predict_roi(volume, mask, progress=bar.update if bar else None)
            if bar:
                bar.close()
            timings["network_s"] = time.perf_counter() - t
            stats = roi.stats
            lung_roi = None if mask is None else np.ascontiguousarray(mask[roi.box])
            if mask is not None and int(np.count_nonzero(lung_roi)) == int(np.count_nonzero(mask)):
                # the ROI box holds the whole lung mask (the mask's box plus a margin): keep only that
                # part until the outputs and rebuild the full mask then, for a lower peak memory
                mask, lung_box = None, roi.box
            t = time.perf_counter()
            image_roi = np.asarray(volume.array[roi.box])
            lab_roi, features = postprocess(
                roi.probability,
                image_roi,
                volume.spacing,
                lung_mask=lung_roi,
                settings=self._postprocess_settings(),
            )
            labels[roi.box] = lab_roi
            probability_roi = roi
            del roi, lab_roi, image_roi
            timings["postprocess_s"] = time.perf_counter() - t

        t = time.perf_counter()
        nodules = measure_nodules(
            labels,
            volume,
            None if probability_roi is None else probability_roi.probability,
            None if probability_roi is None else probability_roi.box,
        )
        by_label = {int(f.get("label", i + 1)): f for i, f in enumerate(features)}
        for n in nodules:
            n["elongation"] = by_label.get(n["id"], {}).get("elongation")
            score = by_label.get(n["id"], {}).get("confidence")
            n["confidence"] = None if score is None else round(float(score), 4)
        outputs: dict[str, str] = {}
        if self.settings.save_probabilities:
            full = probability_roi.full(volume.shape) if probability_roi else np.zeros(volume.shape, np.float32)
            outputs["probabilities"] = str(write_mask(full, volume, out / f"{name}_probabilities.nii.gz", np.float32))
            del full
        probability_roi = None  # measured and written: free it before the other outputs (peak memory)
        outputs["nodules"] = str(write_mask(labels, volume, out / f"{name}_nodules.nii.gz", np.uint16))
        if mask is not None:
            lungs = mask.view(np.uint8) if mask.dtype == bool else mask
        else:
            lungs = np.zeros(volume.shape, np.uint8)
            if lung_box is not None:
                lungs[lung_box] = lung_roi
        outputs["lungs"] = str(write_mask(lungs, volume, out / f"{name}_lungs.nii.gz", np.uint8))
        del lungs, mask, lung_roi
        if self.settings.preview:
            from medseg.report.preview import write_preview

            outputs["preview"] = str(write_preview(out / f"{name}_preview.png", volume, labels, nodules))
        if self.settings.dicom_seg and volume.meta.get("format") == "dicom":
            from medseg import __version__
            from medseg.io.dicom_seg import write_dicom_seg

            try:
                outputs["dicom_seg"] = str(
                    write_dicom_seg(labels, volume, out / f"{name}_seg.dcm", software_version=__version__)
                )
            except Exception as exc:  # a SEG failure must not lose the other outputs
                warnings.append(f"DICOM SEG not written ({exc.__class__.__name__}: {exc})")
        outputs["csv"] = str(out / f"{name}_nodules.csv")
        outputs["report"] = str(out / f"{name}_report.json")
        write_nodule_csv(outputs["csv"], nodules)
        timings["outputs_s"] = time.perf_counter() - t
        timings["total_s"] = sum(v for k, v in timings.items())

        for w in warnings:
            log.warning("%s: %s", name, w)
        report = build_report(
            name,
            str(input_path),
            nodules,
            geometry=volume.summary(),
            model={
                "checkpoint": self.settings.model or "bundled",
                "plan_spacing": list(self.plan.spacing),
                "window": list(self.predictor.window),
                "overlap": self.predictor.overlap,
                "min_confidence": self._postprocess_settings().min_confidence,
                "device": str(self.predictor.device),
                "windows": {k: stats.get(k) for k in ("windows_total", "windows_run")},
            },
            settings=dataclasses.asdict(self.settings),
            timings=timings,
            warnings=warnings,
            lung_volume_ml=lung_ml,
            outputs=outputs,
        )
        write_report_json(outputs["report"], report)
        largest = max((n["longest_diameter_mm"] for n in nodules), default=None)
        return CaseResult(name, str(input_path), outputs, nodules, len(nodules), largest, warnings, timings)


def _case(path: str | os.PathLike[str]) -> str:
    p = Path(path)
    return p.name if p.is_dir() else _strip_extension(p)


def _progress(quiet: bool, total: int, name: str):
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{name} windows", unit="win", leave=False)


def infer(
    inputs: str | os.PathLike[str] | list[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    **settings: Any,
) -> list[CaseResult]:
    """Segment lung nodules in one or more scans (NIfTI/NRRD/MHA files or DICOM folders).

    ``settings`` are :class:`InferenceSettings` fields (``model``, ``device``, ``tta``...).
    Outputs go to ``out_dir`` as ``<case>_nodules.nii.gz``, ``<case>_lungs.nii.gz``,
    ``<case>_report.json``, ``<case>_nodules.csv``, ``<case>_preview.png`` and, for DICOM
    input, ``<case>_seg.dcm``.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    segmenter = Segmenter(InferenceSettings(**settings))
    names = [_case(p) for p in inputs]
    dupes = {n for n in names if names.count(n) > 1}
    results = []
    for i, path in enumerate(inputs):
        name = names[i] if names[i] not in dupes else f"{names[i]}_{i}"
        results.append(segmenter.run(path, out_dir, case_name=name))
    return results


__all__ = ["CaseResult", "InferenceSettings", "Segmenter", "infer"]
