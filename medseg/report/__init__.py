"""Per-nodule measurements (world mm), the JSON/CSV report and the preview PNG."""

from medseg.report.measure import axial_diameters_mm, longest_diameter_mm, measure_nodules, nodule_type

__all__ = ["axial_diameters_mm", "longest_diameter_mm", "measure_nodules", "nodule_type"]
