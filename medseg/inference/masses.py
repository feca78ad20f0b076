"""Masses (30-100 mm): the same network run a second time on a coarser grid.

The network sees a 34 mm window at the plan spacing, so a 45 mm mass fills it and more. On a grid
``mass_scale`` times coarser (2: 1.4 x 1.4 x 2.5 mm for the bundled model) the window covers
68 mm and a mass looks like the nodules the network learned: a scale-space pass rather than a
second model. The pass runs over the lung field (the per-slice hull of each lung), which holds
masses against the chest wall or mediastinum that an air threshold leaves out of the lung.

A coarse component is a mass when it is at least ``mass_min_diameter_mm`` across, lung surrounds
a good part of it (``mass_min_lung_contact`` of its outer shell: the heart, the aorta and the
diaphragm domes, which also light up at this scale, border lung on less of their surface) and it
is compact (``mass_min_solidity``: a merged vessel tree is not).
Its boundary is then refined on the input grid by growing it a few mm into soft tissue within the
lung field, since the coarse grid rounds the edge off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.inference.lung_mask import LungMaskResult, bounding_box
from medseg.inference.predictor import GridPrediction, Predictor
from medseg.io.volume import Volume
from medseg.plan import InferencePlan
from medseg.postprocess.components import equivalent_diameter_mm
from medseg.preprocess import GridBox

#: Thickness (mm) of the outer shell whose share in the lung is the lung contact.
SHELL_MM = 3.0


@dataclass
class Mass:
    """One mass on the input grid: its mask inside ``box`` and how it was found."""

    box: tuple[slice, slice, slice]
    mask: np.ndarray  # bool, shape of the box
    mean_probability: float
    lung_contact: float
    equivalent_diameter_mm: float


def coarse_predictor(predictor: Predictor, scale: float) -> Predictor:
    """The same network on a grid ``scale`` times coarser than its plan (the model is shared)."""
    plan = dataclasses.replace(predictor.plan, spacing=tuple(s * scale for s in predictor.plan.spacing))
    return Predictor(predictor.model, plan, device=predictor.device, window=predictor.window,
                     overlap=predictor.overlap, sw_batch_size=predictor.sw_batch_size, precision=predictor.precision,
                     runtime=predictor.runtime)


def coarse_pass(predictor: Predictor, volume: Volume, lungs: LungMaskResult, scale: float) -> GridPrediction | None:
    """The network over the lung field on the grid ``scale`` times coarser (``None`` when off or
    there is no field). Masses are found in it, and every fine candidate reads its probability
    there as a feature (what the network says with twice the context)."""
    if scale <= 0 or lungs.field is None or not lungs.field.any():
        return None
    return coarse_predictor(predictor, scale).predict_grid(volume, lungs.field)


def find_masses(predictor: Predictor, volume: Volume, lungs: LungMaskResult, settings: InferencePlan,
                grid: GridPrediction | None = None) -> list[Mass]:
    """Masses in ``volume``: components of the coarse pass over the lung field that pass the size and
    lung-contact tests, refined on the input grid. ``grid``: that pass, when already run
    (:func:`coarse_pass`); else it is run here.

    Components are found and tested on the coarse plan grid itself (an eighth of the input's voxels
    for the bundled model), and only the accepted ones are brought back to the input grid: the pass
    never holds an input-sized array (it did, and doubled the peak memory of a 512x512x300 scan)."""
    if grid is None:
        grid = coarse_pass(predictor, volume, lungs, settings.mass_scale)
    if grid is None:
        return []
    geo, spacing = grid.geo, grid.geo.grid.target  # plan-grid axes and their voxel size (mm)
    field = geo.label(lungs.field) > 0
    lung = geo.label(lungs.mask) > 0
    labels, n = ndimage.label((grid.probability >= settings.threshold) & field, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return []
    voxel_mm3 = float(np.prod(spacing))
    counts = np.bincount(labels.ravel())
    out = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or equivalent_diameter_mm(counts[i] * voxel_mm3) < settings.mass_min_diameter_mm:
            continue
        comp = labels == i
        contact = lung_contact(comp, lung, spacing)
        if contact < settings.mass_min_lung_contact or solidity(comp) < settings.mass_min_solidity:
            continue
        mask, in_box = component_on_input(geo, grid.probability * comp, box, settings.threshold)
        mass = refine_on_input(mask, in_box, volume, lungs, settings, float(grid.probability[comp].mean()), contact)
        if mass is not None:
            out.append(mass)
    return out


def component_on_input(geo: GridBox, probability: np.ndarray, box: tuple[slice, ...],
                       threshold: float) -> tuple[np.ndarray, tuple[slice, ...]]:
    """One component's probability (zero elsewhere) on the plan-grid ``box`` of ``geo`` -> its mask on
    the input grid (trilinear, thresholded) and the input-grid box it lies in."""
    k = [(geo.k[j][0] + max(b.start - 1, 0), geo.k[j][0] + min(b.stop + 1, n))
         for j, (b, n) in enumerate(zip(box, geo.shape))]
    sub = geo.grid.box(k)
    local = tuple(slice(k0 - geo.k[j][0], k1 - geo.k[j][0]) for j, (k0, k1) in enumerate(k))
    return sub.to_input(probability[local]) >= threshold, sub.dst_box


def refine_on_input(mask: np.ndarray, box: tuple[slice, ...], volume: Volume, lungs: LungMaskResult,
                    settings: InferencePlan, prob: float, contact: float) -> Mass | None:
    """The component inside the lung field, grown into tissue (``grow_into_tissue``) on the input grid;
    ``None`` when nothing of it is left there (thinner than an input voxel once resampled)."""
    margin = tuple(int(np.ceil(settings.mass_grow_mm / s)) + 1 for s in volume.spacing)
    big = tuple(slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box, margin, volume.shape))
    comp = np.zeros([b.stop - b.start for b in big], bool)
    comp[tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(box, big))] = mask
    field = lungs.field[big] > 0
    comp &= field
    if not comp.any():
        return None
    grown = grow_into_tissue(comp, np.asarray(volume.array[big]), field, volume.spacing, settings.mass_grow_mm,
                             settings.mass_grow_hu)
    return _as_mass(grown, big, prob, contact, volume.voxel_volume_mm3)


def lung_contact(component: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Share of the component's outer shell (``SHELL_MM`` thick) that lies in the lung."""
    box = bounding_box(component, tuple(int(np.ceil(SHELL_MM / s)) + 1 for s in spacing))
    sub = component[box]
    dist = ndimage.distance_transform_edt(~sub, sampling=spacing)
    shell = (dist > 0) & (dist <= SHELL_MM)
    return float(lung[box][shell].mean()) if shell.any() else 0.0


