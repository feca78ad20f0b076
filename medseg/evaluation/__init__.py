"""Evaluation: overlap and surface metrics in mm, lesion-wise detection, FROC / CPM."""

from medseg.evaluation.froc import CPM_RATES, froc, froc_curve
from medseg.evaluation.lesions import match_lesions
from medseg.evaluation.metrics import dice, iou, overlap_metrics, relative_volume_error, surface_metrics

__all__ = [
    "CPM_RATES",
    "dice",
    "froc",
    "froc_curve",
    "iou",
    "match_lesions",
    "overlap_metrics",
    "relative_volume_error",
    "surface_metrics",
]
