"""Known-nodule volumetry: segment the nodule at each given point (``medseg infer --seeds``).

Research groups often have the radiologists' marks already (LIDC reads, PACS annotations) and
want volumes. Each point gets a cube of ``SEED_BOX_MM`` around it, segmented in crop mode (the
model knows the crop holds a nodule: no lung mask, no detection cut), and the component at the
point (or the nearest one within ``SEED_RADIUS_MM``) is its nodule; a point with none is
reported as not found, never silently dropped.

Points are read from a CSV whose header names the convention: ``x_lps_mm,y_lps_mm,z_lps_mm``
(DICOM/ITK world), ``x_ras_mm,y_ras_mm,z_ras_mm`` (NIfTI world) or ``i,j,k`` (voxel indices of
the scan's array). An optional ``id`` column names each point.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from medseg.errors import InputError
from medseg.io.volume import Volume

if TYPE_CHECKING:
    from medseg.inference.pipeline import Segmenter

#: Edge of the cube segmented around each point (mm): the largest nodule (30 mm) and its margin.
SEED_BOX_MM = 48.0
#: A component this close to the point (mm) is the point's nodule when none contains it.
SEED_RADIUS_MM = 5.0
_COLUMNS = {"lps": ("x_lps_mm", "y_lps_mm", "z_lps_mm"), "ras": ("x_ras_mm", "y_ras_mm", "z_ras_mm"),
            "ijk": ("i", "j", "k")}


@dataclass
class SeedPoint:
    """One given point, in world LPS mm."""

    id: str
    lps: np.ndarray


@dataclass
class SeedResult:
    """The nodule found at one point (``label`` in the seed label map), or not found."""

    seed: SeedPoint
    found: bool
    label: int | None
    distance_mm: float | None  # from the point to the component (0 inside)


def read_seeds(path: str | os.PathLike[str], volume: Volume) -> list[SeedPoint]:
    """Points of a seeds CSV, converted to world LPS mm with ``volume``'s geometry."""
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(p, f"cannot read seeds CSV ({exc})") from exc
    header = set(rows[0]) if rows else set()
    kind = next((k for k, cols in _COLUMNS.items() if set(cols) <= header), None)
    if kind is None:
        raise InputError(p, "seeds CSV needs columns x_lps_mm,y_lps_mm,z_lps_mm or x_ras_mm,y_ras_mm,z_ras_mm or i,j,k")
    seeds = []
    for n, row in enumerate(rows, start=1):
        try:
            xyz = np.array([float(row[c]) for c in _COLUMNS[kind]])
        except ValueError as exc:
            raise InputError(p, f"row {n}: not a number ({exc})") from exc
        if not np.all(np.isfinite(xyz)):
            raise InputError(p, f"row {n}: coordinates must be finite")
        lps = {"lps": xyz, "ras": xyz * np.array([-1, -1, 1]), "ijk": None}[kind]
        if lps is None:
            lps = volume.index_to_world(xyz)
        seeds.append(SeedPoint(str(row.get("id") or n), np.asarray(lps, float)))
    return seeds


def segment_seeds(segmenter: Segmenter, volume: Volume, seeds: list[SeedPoint]) -> tuple[np.ndarray, list[SeedResult]]:
    """A label map (label i = the nodule of the i-th found point) and one result per point."""
    import dataclasses

    from medseg.inference.pipeline import Segmenter

    crop_mode = Segmenter(dataclasses.replace(segmenter.settings, lung_mask=False, masses=False),
                          predictor=segmenter.predictor)
    labels = np.zeros(volume.shape, np.uint16)
    results = []
    for seed in seeds:
        ijk = volume.world_to_index(seed.lps)
        if not all(-0.5 <= c <= n - 0.5 for c, n in zip(ijk, volume.shape)):
            results.append(SeedResult(seed, False, None, None))
            continue
        box = _box(volume, ijk)
        sub = Volume(np.ascontiguousarray(volume.array[box]), volume.spacing, modality=volume.modality,
                     origin=tuple(volume.index_to_world([b.start for b in box])), direction=volume.direction)
        found = crop_mode.segment(sub).labels
        local = np.rint(ijk - [b.start for b in box]).astype(int)
        comp, dist = _component_at(found, local, volume.spacing)
        if comp is None or dist > SEED_RADIUS_MM:
            results.append(SeedResult(seed, False, None, None if comp is None else dist))
            continue
        label = int(labels.max()) + 1
        target = labels[box]
        target[(found == comp) & (target == 0)] = label
        results.append(SeedResult(seed, True, label, round(dist, 2)))
    return labels, results


def _box(volume: Volume, ijk: np.ndarray) -> tuple[slice, slice, slice]:
    half = [int(np.ceil(SEED_BOX_MM / 2 / s)) for s in volume.spacing]
    c = np.rint(ijk).astype(int)
    return tuple(slice(max(0, int(ci) - h), min(n, int(ci) + h + 1)) for ci, h, n in zip(c, half, volume.shape))  # type: ignore[return-value]


def _component_at(labels: np.ndarray, point: np.ndarray, spacing: tuple[float, ...]) -> tuple[int | None, float]:
    """The component containing ``point``, else the nearest one, and its distance (mm)."""
    point = np.clip(point, 0, np.asarray(labels.shape) - 1)
    at = int(labels[tuple(point)])
    if at:
        return at, 0.0
    if not labels.any():
        return None, float("inf")
    dist, idx = ndimage.distance_transform_edt(labels == 0, sampling=spacing, return_indices=True)
    nearest = tuple(int(i[tuple(point)]) for i in idx)
    return int(labels[nearest]), float(dist[tuple(point)])


def seed_rows(results: list[SeedResult], nodules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One report row per point: found or not, and its nodule's measurements."""
    by_label = {n["id"]: n for n in nodules}
    rows = []
    for r in results:
        row: dict[str, Any] = {"seed_id": r.seed.id, "seed_lps_mm": [round(float(v), 2) for v in r.seed.lps],
                               "found": r.found, "distance_mm": r.distance_mm}
        if r.found and r.label in by_label:
            row.update({k: v for k, v in by_label[r.label].items() if k != "id"}, label=r.label)
        rows.append(row)
    return rows
