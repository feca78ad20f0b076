"""Preprocessing shared by training and inference, and MONAI pipelines built from a plan.

``normalise_ct`` is the single definition of CT intensity handling: training transforms and the
inference path both call it, so a model always sees the intensities it was trained on.
"""

from __future__ import annotations

import numpy as np

from medseg.plan import IntensityPlan


def normalise_ct(array: np.ndarray, intensity: IntensityPlan) -> np.ndarray:
    """Clip HU to ``intensity.clip`` then standardise with the plan's mean/std (float32)."""
    lo, hi = intensity.clip
    out = np.clip(np.asarray(array, dtype=np.float32), lo, hi)
    out -= np.float32(intensity.mean)
    out /= np.float32(intensity.std)
    return out
