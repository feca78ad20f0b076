"""Lesion-wise matching: which ground-truth nodules are found, and which predictions are false.

Lesions are 26-connected components (or the instance labels already in a label map). A
predicted component detects every ground-truth lesion it overlaps by at least one voxel (the
usual criterion for segmentation-based detection; LUNA16's centre-distance rule needs no mask).
A predicted component overlapping no lesion is a false positive. Its score for FROC is the
maximum probability inside it.
"""

from __future__ import annotations

from typing import Any

import cc3d
import numpy as np


def instances(mask: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """Instance labels: an integer label map with several labels is kept as it is, anything else
    (binary, float) is split into connected components."""
    arr = np.asarray(mask)
    if np.issubdtype(arr.dtype, np.integer) and arr.max(initial=0) > 1 and arr.min(initial=0) >= 0:
        return arr.astype(np.uint32, copy=False)
    return cc3d.connected_components(arr > 0, connectivity=connectivity)


def match_lesions(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: tuple[float, float, float],
    probability: np.ndarray | None = None,
    connectivity: int = 26,
    score: str = "peak",
) -> dict[str, Any]:
    """Match predicted components to ground-truth lesions of one scan.

    Returns n_gt, n_pred, tp (detected lesions), fn, fp (unmatched predictions), sensitivity
    (None without lesions), ``lesions`` (per GT lesion: id, volume_mm3, detected, dice with the
    components that hit it) and ``candidates`` (per prediction: score, hits = GT ids). A
    candidate's score is its ``peak`` probability or its ``mean`` probability (the pipeline's
    confidence, :attr:`medseg.postprocess.PostprocessSettings.min_confidence`); 1.0 without
    probabilities.
    """
    if score not in ("peak", "mean"):
        raise ValueError(f"score must be 'peak' or 'mean', not {score!r}")
    pl, gl = instances(pred, connectivity), instances(gt, connectivity)
    voxel_mm3 = float(np.prod(spacing))
    both = (pl > 0) & (gl > 0)
    # pairs (pred id, gt id) with their overlap counts, without a dense N x M table
    pairs, counts = np.unique(np.stack([pl[both], gl[both]]), axis=1, return_counts=True)
    gt_ids = [int(i) for i in np.unique(gl) if i]
    pred_ids = [int(i) for i in np.unique(pl) if i]
    gt_sizes = dict(zip(*np.unique(gl[gl > 0], return_counts=True)))
    pred_sizes = dict(zip(*np.unique(pl[pl > 0], return_counts=True)))
    hits: dict[int, list[int]] = {p: [] for p in pred_ids}
    hit_by: dict[int, list[int]] = {g: [] for g in gt_ids}
    inter: dict[int, int] = {g: 0 for g in gt_ids}
    for (p, g), c in zip(pairs.T.tolist(), counts.tolist()):
        hits[p].append(g)
        hit_by[g].append(p)
        inter[g] += c
    if probability is not None:
        from scipy import ndimage

        reduce = ndimage.maximum if score == "peak" else ndimage.mean
        values = reduce(np.asarray(probability), pl, index=pred_ids) if pred_ids else []
        scores = {p: float(v) for p, v in zip(pred_ids, np.atleast_1d(values))}
    lesions = []
    for g in gt_ids:
        pred_vox = sum(int(pred_sizes[p]) for p in hit_by[g])
        lesions.append({
            "id": g,
            "voxels": int(gt_sizes[g]),
            "volume_mm3": int(gt_sizes[g]) * voxel_mm3,
            "detected": bool(hit_by[g]),
            "dice": 2.0 * inter[g] / (int(gt_sizes[g]) + pred_vox),
        })
    candidates = [
        {"id": p, "score": scores[p] if probability is not None else 1.0, "hits": hits[p]}
        for p in pred_ids
    ]
    tp = sum(lz["detected"] for lz in lesions)
    fp = sum(not c["hits"] for c in candidates)
    return {
        "n_gt": len(gt_ids),
        "n_pred": len(pred_ids),
        "tp": tp,
        "fn": len(gt_ids) - tp,
        "fp": fp,
        "sensitivity": tp / len(gt_ids) if gt_ids else None,
        "lesions": lesions,
        "candidates": candidates,
    }