def solidity(component: np.ndarray) -> float:
    """Volume over convex-hull volume (scikit-image). Affine maps keep convexity and volume ratios,
    so voxel space gives the world figure for any spacing."""
    from skimage.measure import regionprops

    box = bounding_box(component, (1, 1, 1))
    props = regionprops(component[box].astype(np.uint8))
    return float(props[0].solidity) if props else 0.0


def grow_into_tissue(component: np.ndarray, image: np.ndarray, allowed: np.ndarray,
                     spacing: tuple[float, float, float], grow_mm: float, min_hu: float) -> np.ndarray:
    """The component plus the voxels within ``grow_mm`` of it that are tissue (>= ``min_hu``) in
    ``allowed``, kept where connected to it."""
    if grow_mm <= 0:
        return component
    box = bounding_box(component, tuple(int(np.ceil(grow_mm / s)) + 1 for s in spacing))
    sub = component[box]
    near = ndimage.distance_transform_edt(~sub, sampling=spacing) <= grow_mm
    grown = sub | (near & (image[box] >= min_hu) & allowed[box])
    labels, _ = ndimage.label(grown)
    keep = np.unique(labels[sub])
    out = np.zeros_like(component)
    out[box] = np.isin(labels, keep[keep > 0])
    return out


def _as_mass(mask: np.ndarray, roi_box: tuple[slice, ...], prob: float, contact: float, voxel_mm3: float) -> Mass:
    box = bounding_box(mask)
    assert box is not None
    full_box = tuple(slice(r.start + b.start, r.start + b.stop) for r, b in zip(roi_box, box))
    return Mass(full_box, mask[box].copy(), prob, contact, equivalent_diameter_mm(float(mask.sum()) * voxel_mm3))  # type: ignore[arg-type]
