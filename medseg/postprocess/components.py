"""Connected components of a binary nodule mask: physical-size, lung and vessel filters, features.

All sizes are in world millimetres from the voxel spacing, so the same settings mean the same
thing on a 0.7 x 0.7 x 2.5 mm scan and on a 1 mm isotropic one. Shape measures (elongation) use
the covariance of the component's world-mm coordinates, which is independent of the axis
directions, so the direction cosines are not needed here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import cc3d
import numpy as np
from scipy import ndimage

from medseg.plan import InferencePlan
from medseg.postprocess.candidates import CandidateClassifier, confidence

#: Voxel-shell contact with the lung above which a component still counts as in the lung even if
#: the lung mask excludes it (plain air-threshold lung masks leave juxta-pleural nodules out, yet
#: such a nodule borders lung on roughly half of its surface; a chest-wall blob touches it barely).
LUNG_CONTACT_INSIDE = 0.3
#: HU above which a voxel counts as dense (soft tissue, vessel, nodule) rather than aerated lung
DENSE_HU = -500.0
#: Gaussian scales (mm) of the Hessian shape measure: blobs of about 3-14 mm across
BLOB_SCALES_MM = (1.5, 2.5, 4.0)
#: context read around a component for the Hessian filters (mm; 2.5 sigma of the largest scale)
BLOB_MARGIN_MM = 10.0

#: ``box -> values``: a second probability map read on demand over a box of the components' grid
#: (the coarse pass's, :meth:`medseg.inference.predictor.GridPrediction.on_input`)
ContextProbability = Callable[[tuple[slice, slice, slice]], np.ndarray]


@dataclass
class ComponentFilter:
    """What :func:`filter_components` removes; all thresholds in world units."""

    min_diameter_mm: float = 3.0
    restrict_to_lung: bool = True
    vessel_filter: bool = False
    max_elongation: float = 3.0
    connectivity: int = 26
    #: components whose confidence is below this are dropped (0 = off): a candidate score cut, as
    #: detection models use, applied after the threshold shaped the masks. The confidence is the
    #: candidate classifier's P(nodule) when one is given, else the mean probability (not the
    #: peak: vessel fragments peak as high as nodules, but a nodule is confident throughout).
    min_confidence: float = InferencePlan.min_confidence
    classifier: CandidateClassifier | None = None


def equivalent_diameter_mm(volume_mm3: float) -> float:
    """Diameter of the sphere with this volume."""
    return float((6.0 * volume_mm3 / np.pi) ** (1.0 / 3.0))


def elongation(coords_ijk: np.ndarray, spacing: tuple[float, float, float]) -> tuple[float, float]:
    """(elongation, flatness) of a voxel set from PCA of its world-mm coordinates.

    elongation = sqrt(l1 / l2), flatness = sqrt(l2 / l3) with l1 >= l2 >= l3 the covariance
    eigenvalues. Each voxel is treated as a uniform box, adding spacing^2/12 per axis, so a single
    voxel or a one-slice component has finite values (1 for a cube of isotropic voxels).
    A sphere gives ~1, a straight tube of length L and radius r gives L / (r * sqrt(3)).
    """
    sp = np.asarray(spacing, dtype=np.float64)
    pts = coords_ijk.astype(np.float64) * sp
    cov = np.cov(pts.T) if len(pts) > 1 else np.zeros((3, 3))
    cov = cov + np.diag(sp**2 / 12.0)
    ev = np.sort(np.linalg.eigvalsh(cov))[::-1]
    ev = np.maximum(ev, 1e-12)
    return float(np.sqrt(ev[0] / ev[1])), float(np.sqrt(ev[1] / ev[2]))


def _box(bbox: Any, shape: tuple[int, ...], pad: int | tuple[int, ...] = 0) -> tuple[slice, ...]:
    pads = pad if isinstance(pad, tuple) else (pad,) * len(shape)
    return tuple(slice(max(s.start - p, 0), min(s.stop + p, n)) for s, p, n in zip(bbox, pads, shape))


def blobness(
    values: np.ndarray,
    inside: np.ndarray,
    spacing: tuple[float, float, float],
    scales_mm: tuple[float, ...] = BLOB_SCALES_MM,
) -> float:
    """How blob-like rather than tube-like the bright structure at ``inside`` is, in [0, 1].

    From the eigenvalues |l1| >= |l2| >= |l3| of the Gaussian-smoothed Hessian (world mm, each
    scale sigma^2-normalised), the dot and line measures of Li, Sone and Doi (Med. Phys. 2003,
    the classical nodule-enhancement filter): dot = |l3|^2 / |l1| where all three are negative,
    line = |l2| (|l2| - |l3|) / |l1| where l1, l2 are. Each is maximised over the voxels of
    ``inside`` and the scales; the result is dot / (dot + line): about 1 for a sphere, about 0
    for a vessel, in between for a nodule on a vessel. A ratio of two second-derivative measures,
    it does not depend on the contrast (a ground-glass and a solid sphere score alike), only on
    shape; ``values`` is the box around ``inside`` (HU or probabilities).
    """
    sp = np.asarray(spacing, dtype=np.float64)
    where = np.nonzero(inside)
    if len(where[0]) == 0:
        return 0.0
    v = np.asarray(values, dtype=np.float32)
    best_dot = best_line = 0.0
    for scale in scales_mm:
        sigma = scale / sp
        hess = np.empty((len(where[0]), 3, 3), dtype=np.float32)
        for a in range(3):
            for b in range(a, 3):
                order = [0, 0, 0]
                order[a] += 1
                order[b] += 1
                d2 = ndimage.gaussian_filter(v, sigma, order=order, mode="nearest")[where] / (sp[a] * sp[b])
                hess[:, a, b] = hess[:, b, a] = d2
        ev = np.linalg.eigvalsh(hess)
        ev = np.take_along_axis(ev, np.argsort(-np.abs(ev), axis=1), axis=1)
        l1, l2, l3 = ev[:, 0], ev[:, 1], ev[:, 2]
        a1 = np.maximum(np.abs(l1), 1e-12)
        dot = np.where((l1 < 0) & (l2 < 0) & (l3 < 0), l3**2 / a1, 0.0)
        line = np.where((l1 < 0) & (l2 < 0), np.abs(l2) * (np.abs(l2) - np.abs(l3)) / a1, 0.0)
        best_dot = max(best_dot, float(dot.max()) * scale**2)
        best_line = max(best_line, float(line.max()) * scale**2)
    total = best_dot + best_line
    return best_dot / total if total > 0 else 0.0


def component_features(
    labels: np.ndarray,
    spacing: tuple[float, float, float],
    probability: np.ndarray | None = None,
    image: np.ndarray | None = None,
    lung_mask: np.ndarray | None = None,
    shape_measures: bool = True,
    context: ContextProbability | None = None,
) -> list[dict[str, Any]]:
    """One feature dict per label 1..N of ``labels`` (cc3d statistics plus per-box measures).

    Keys: label, voxels, volume_mm3, equivalent_diameter_mm, bbox ([[i0,i1),[j0,j1),[k0,k1)]),
    centroid_ijk, extent_mm, elongation, flatness, and where inputs are given mean_probability,
    max_probability, mean_hu, std_hu, shell_dense (fraction of the one-voxel outer shell above
    ``DENSE_HU``), lung_overlap (fraction of voxels in the lung mask), lung_contact (fraction of
    the outer shell lying in the lung mask), centre_in_lung; with ``shape_measures`` also
    prob_blobness and hu_blobness (see :func:`add_shape_measures`); with ``context`` (the coarse
    pass's probability) coarse_mean_probability and coarse_max_probability over the component.
    """
    sp = tuple(float(s) for s in spacing)
    voxel_mm3 = float(np.prod(sp))
    stats = cc3d.statistics(labels)
    feats: list[dict[str, Any]] = []
    for lab in range(1, len(stats["voxel_counts"])):
        n = int(stats["voxel_counts"][lab])
        if n == 0:
            continue
        box = _box(stats["bounding_boxes"][lab], labels.shape, pad=1)
        sub = labels[box] == lab
        coords = np.argwhere(sub)
        offset = np.array([s.start for s in box])
        lo = coords.min(0) + offset
        hi = coords.max(0) + offset + 1
        el, fl = elongation(coords, sp)
        centroid = coords.mean(0) + offset
        f: dict[str, Any] = {
            "label": lab,
            "voxels": n,
            "volume_mm3": n * voxel_mm3,
            "equivalent_diameter_mm": equivalent_diameter_mm(n * voxel_mm3),
            "bbox": [[int(a), int(b)] for a, b in zip(lo, hi)],
            "centroid_ijk": [float(c) for c in centroid],
            "extent_mm": [float((b - a) * s) for a, b, s in zip(lo, hi, sp)],
            "elongation": el,
            "flatness": fl,
        }
        if probability is not None:
            p = probability[box][sub]
            f["mean_probability"] = float(p.mean())
            f["max_probability"] = float(p.max())
        shell = None
        if image is not None:
            hu = image[box]
            f["mean_hu"] = float(hu[sub].mean())
            f["std_hu"] = float(hu[sub].std())
            # dense tissue leaving the component (a vessel continuing, the pleura) vs lung around it
            shell = ndimage.binary_dilation(sub, structure=np.ones((3, 3, 3), bool)) & ~sub
            f["shell_dense"] = float((hu[shell] > DENSE_HU).mean()) if shell.any() else 0.0
        if lung_mask is not None:
            lung = lung_mask[box] > 0
            f["lung_overlap"] = float(lung[sub].mean())
            if shell is None:
                shell = ndimage.binary_dilation(sub, structure=np.ones((3, 3, 3), bool)) & ~sub
            f["lung_contact"] = float(lung[shell].mean()) if shell.any() else 0.0
            ci = tuple(int(round(c)) for c in centroid)
            f["centre_in_lung"] = bool(lung_mask[ci] > 0)
        feats.append(f)
    if shape_measures:
        add_shape_measures(feats, labels, sp, probability, image)
    if context is not None:
        add_coarse_measures(feats, labels, context)
    return feats


def add_coarse_measures(feats: list[dict[str, Any]], labels: np.ndarray, context: ContextProbability) -> None:
    """Add ``coarse_mean_probability`` / ``coarse_max_probability`` (the coarse pass's probability
    over each component's voxels) to feature dicts of ``labels`` in place; read box by box, so it
    runs on candidates only, after the size and lung filters."""
    for f in feats:
        box = tuple(slice(a, b) for a, b in f["bbox"])
        values = context(box)[labels[box] == f["label"]]
        f["coarse_mean_probability"] = float(values.mean())
        f["coarse_max_probability"] = float(values.max())


#: candidate features that :func:`add_shape_measures` computes (not in every feature dict)
SHAPE_MEASURES = ("prob_blobness", "hu_blobness")


def add_shape_measures(
    feats: list[dict[str, Any]],
    labels: np.ndarray,
    spacing: tuple[float, float, float],
    probability: np.ndarray | None = None,
    image: np.ndarray | None = None,
) -> None:
    """Add ``prob_blobness`` / ``hu_blobness`` (:func:`blobness` of the probabilities / the HU
    image around each component) to feature dicts of ``labels`` in place. A few Gaussian filters
    per component, so it runs on candidates only, after the size and lung filters."""
    sp = tuple(float(s) for s in spacing)
    margin = tuple(int(np.ceil(BLOB_MARGIN_MM / s)) for s in sp)
    for f in feats:
        bbox = tuple(slice(a, b) for a, b in f["bbox"])
        wide = _box(bbox, labels.shape, pad=margin)
        inside = labels[wide] == f["label"]
        if probability is not None:
            f["prob_blobness"] = blobness(probability[wide], inside, sp)
        if image is not None:
            f["hu_blobness"] = blobness(image[wide], inside, sp)


def in_lung(feature: dict[str, Any]) -> bool:
    """A component counts as in the lung when most of it or its centre lies in the lung mask, or
    when it borders lung on a good part of its surface (juxta-pleural nodules that an air-based
    lung mask leaves out)."""
    return (
        feature["lung_overlap"] >= 0.5
        or feature["centre_in_lung"]
        or feature["lung_contact"] >= LUNG_CONTACT_INSIDE
    )


def removal_reason(feature: dict[str, Any], filt: ComponentFilter, has_lung: bool) -> str | None:
    """Why a component is removed under ``filt`` (None: kept)."""
    if feature["equivalent_diameter_mm"] < filt.min_diameter_mm:
        return "too_small"
    if filt.restrict_to_lung and has_lung and not in_lung(feature):
        return "outside_lung"
    if filt.vessel_filter and feature["elongation"] > filt.max_elongation:
        return "vessel_like"
    score = feature.get("confidence", feature.get("mean_probability"))
    if filt.min_confidence > 0 and score is not None and score < filt.min_confidence:
        return "low_confidence"
    return None


def filter_components(
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    probability: np.ndarray | None = None,
    image: np.ndarray | None = None,
    lung_mask: np.ndarray | None = None,
    filt: ComponentFilter | None = None,
    context: ContextProbability | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]], list[dict[str, Any]]]:
    """Label ``mask``, drop components per ``filt``, relabel the kept ones 1..N largest first.
    ``context``: the coarse pass's probability, for the coarse_* features (see :func:`component_features`).

    Returns (uint16 labels, kept features with their new ``label`` and ``confidence``, removed
    features with a ``removed`` reason and ``label`` 0).
    """
    filt = filt or ComponentFilter()
    if filt.connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26, not {filt.connectivity}")
    labels = cc3d.connected_components(mask.astype(bool, copy=False), connectivity=filt.connectivity)
    feats = component_features(labels, spacing, probability, image, lung_mask, shape_measures=False)
    has_lung = lung_mask is not None
    # the shape and coarse measures cost a few filters or a resampled box per component: only for
    # candidates that pass the size/lung/vessel filters (the shape measures only when the classifier uses them)
    unscored = replace(filt, min_confidence=0.0)
    candidates = [f for f in feats if removal_reason(f, unscored, has_lung) is None]
    if filt.classifier is not None and set(SHAPE_MEASURES) & set(filt.classifier.features):
        add_shape_measures(candidates, labels, spacing, probability, image)
    if context is not None:
        add_coarse_measures(candidates, labels, context)
    kept, removed = [], []
    for f in feats:
        f["confidence"] = confidence(f, filt.classifier)
        reason = removal_reason(f, filt, has_lung)
        if reason:
            removed.append({**f, "label": 0, "removed": reason})
        else:
            kept.append(f)
    kept.sort(key=lambda f: (-f["voxels"], f["label"]))
    if len(kept) > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 components kept")
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint16)
    for new, f in enumerate(kept, start=1):
        lut[f["label"]] = new
        f["label"] = new
    return lut[labels], kept, removed
