"""Voxel-overlap and surface metrics in world millimetres.

Surface metrics use MONAI (``compute_hausdorff_distance``, ``compute_average_surface_distance``,
``compute_surface_dice``) with ``spacing=``, which runs the Euclidean distance transform with
the voxel spacing as sampling: distances are in mm for any anisotropic grid. Empty-mask cases,
where MONAI returns nan/inf, are settled here: both empty -> perfect scores and 0 mm; exactly
one empty -> overlap 0 and surface distances ``None`` (undefined, reported as JSON null).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch


def _as_bool(a: np.ndarray) -> np.ndarray:
    return np.asarray(a) > 0


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient of two binary masks (1.0 when both are empty)."""
    p, g = _as_bool(pred), _as_bool(gt)
    denom = int(p.sum()) + int(g.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(p, g).sum()) / denom


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union (1.0 when both are empty)."""
    p, g = _as_bool(pred), _as_bool(gt)
    union = int(np.logical_or(p, g).sum())
    return 1.0 if union == 0 else int(np.logical_and(p, g).sum()) / union


def relative_volume_error(pred: np.ndarray, gt: np.ndarray) -> float | None:
    """(V_pred - V_gt) / V_gt; None when the ground truth is empty (spacing cancels out)."""
    g = int(_as_bool(gt).sum())
    return None if g == 0 else (int(_as_bool(pred).sum()) - g) / g


def _crop_pair(p: np.ndarray, g: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Both masks cropped to their joint bounding box + 1 voxel (surface distances unchanged),
    as MONAI's [B=1, C=1, ...] tensors: keeps the distance transform small on a full scan."""
    union = p | g
    idx = np.argwhere(union)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, union.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    return (torch.from_numpy(np.ascontiguousarray(p[box]))[None, None],
            torch.from_numpy(np.ascontiguousarray(g[box]))[None, None])


def surface_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float, float], tolerance_mm: float = 1.0
) -> dict[str, float | None]:
    """HD95 (mm), symmetric average surface distance (mm) and surface Dice at ``tolerance_mm``."""
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    p, g = _as_bool(pred), _as_bool(gt)
    if not p.any() and not g.any():
        return {"hd95": 0.0, "assd": 0.0, "surface_dice": 1.0}
    if not p.any() or not g.any():
        return {"hd95": None, "assd": None, "surface_dice": 0.0}
    tp, tg = _crop_pair(p, g)
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's internal deprecation chatter
        hd95 = compute_hausdorff_distance(tp, tg, include_background=True, percentile=95, spacing=sp)
        assd = compute_average_surface_distance(tp, tg, include_background=True, symmetric=True, spacing=sp)
        nsd = compute_surface_dice(tp, tg, class_thresholds=[tolerance_mm], include_background=True, spacing=sp)
    return {"hd95": float(hd95.item()), "assd": float(assd.item()), "surface_dice": float(nsd.item())}


def overlap_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float, float]
) -> dict[str, Any]:
    """Dice, IoU, HD95, ASSD, surface Dice @ 1 mm and relative volume error of two masks."""
    if np.shape(pred) != np.shape(gt):
        raise ValueError(f"mask shapes differ: {np.shape(pred)} vs {np.shape(gt)}")
    surf = surface_metrics(pred, gt, spacing, tolerance_mm=1.0)
    voxel_mm3 = float(np.prod(spacing))
    return {
        "dice": dice(pred, gt),
        "iou": iou(pred, gt),
        "hd95": surf["hd95"],
        "assd": surf["assd"],
        "surface_dice_1mm": surf["surface_dice"],
        "rel_volume_error": relative_volume_error(pred, gt),
        "pred_volume_mm3": int(_as_bool(pred).sum()) * voxel_mm3,
        "gt_volume_mm3": int(_as_bool(gt).sum()) * voxel_mm3,
    }
