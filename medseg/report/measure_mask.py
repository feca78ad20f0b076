"""Measure the nodules of an existing mask, whichever tool made it (``medseg measure``).

A label map gives one instance per value (its ids are kept); a binary mask gives one instance per
26-connected component (``skimage.measure.label``), numbered 1..N. Each instance gets the same
measurements as ``medseg infer`` reports (:func:`medseg.report.measure.measure_nodules`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.io import Volume, read_volume
from medseg.report.measure import measure_nodules

#: how the instances were found: by label value, or by connected component of a binary mask
BY_LABEL, BY_COMPONENT = "labels", "components"


@dataclass
class MaskMeasurement:
    """The nodules of one mask on its scan, measured in world mm."""

    scan: str
    mask: str
    instances: str  # BY_LABEL or BY_COMPONENT
    nodules: list[dict[str, Any]] = field(default_factory=list)  # measure_nodules records


def instance_labels(mask: np.ndarray, path: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, str]:
    """Instance labels of a mask: a label map as it is, a binary mask by 26-connected component.

    Returns (labels as int32, :data:`BY_LABEL` or :data:`BY_COMPONENT`). Refuses negative or
    non-integer values (a probability map is not a mask).
    """
    from skimage.measure import label

    values = np.asarray(mask)
    if values.dtype.kind == "f" and (not np.all(np.isfinite(values)) or np.any(values != np.round(values))):
        raise InputError(path, "mask holds non-integer values (a probability map?); give a binary mask or label map")
    if values.dtype.kind not in "biuf":
        raise InputError(path, f"mask has a non-numeric voxel type {values.dtype}")
    if values.size and values.min() < 0:
        raise InputError(path, "mask holds negative values; give a binary mask or label map")
    if values.size and values.max() > np.iinfo(np.int32).max:
        raise InputError(path, "mask holds label values too large for a label map")
    if values.size == 0 or values.max() <= 1:
        return label(values > 0, connectivity=3).astype(np.int32), BY_COMPONENT
    return values.astype(np.int32), BY_LABEL


def measure_mask(scan: str | os.PathLike[str] | Volume, mask: str | os.PathLike[str] | Volume) -> MaskMeasurement:
    """Measure every nodule of ``mask`` (file or Volume) on ``scan`` (file, DICOM folder or Volume).

    The mask must lie on the scan's grid (same size, spacing, origin and direction); otherwise an
    :class:`InputError` names the mask file.
    """
    volume = scan if isinstance(scan, Volume) else read_volume(scan)
    mask_vol = mask if isinstance(mask, Volume) else read_volume(mask)
    mask_name = mask_vol.source if not isinstance(mask, (str, os.PathLike)) else os.fspath(mask)
    if not mask_vol.same_grid(volume):
        raise InputError(mask_name, "mask is not on the scan's grid (size "
                                    f"{list(mask_vol.shape)} vs {list(volume.shape)}, spacing "
                                    f"{[round(s, 4) for s in mask_vol.spacing]} vs "
                                    f"{[round(s, 4) for s in volume.spacing]}, or origin/direction differ)")
    labels, how = instance_labels(mask_vol.array, mask_name)
    nodules = measure_nodules(labels, volume)
    scan_name = volume.source if not isinstance(scan, (str, os.PathLike)) else os.fspath(scan)
    return MaskMeasurement(str(scan_name or ""), str(mask_name or ""), how, nodules)


def write_measurements_csv(path: str | os.PathLike[str], result: MaskMeasurement) -> Path:
    """The nodule table of ``result`` (the columns of ``medseg infer``'s CSV), written atomically."""
    from medseg.report.tables import write_nodule_csv

    return write_nodule_csv(path, result.nodules)
