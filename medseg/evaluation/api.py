"""``evaluate()``: compare predicted nodule masks with ground truth, one file or matching folders.

Folders are matched by case name. Ground-truth folders are either plain (``<case>.nii.gz``) or
phantom sets (``<case>_nodules.nii.gz`` beside ``<case>.nii.gz``; only the ``_nodules`` files are
read). Predictions are found as ``<case>_nodules.<ext>`` (what ``medseg infer`` writes) or under
the ground truth's own name; probabilities as ``<case>_probabilities.<ext>`` or the same name.
Masks are binarised (> 0); instance labels are kept for lesion matching. Either file of a pair
may be a DICOM SEG (read as a label map, segment k -> label k), placed on the other's grid; folders
are matched on image files only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.evaluation.froc import froc
from medseg.evaluation.lesions import match_lesions
from medseg.evaluation.metrics import overlap_metrics
from medseg.io import Volume, case_name, is_image_file, read_volume

PathLike = str | os.PathLike[str]

#: overlap metrics averaged over cases in a folder summary
_MEAN_KEYS = ("dice", "iou", "hd95", "assd", "surface_dice_1mm", "rel_volume_error")
_SKIP_SUFFIXES = ("_lungs", "_probabilities", "_seg", "_preview", "_report")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def _gt_cases(folder: Path) -> dict[str, Path]:
    files = _images(folder)
    labelled = [p for p in files if case_name(p).endswith("_nodules")]
    if labelled:  # phantom set: CTs sit beside their label maps
        return {case_name(p)[: -len("_nodules")]: p for p in labelled}
    return {case_name(p): p for p in files if not case_name(p).endswith(_SKIP_SUFFIXES)}


def _find(folder: Path, case: str, suffix: str) -> Path | None:
    by_name = {case_name(p): p for p in _images(folder)}
    return by_name.get(case + suffix) or by_name.get(case)


def _check_grid(vol: Volume, path: Path, ref: Volume, ref_path: Path) -> None:
    if vol.shape != ref.shape:
        raise InputError(path, f"shape {vol.shape} differs from ground truth {ref_path} {ref.shape}")
    if not vol.same_grid(ref):
        raise InputError(
            path,
            f"grid (spacing {tuple(round(s, 4) for s in vol.spacing)}, origin "
            f"{tuple(round(o, 2) for o in vol.origin)}) differs from ground truth {ref_path} "
            f"(spacing {tuple(round(s, 4) for s in ref.spacing)}, origin {tuple(round(o, 2) for o in ref.origin)})",
        )


def _place_seg(gt: Volume, gt_path: Path, pred: Volume, pred_path: Path) -> tuple[Volume, Volume]:
    """A DICOM SEG stores only its segmented frames: place it on the other file's grid (voxel for
    voxel, :func:`medseg.io.dicom_seg.place_on_grid`) before the grids are compared."""
    from medseg.io.dicom_seg import place_on_grid

    if gt.same_grid(pred):
        return gt, pred
    if gt.meta.get("format") == "dicom-seg":
        return place_on_grid(gt, pred, gt_path), pred
    if pred.meta.get("format") == "dicom-seg":
        return gt, place_on_grid(pred, gt, pred_path)
    return gt, pred


def evaluate_case(
    pred_path: PathLike, gt_path: PathLike, prob_path: PathLike | None = None, connectivity: int = 26
) -> dict[str, Any]:
    """Metrics of one prediction against its ground truth (files on the same grid; a DICOM SEG is
    placed on the other file's grid)."""
    gt_path, pred_path = Path(gt_path), Path(pred_path)
    gt = read_volume(gt_path)
    pred = read_volume(pred_path)
    gt, pred = _place_seg(gt, gt_path, pred, pred_path)
    _check_grid(pred, pred_path, gt, gt_path)
    for vol, path in ((gt, gt_path), (pred, pred_path)):
        if vol.array.min() < 0:
            raise InputError(path, "has negative values: not a mask or label map (is it the CT image?)")
    prob = None
    if prob_path is not None:
        pv = read_volume(prob_path)
        _check_grid(pv, Path(prob_path), gt, gt_path)
        prob = np.asarray(pv.array, dtype=np.float32)
        if prob.min() < 0 or prob.max() > 1:
            raise InputError(prob_path, f"probabilities must lie in [0, 1], found {prob.min():g}..{prob.max():g}")
    result: dict[str, Any] = {"case": case_name(gt_path).removesuffix("_nodules"),
                              "pred": str(pred_path), "gt": str(gt_path)}
    result.update(overlap_metrics(pred.array > 0, gt.array > 0, gt.spacing))
    les = match_lesions(_labels(pred.array), _labels(gt.array), gt.spacing, prob, connectivity)
    result["lesions"] = les
    return result


def _labels(a: np.ndarray) -> np.ndarray:
    # float-stored label maps (some writers) -> integers, so instance ids survive
    return a if np.issubdtype(a.dtype, np.integer) else np.rint(a).astype(np.int64)


def _mean(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def summarise(cases: list[dict[str, Any]], with_probabilities: bool) -> dict[str, Any]:
    """Folder-level summary: mean overlap metrics, pooled lesion sensitivity, FP/scan, FROC."""
    out: dict[str, Any] = {"n_cases": len(cases)}
    for k in _MEAN_KEYS:
        out[k] = _mean([c[k] for c in cases])
    out["hd95_undefined_cases"] = sum(c["hd95"] is None for c in cases)
    n_gt = sum(c["lesions"]["n_gt"] for c in cases)
    tp = sum(c["lesions"]["tp"] for c in cases)
    fp = sum(c["lesions"]["fp"] for c in cases)
    out.update({
        "n_gt_lesions": n_gt,
        "n_detected": tp,
        "n_false_positives": fp,
        "lesion_sensitivity": tp / n_gt if n_gt else None,
        "fp_per_scan": fp / len(cases) if cases else None,
    })
    if with_probabilities:
        scores, hits = [], []
        for i, c in enumerate(cases):
            for cand in c["lesions"]["candidates"]:
                scores.append(cand["score"])
                hits.append([(i, g) for g in cand["hits"]])
        fr = froc(scores, hits, n_gt, len(cases))
        out["cpm"] = fr["cpm"]  # LUNA16 (interpolated); the step-curve figure is out["froc"]["cpm_step"]
        out["cpm_step"] = fr["cpm_step"]
        out["cpm_definition"] = fr["cpm_definition"]
        out["froc"] = fr
    return out


def evaluate(
    pred: PathLike,
    gt: PathLike,
    probabilities: PathLike | None = None,
    connectivity: int = 26,
    quiet: bool = False,
) -> dict[str, Any]:
    """Evaluate a predicted mask file against a ground-truth file, or matching folders.

    Returns mean ``dice``, ``iou``, ``hd95`` (mm), ``assd`` (mm), ``surface_dice_1mm``,
    ``rel_volume_error``; ``lesion_sensitivity``, ``fp_per_scan``; ``cpm`` and ``froc`` when
    probabilities are given; and ``cases`` (per-case metrics and lesion matches).
    Raises :class:`InputError` for missing files, unmatched cases or differing grids.
    """
    pred, gt = Path(pred), Path(gt)
    prob = Path(probabilities) if probabilities is not None else None
    for p in (pred, gt, prob):
        if p is not None and not p.exists():
            raise InputError(p, "does not exist")
    if gt.is_dir() != pred.is_dir() or (prob is not None and prob.is_dir() != gt.is_dir()):
        raise InputError(pred, "prediction, ground truth (and probabilities) must all be files or all folders")
    if not gt.is_dir():
        cases = [evaluate_case(pred, gt, prob, connectivity)]
    else:
        gt_cases = _gt_cases(gt)
        if not gt_cases:
            raise InputError(gt, "no ground-truth image files found")
        jobs, missing = [], []
        for case, gt_path in gt_cases.items():
            pred_path = _find(pred, case, "_nodules")
            prob_path = _find(prob, case, "_probabilities") if prob is not None else None
            if pred_path is None or (prob is not None and prob_path is None):
                missing.append(case)
            jobs.append((case, pred_path, gt_path, prob_path))
        if missing:
            what = "prediction" if any(_find(pred, c, "_nodules") is None for c in missing) else "probabilities"
            raise InputError(pred if what == "prediction" else prob,
                             f"no {what} for {len(missing)} case(s): {', '.join(missing[:5])}"
                             + (" ..." if len(missing) > 5 else ""))
        from tqdm import tqdm

        cases = []
        for case, pred_path, gt_path, prob_path in tqdm(
            jobs, desc="evaluate", unit="case", disable=quiet or not sys.stderr.isatty()
        ):
            r = evaluate_case(pred_path, gt_path, prob_path, connectivity)
            r["case"] = case
            cases.append(r)
    summary = summarise(cases, prob is not None)
    summary["cases"] = cases
    return summary
