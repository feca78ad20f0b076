"""Tissue HU values and the labels of the (in-memory only) ``anatomy`` map."""

from __future__ import annotations

#: Labels of the (in-memory only) ``anatomy`` map.
SMALL_VESSEL, LARGE_VESSEL, AIRWAY, BONE = 1, 2, 3, 4
#: Vessels at least this thick (radius, mm) count as "large": isolated nodules keep clear of them.
LARGE_VESSEL_RADIUS = 1.2

HU_AIR = -1000.0
HU_FAT = -95.0
HU_SOFT = 40.0
HU_MUSCLE = 50.0
HU_BLOOD = 40.0
HU_ORGAN = 55.0
HU_LUNG = -865.0
