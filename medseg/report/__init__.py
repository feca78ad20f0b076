"""Per-nodule measurements (world mm), the JSON/CSV report and the preview PNG."""

from medseg.report.measure import longest_diameter_mm, measure_nodules, nodule_type

__all__ = ["longest_diameter_mm", "measure_nodules", "nodule_type"]
