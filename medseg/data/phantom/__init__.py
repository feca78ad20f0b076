"""Deterministic chest-CT phantoms with exact ground truth (nodule labels, lung mask, JSON facts).

A phantom is a synthetic chest CT: body with subcutaneous fat, muscle, ribs, spine and sternum;
mediastinum with heart and aorta; two lungs (about -850 HU, smooth texture, denser posteriorly);
tapering branching vessel trees from the hila; an airway tree (trachea, main and lobar bronchi,
a few more generations); and nodules of known kind (solid, part-solid, ground-glass) and location
(isolated, juxta-vascular, juxta-pleural), 3-30 mm, lobulated. CT noise is correlated Gaussian.

Everything is modelled in world millimetres, so any (anisotropic) spacing and orientation gives
the same anatomy. The label map is the ground truth: each nodule's ``volume_mm3`` in ``info`` is
its voxel count on that map times the voxel volume, and its centre maps to one of its voxels.

Speed: dense work runs slice by slice on 2D maps; every tube and nodule is drawn only inside its
own bounding box, so a 512x512x300 phantom takes seconds, not minutes.

This package's public API is re-exported here. Its modules, in the order ``make_phantom`` uses
them: :mod:`.specs` (nodule kinds, locations, specs, nodule sets), :mod:`.canvas` (grid, subject
proportions, volumes), :mod:`.thorax` (the dense slice-by-slice pass), :mod:`.bones` (spine,
sternum, ribs), :mod:`.trees`, :mod:`.airways` and :mod:`.vessels`, :mod:`.nodules` (placement)
and :mod:`.nodule_shape` (shape, intensity), :mod:`.noise`, :mod:`.output` (:class:`Phantom`,
orientation, ``info``), :mod:`.files` (``save_phantom``); helpers in :mod:`.geometry` and
:mod:`.tissue` (HU values, anatomy labels).
"""

from __future__ import annotations

from .files import save_phantom
from .make import make_phantom
from .output import Phantom
from .specs import KINDS, LOCATIONS, NoduleSpec, subsolid_nodules
from .tissue import AIRWAY, BONE, LARGE_VESSEL, SMALL_VESSEL

__all__ = [
    "AIRWAY",
    "BONE",
    "KINDS",
    "LARGE_VESSEL",
    "LOCATIONS",
    "SMALL_VESSEL",
    "NoduleSpec",
    "Phantom",
    "make_phantom",
    "save_phantom",
    "subsolid_nodules",
]
