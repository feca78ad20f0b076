"""LUNA16-style FROC analysis and the competition performance metric (CPM).

Each candidate has a score and the set of ground-truth lesions it hits (empty: false positive).
Lowering the threshold through the scores traces the FROC curve: average false positives per
scan against lesion sensitivity, where a lesion hit by several candidates counts once. The CPM
is the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FP/scan, each read as the best
sensitivity of an operating point whose FP rate does not exceed it (a step curve, so no
interpolation can credit an operating point that does not exist; beyond the last candidate the
curve stays flat, as in LUNA16).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

#: FP/scan rates of the LUNA16 CPM
CPM_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def froc_curve(
    scores: Sequence[float], hits: Sequence[Sequence[Hashable]], n_lesions: int, n_scans: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, fp_per_scan, sensitivity) at each distinct score, highest threshold first.

    ``hits[i]`` are the (globally unique) lesion keys candidate ``i`` overlaps, e.g. (case, id).
    The first point is the empty operating point (threshold +inf, 0 FP, 0 sensitivity).
    """
    if n_scans <= 0:
        raise ValueError("n_scans must be positive")
    if len(scores) != len(hits):
        raise ValueError("scores and hits differ in length")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    thresholds, fps, sens = [np.inf], [0.0], [0.0]
    detected: set[Hashable] = set()
    n_fp = 0
    s_sorted = np.asarray(scores, dtype=np.float64)[order]
    for pos, i in enumerate(order):
        if hits[i]:
            detected.update(hits[i])
        else:
            n_fp += 1
        # emit a point once all candidates tied at this score are in
        if pos + 1 == len(order) or s_sorted[pos + 1] != s_sorted[pos]:
            thresholds.append(float(s_sorted[pos]))
            fps.append(n_fp / n_scans)
            sens.append(len(detected) / n_lesions if n_lesions else 0.0)
    return np.asarray(thresholds), np.asarray(fps), np.asarray(sens)


def sensitivity_at(fps: np.ndarray, sens: np.ndarray, rate: float) -> float:
    """Best sensitivity among operating points with at most ``rate`` FP/scan."""
    ok = fps <= rate + 1e-12
    return float(sens[ok].max()) if ok.any() else 0.0


def froc(
    scores: Sequence[float],
    hits: Sequence[Sequence[Hashable]],
    n_lesions: int,
    n_scans: int,
    rates: Sequence[float] = CPM_RATES,
) -> dict[str, Any]:
    """FROC summary: sensitivity at each rate, CPM, and the curve points (JSON-able)."""
    thr, fps, sens = froc_curve(scores, hits, n_lesions, n_scans)
    at = {str(r): sensitivity_at(fps, sens, r) for r in rates}
    return {
        "cpm": float(np.mean(list(at.values()))) if n_lesions else None,
        "sensitivity_at_fp": at,
        "curve": {
            "threshold": [None if np.isinf(t) else float(t) for t in thr],
            "fp_per_scan": fps.tolist(),
            "sensitivity": sens.tolist(),
        },
        "n_lesions": n_lesions,
        "n_scans": n_scans,
        "n_candidates": len(scores),
    }
