"""LUNA16-style FROC analysis and the competition performance metric (CPM).

Each candidate has a score and the set of ground-truth lesions it hits (empty: false positive).
Lowering the threshold through the scores traces the FROC curve: average false positives per
scan against lesion sensitivity, where a lesion hit by several candidates counts once. The CPM
is the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FP/scan, read two ways:

* ``cpm`` (LUNA16-comparable): as the LUNA16 evaluation script does, by linear interpolation of
  the curve between its operating points (``numpy.interp``; flat beyond the last candidate);
* ``cpm_step``: the best sensitivity of an operating point whose FP rate does not exceed the rate
  (a step curve: no interpolation credits an operating point that does not exist).
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


def sensitivity_interpolated(fps: np.ndarray, sens: np.ndarray, rate: float) -> float:
    """Sensitivity at ``rate`` FP/scan by linear interpolation of the curve, as LUNA16 does
    (noduleCADEvaluationLUNA16.py interpolates the FROC with ``numpy.interp``)."""
    xs, ys = [], []
    for x, y in zip(fps, sens):  # one point per FP rate: the best sensitivity reached there
        if xs and x == xs[-1]:
            ys[-1] = max(ys[-1], y)
        else:
            xs.append(float(x))
            ys.append(float(y))
    return float(np.interp(rate, xs, ys))


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
    itp = {str(r): sensitivity_interpolated(fps, sens, r) for r in rates}
    return {
        "cpm": float(np.mean(list(itp.values()))) if n_lesions else None,
        "sensitivity_at_fp": itp,
        "cpm_step": float(np.mean(list(at.values()))) if n_lesions else None,
        "sensitivity_at_fp_step": at,
        "cpm_definition": "cpm: LUNA16 (mean sensitivity at 1/8..8 FP/scan, curve linearly interpolated); "
                          "cpm_step: the same rates read off the step curve (no interpolation)",
        "curve": {
            "threshold": [None if np.isinf(t) else float(t) for t in thr],
            "fp_per_scan": fps.tolist(),
            "sensitivity": sens.tolist(),
        },
        "n_lesions": n_lesions,
        "n_scans": n_scans,
        "n_candidates": len(scores),
    }
