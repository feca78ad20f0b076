"""Hybrid scans: real LIDC nodules placed into real chest CT backgrounds, with instance masks.

A hybrid is written like a phantom set (``<name>.nii.gz`` int16 HU, ``<name>_nodules.nii.gz``
uint16 instance labels 1..N, ``<name>_lungs.nii.gz`` and ``<name>.json``), so ``medseg train --data``
and ``medseg train-fp --data`` read it.

How a nodule is placed:

* **Source.** An LIDC crop (``image/X.nii.gz`` + ``mask/X.nii.gz``) is taken with a blended margin
  of its own surroundings: a weight that is 1 on the nodule mask, stays 1 over a
  :data:`DILATE_MM` band and falls smoothly to 0 over :data:`BLEND_MM` (world mm, distance
  transform with the crop's spacing). Dense crop tissue outside the band (chest wall, large
  vessels of the source patient: above :data:`CROP_DENSE_HU`) is not carried over, and the weight
  falls towards 0 at the crop's faces, so no crop edge shows.
* **Geometry.** Every background voxel near the target is mapped through world (LPS) space into
  the crop's index space (the crop is translated so that its mask centroid lands on the target,
  optionally rotated about the world z axis and flipped) and sampled trilinearly. Where a
  background voxel is larger than the crop's voxels it averages several sub-voxel samples
  (partial volume, like a real thick-slice scan); the label is the sub-sampled mask fraction
  >= 0.5. Any spacing and any direction of either image give the same world-mm result.
* **Compositing.** ``composite = max(background, background * (1 - w) + crop * w)`` with
  ``w = weight * g`` and ``g = max(lungness(background), mask fraction)``: the crop's margin only
  blends into lung-like background (below :data:`VESSEL_HU`), so the background's own vessels,
  chest wall and previously placed nodules stay intact; the crop's surroundings are first shifted
  to the background's local lung level, and the ``max`` (as in the phantoms) keeps any of it
  from darkening the background (no dark halo, no hole punched into the wall by a ground-glass
  nodule). Labels stay off the chest wall and mediastinum. Voxels with ``w == 0`` are untouched,
  bit for bit.
* **Positions** (seeded) come from a lung mask of the background: ``parenchyma`` (whole nodule at
  least :data:`PARENCHYMA_CLEARANCE_MM` inside the lung, background mostly below
  :data:`LUNG_AIR_HU`), ``juxta_vascular`` (centre about a radius from a vessel voxel, i.e. a
  lung voxel above :data:`VESSEL_HU`, touching it) and ``juxta_pleural`` (centre about a radius
  from the lung boundary, touching it). Nodules keep their radii + :data:`SEPARATION_MM` apart.
  ``region`` keeps whole nodules (with their margins) in the left/right lung or the upper/lower
  half of the lungs' axial extent, so one background can give disjoint fit and test regions.

Work is done on a local box around each target; only the lung-mask distance transforms cover the
lungs' bounding box.
"""

from __future__ import annotations

import csv
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medseg.errors import InputError
from medseg.io.atomic import write_json_atomic, write_text_atomic
from medseg.io.readers import read_volume
from medseg.io.volume import Volume
from medseg.io.writers import write_mask

__all__ = [
    "BLEND_MM",
    "DILATE_MM",
    "KINDS",
    "REGIONS",
    "HybridPaths",
    "HybridScan",
    "LidcNodule",
    "NoduleCrop",
    "NodulePatch",
    "PatientSplit",
    "PlacedNodule",
    "build_hybrid",
    "filter_by_patients",
    "hybrid_info",
    "load_lidc_nodules",
    "paste_patch",
    "prepare_crop",
    "read_patient_list",
    "render_nodule",
    "sample_nodules",
    "split_by_patient",
    "texture_class",
    "write_hybrid",
    "write_patient_list",
]

#: Placement kinds.
KINDS = ("parenchyma", "juxta_vascular", "juxta_pleural")
#: Regions a scan's nodules may be restricted to.
REGIONS = ("all", "left", "right", "upper", "lower")
#: The phantom set's ``location`` for each placement kind (phantom JSON compatibility).
LOCATION_OF_KIND = {"parenchyma": "isolated", "juxta_vascular": "juxta-vascular", "juxta_pleural": "juxta-pleural"}

#: Width (mm) of the band around the nodule mask that is carried over at full weight.
DILATE_MM = 1.0
#: Width (mm) over which the weight of the crop's surroundings falls from 1 to 0.
BLEND_MM = 3.5
#: Width (mm) over which the weight falls to 0 towards the crop's outer voxels.
EDGE_TAPER_MM = 1.5
#: Crop surroundings (beyond the band) at or above this HU are not carried over; the weight
#: ramps down from ``CROP_DENSE_HU - 300`` to it.
CROP_DENSE_HU = -100.0
#: Largest lung-level offset (HU) applied to a crop's surroundings.
MAX_LUNG_SHIFT_HU = 150.0
#: Background voxels of the lung above this HU are vessels (and get no margin blending).
VESSEL_HU = -300.0
#: Lung parenchyma is denser than this (HU); pure air is bowel gas, an airway lumen or a bulla.
PURE_AIR_HU = -960.0
#: Background below this HU counts as aerated lung.
LUNG_AIR_HU = -500.0
#: Parenchymal nodules stay at least this far (mm) from the lung boundary.
PARENCHYMA_CLEARANCE_MM = 3.0
#: Vessel voxels must lie at least this deep (mm) in the lung mask (not the chest wall at its edge).
VESSEL_DEPTH_MM = 3.0
#: Most background share above LUNG_AIR_HU in a parenchymal nodule's sphere.
PARENCHYMA_DENSE_SHARE = 0.15
#: Most share of a juxta-pleural nodule's label outside the lung mask (in the chest wall).
PLEURAL_OUTSIDE_SHARE = 0.1
#: No nodule label may cover background at or above this HU (bone).
BONE_HU = 200.0
#: Least mean HU a nodule must add over its label (else it would be an invisible label).
MIN_CONTRAST_HU = 50.0
#: Gap (mm) kept between nodules beyond their radii.
SEPARATION_MM = 5.0
#: Most sub-samples per axis and background voxel.
MAX_SUBSAMPLES = 8
#: Candidate positions tried per nodule and placement kind.
TRIES_PER_KIND = 40


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class LidcNodule:
    """One LIDC nodule crop: where its files are (or the volumes themselves) and its facts."""

    file: str
    patient_id: str
    texture: str = ""
    diameter_mm: float = float("nan")
    image_path: Path | None = None
    mask_path: Path | None = None
    texture_value: int | None = None
    #: In-memory crop (tests, callers with their own crops); read from the paths when None.
    image: Volume | None = field(default=None, compare=False, repr=False)
    mask: Volume | None = field(default=None, compare=False, repr=False)

    def read(self) -> tuple[Volume, Volume]:
        """The crop image and mask volumes (read from disk unless given)."""
        if self.image is not None and self.mask is not None:
            return self.image, self.mask
        if self.image_path is None or self.mask_path is None:
            raise InputError(self.file, "LIDC nodule has neither volumes nor file paths")
        image, mask = read_volume(self.image_path), read_volume(self.mask_path)
        if image.shape != mask.shape:
            raise InputError(self.mask_path, f"mask shape {mask.shape} differs from its image {image.shape}")
        if not image.same_grid(mask, atol=1e-3):
            raise InputError(self.mask_path, "mask geometry (spacing, origin or direction) differs from its image")
        return image, mask


@dataclass
class NoduleCrop:
    """A crop ready for placement: float image, mask, blend weight and the nodule's size."""

    source: LidcNodule
    grid: Volume  #: the crop's geometry (its ``array`` is the float32 image)
    #: signed distance (mm) between voxel centres and the mask: < 0 inside; interpolated, its
    #: zero level is a smooth nodule surface (no staircase from thick crop slices)
    sdf: np.ndarray
    weight: np.ndarray  #: float32 blend weight, 1 on the mask
    support: tuple[np.ndarray, np.ndarray]  #: inclusive index bounds of ``weight > 0``
    centroid_lps: np.ndarray  #: world centroid of the mask
    volume_mm3: float
    radius_mm: float  #: equivalent-sphere radius of the mask
    extent_mm: float  #: farthest mask voxel centre from the centroid, plus half a voxel
    lung_hu: float  #: median HU of the crop's aerated surroundings (nan when it has none)

    @property
    def image(self) -> np.ndarray:
        return self.grid.array


@dataclass
class NodulePatch:
    """A nodule resampled onto a box of the background grid (nothing written yet).

    Per background voxel of ``box``: ``weight`` is the mean blend weight of its sub-samples,
    ``blend`` the mean of weight * crop HU (surroundings shifted by ``shift_hu``), ``fraction`` the share of sub-samples inside the
    nodule (interpolated signed distance < 0).
    """

    box: tuple[slice, slice, slice]
    weight: np.ndarray
    blend: np.ndarray
    fraction: np.ndarray
    subsamples: tuple[int, int, int]
    shift_hu: float = 0.0  #: offset added to the crop's surroundings (lung level matching)

    @property
    def label(self) -> np.ndarray:
        """The nodule's voxels in ``box``: sub-sampled mask fraction >= 0.5."""
        return self.fraction >= 0.5


@dataclass
class PlacedNodule:
    """A nodule placed in a hybrid scan (label id ``label`` in its label map)."""

    label: int
    lidc_file: str
    patient_id: str
    texture: str
    diameter_mm: float  #: equivalent-sphere diameter of the placed label volume
    kind: str  #: placement kind, one of :data:`KINDS`
    centre_lps: tuple[float, float, float]
    voxels: int
    volume_mm3: float = 0.0
    lidc_diameter_mm: float = float("nan")
    centre_ijk: tuple[int, int, int] = (0, 0, 0)
    rotation_deg: float = 0.0
    mirrored: bool = False
    texture_class: str = ""  #: ``solid``, ``part-solid`` or ``ground-glass``


@dataclass
class HybridScan:
    """A background CT with nodules placed: image, uint16 labels 1..N and what was done."""

    volume: Volume
    labels: np.ndarray
    nodules: list[PlacedNodule]
    background: str
    region: str
    seed: int
    skipped: list[str] = field(default_factory=list)
    lungs: np.ndarray | None = None  #: uint8 lung mask used for placement (nodules included)


@dataclass(frozen=True)
class HybridPaths:
    """Files written for one hybrid scan."""

    ct: Path
    nodules: Path
    lungs: Path | None
    json: Path


@dataclass(frozen=True)
class PatientSplit:
    """Patient ids of two disjoint sets (e.g. training hybrids and benchmark hybrids)."""

    train: list[str]
    test: list[str]


# --------------------------------------------------------------------------- LIDC crops
def load_lidc_nodules(root: str | os.PathLike[str]) -> list[LidcNodule]:
    """The crops listed in ``root/nodules.csv`` whose ``image/`` and ``mask/`` files exist."""
    root = Path(root)
    table = root / "nodules.csv"
    if not table.is_file():
        raise InputError(table, "LIDC nodule table not found (expected nodules.csv beside image/ and mask/)")
    try:
        with table.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise InputError(table, f"cannot read the nodule table ({exc})") from exc
    if rows and not {"file", "patient_id"} <= set(rows[0]):
        raise InputError(table, "nodule table needs 'file' and 'patient_id' columns")
    out = []
    for row in rows:
        image, mask = root / "image" / row["file"], root / "mask" / row["file"]
        if not (image.is_file() and mask.is_file()):
            continue
        out.append(LidcNodule(
            file=row["file"], patient_id=row["patient_id"], texture=row.get("Texture", "") or "",
            diameter_mm=_float(row.get("diameter_mm")), image_path=image, mask_path=mask,
            texture_value=_int(row.get("Texture_value"))))
    if not out:
        raise InputError(root, "no LIDC crops found (nodules.csv rows with image/ and mask/ files)")
    return out


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else float("nan")
    except ValueError:
        return float("nan")


def _int(text: str | None) -> int | None:
    value = _float(text)
    return None if math.isnan(value) else int(round(value))


def texture_class(nodule: LidcNodule) -> str:
    """``solid``, ``part-solid`` or ``ground-glass`` (the phantom's kinds) from the LIDC texture.

    LIDC texture ratings: 1 non-solid/GGO, 2 non-solid/mixed, 3 part solid/mixed, 4 solid/mixed,
    5 solid.
    """
    value = nodule.texture_value
    if value is None:
        text = nodule.texture.lower()
        value = 3 if "part" in text else (1 if "non" in text or "ggo" in text else 5)
    return "ground-glass" if value <= 2 else ("part-solid" if value == 3 else "solid")


def prepare_crop(nodule: LidcNodule) -> NoduleCrop | None:
    """Read a crop and compute its blend weight; ``None`` when its mask is empty."""
    image, mask_vol = nodule.read()
    mask = np.asarray(mask_vol.array) > 0
    if not mask.any():
        return None
    hu = np.asarray(image.array, dtype=np.float32)
    spacing = np.asarray(image.spacing)
    dist = ndimage.distance_transform_edt(~mask, sampling=spacing).astype(np.float32)
    depth = ndimage.distance_transform_edt(mask, sampling=spacing).astype(np.float32) if not mask.all() \
        else np.full(mask.shape, 1e3, np.float32)
    ramp = _smoothstep(1.0 - (dist - DILATE_MM) / BLEND_MM)
    dense = np.clip((CROP_DENSE_HU - hu) / 300.0, 0.0, 1.0)
    ramp = np.where(dist <= DILATE_MM, ramp, ramp * dense)
    weight = np.where(mask, 1.0, ramp * _edge_taper(mask.shape, spacing)).astype(np.float32)
    nz = np.argwhere(weight > 0)
    around = hu[(dist > DILATE_MM) & (weight > 0) & (hu < LUNG_AIR_HU)]
    pts = image.index_to_world(np.argwhere(mask))
    centroid = pts.mean(axis=0)
    volume = float(mask.sum()) * image.voxel_volume_mm3
    extent = float(np.sqrt(((pts - centroid) ** 2).sum(axis=1)).max()) + 0.5 * float(spacing.max())
    return NoduleCrop(
        source=nodule, grid=image.with_array(hu), sdf=np.where(mask, -depth, dist), weight=weight,
        support=(nz.min(axis=0), nz.max(axis=0)), centroid_lps=centroid, volume_mm3=volume,
        radius_mm=(3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0), extent_mm=extent,
        lung_hu=float(np.median(around)) if around.size else float("nan"))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _edge_taper(shape: tuple[int, ...], spacing: np.ndarray) -> np.ndarray:
    """1 inside, falling towards 0 at the crop's faces (half a voxel beyond its outer voxel
    centres) over :data:`EDGE_TAPER_MM`.

    Not to 0 at the outer voxels themselves: LIDC crops end at the nodule's first and last slice,
    and a margin cut there would stamp the mask's outline into the nodule's top and bottom.
    """
    taper = np.ones(shape, np.float32)
    for axis, n in enumerate(shape):
        i = np.arange(n, dtype=np.float32)
        edge = (np.minimum(i, n - 1 - i) + 0.5) * float(spacing[axis])
        t = np.clip(edge / EDGE_TAPER_MM, 0.0, 1.0)
        view = [1, 1, 1]
        view[axis] = n
        taper = np.minimum(taper, t.reshape(view))
    return taper


# --------------------------------------------------------------------------- resampling
def _crop_map(background: Volume, crop: NoduleCrop, target: np.ndarray,
              rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(M, b)`` with ``crop_index = M @ background_index + b``.

    Background world ``x`` comes from crop world ``p`` by ``x = R (p - centroid) + target``.
    """
    a_bg = background.direction @ np.diag(background.spacing)
    a_crop_inv = np.linalg.inv(crop.grid.direction @ np.diag(crop.grid.spacing))
    m = a_crop_inv @ rotation.T @ a_bg
    b = a_crop_inv @ (rotation.T @ (np.asarray(background.origin) - target) + crop.centroid_lps
                      - np.asarray(crop.grid.origin))
    return m, b


def _patch_box(shape: tuple[int, int, int], crop: NoduleCrop, m: np.ndarray,
               b: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Background box covering the crop's weight support (clipped to the grid)."""
    lo, hi = crop.support[0] - 0.5, crop.support[1] + 0.5
    corners = np.array([[(lo, hi)[(c >> a) & 1][a] for a in range(3)] for c in range(8)])
    bg = (corners - b) @ np.linalg.inv(m).T
    start = np.maximum(np.floor(bg.min(axis=0)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(bg.max(axis=0)).astype(int) + 2, np.asarray(shape))
    if np.any(stop <= start):
        return None
    return tuple(slice(int(s), int(e)) for s, e in zip(start, stop))  # type: ignore[return-value]


def render_nodule(background: Volume, crop: NoduleCrop, target_lps: Sequence[float],
                  rotation: np.ndarray | None = None) -> NodulePatch | None:
    """Resample ``crop`` onto ``background``'s grid with its mask centroid at ``target_lps``.

    ``rotation`` (3x3 orthogonal, world frame, default identity) turns the crop about its centroid.
    Background voxels larger than the crop's take ``ceil(2 * ratio)`` sub-samples per axis
    (at most :data:`MAX_SUBSAMPLES`). ``None`` when the crop falls outside the grid.
    """
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    m, b = _crop_map(background, crop, np.asarray(target_lps, dtype=np.float64), rot)
    box = _patch_box(background.shape, crop, m, b)
    if box is None:
        return None
    ratio = np.abs(m).max(axis=0)  # crop voxels crossed per background voxel, per background axis
    subs = tuple(1 if r <= 1.01 else int(min(MAX_SUBSAMPLES, math.ceil(2.0 * r))) for r in ratio)
    axes = []
    for a in range(3):
        off = (np.arange(subs[a]) + 0.5) / subs[a] - 0.5
        axes.append((box[a].start + np.arange(box[a].stop - box[a].start)[:, None] + off[None, :]).ravel())
    grid = np.meshgrid(*axes, indexing="ij", sparse=True)
    coords = [m[r, 0] * grid[0] + m[r, 1] * grid[1] + m[r, 2] * grid[2] + b[r] for r in range(3)]
    coords = np.stack([np.broadcast_to(c, tuple(len(x) for x in axes)) for c in coords])
    n = np.asarray(crop.sdf.shape)[:, None, None, None]
    valid = np.all((coords >= -0.5) & (coords <= n - 0.5), axis=0)
    img, sdf, wgt = (ndimage.map_coordinates(a, coords, order=1, mode="nearest", prefilter=False)
                     for a in (crop.image, crop.sdf, crop.weight))
    wgt *= valid
    msk = ((sdf < 0) & valid).astype(np.float32)
    shift = _lung_shift(background, box, crop)
    img = np.where(msk > 0, img, img + np.float32(shift))
    fine = valid.shape
    shape6 = (fine[0] // subs[0], subs[0], fine[1] // subs[1], subs[1], fine[2] // subs[2], subs[2])

    def mean(x: np.ndarray) -> np.ndarray:
        return x.reshape(shape6).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)

    return NodulePatch(box=box, weight=mean(wgt), blend=mean(wgt * img), fraction=mean(msk),
                       subsamples=subs, shift_hu=shift)  # type: ignore[arg-type]


def _lung_shift(background: Volume, box: tuple[slice, ...], crop: NoduleCrop) -> float:
    """HU offset that brings the crop's aerated surroundings to the background's lung level."""
    bg = np.asarray(background.array[box])
    air = bg[bg < LUNG_AIR_HU]
    if air.size < 20 or math.isnan(crop.lung_hu):
        return 0.0
    return float(np.clip(np.median(air) - crop.lung_hu, -MAX_LUNG_SHIFT_HU, MAX_LUNG_SHIFT_HU))


def paste_patch(image: np.ndarray, labels: np.ndarray, patch: NodulePatch, label: int,
                allowed: np.ndarray | None = None) -> int:
    """Composite ``patch`` into ``image`` (HU, in place) and write ``label`` into ``labels``.

    ``w = weight * max(lungness(background), mask fraction)``, 0 on voxels already labelled,
    and ``composite = max(background, background * (1 - w) + crop * w)``: voxels with ``w == 0``
    keep their exact value, and the result is never darker than the background (as in the
    phantoms), so neither a ground-glass nodule nor the crop's own lung punches a dark hole into
    the chest wall, a vessel or denser lung. ``allowed`` (bool, whole grid) limits where the label
    may go. Returns the number of labelled voxels.
    """
    box = patch.box
    bg = image[box].astype(np.float32)
    taken = labels[box] > 0
    lungness = np.clip((VESSEL_HU - bg) / (VESSEL_HU - LUNG_AIR_HU), 0.0, 1.0)
    g = np.maximum(lungness, patch.fraction)
    g[taken] = 0.0
    w = patch.weight * g
    new = np.maximum(bg, bg + g * (patch.blend - patch.weight * bg))
    info = np.iinfo(image.dtype) if image.dtype.kind in "iu" else None
    if info is not None:
        new = np.clip(np.rint(new), info.min, info.max)
    region = image[box]
    change = w > 0
    region[change] = new[change].astype(image.dtype)
    mask = patch.label & ~taken
    if allowed is not None:
        mask &= allowed[box]
    labels[box][mask] = label
    return int(mask.sum())


def _axial_rotation(rng: np.random.Generator) -> tuple[np.ndarray, float, bool]:
    """A random rotation about world z, mirrored left-right half of the time."""
    theta = float(rng.uniform(0.0, 360.0))
    c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    mirrored = bool(rng.random() < 0.5)
    if mirrored:
        rot = rot @ np.diag([-1.0, 1.0, 1.0])
    return rot, theta, mirrored


# --------------------------------------------------------------------------- placement maps
@dataclass
class _LungMaps:
    """Distances (mm) and positions of the background's lung voxels, for choosing targets."""

    lung: np.ndarray  #: bool, whole grid
    box: tuple[slice, slice, slice]
    d_out: np.ndarray  #: in ``box``: distance from a lung voxel to the nearest non-lung voxel
    vessel: np.ndarray  #: in ``box``: lung voxels above VESSEL_HU, at least VESSEL_DEPTH_MM deep
    d_vessel: np.ndarray  #: in ``box``: distance to the nearest vessel voxel
    d_avoid: np.ndarray | None  #: in ``box``: distance to the nearest voxel to avoid
    index: np.ndarray  #: (N, 3) global indices of the lung voxels
    world: np.ndarray  #: (N, 3) their LPS positions
    out_at: np.ndarray  #: (N,) ``d_out`` at them
    vessel_at: np.ndarray  #: (N,) ``d_vessel`` at them
    avoid_at: np.ndarray | None  #: (N,) ``d_avoid`` at them
    mid_x: float
    mid_z: float
    step_mm: float  #: the largest voxel spacing (face-neighbour distance)
    labelable: np.ndarray  #: bool, whole grid: lung, or background below VESSEL_HU (not wall/heart)

    def at(self, name: str, idx: np.ndarray) -> np.ndarray:
        """Values of a box map at global indices ``(..., 3)``."""
        arr = getattr(self, name)
        local = np.asarray(idx) - np.array([s.start for s in self.box])
        return arr[tuple(local[..., a] for a in range(3))]


def _edt_mm(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) from each True voxel to the nearest False one (inf when there is none)."""
    if mask.all():
        return np.full(mask.shape, np.inf, np.float32)
    return ndimage.distance_transform_edt(mask, sampling=spacing).astype(np.float32)


def _lung_maps(background: Volume, lung: np.ndarray, avoid: np.ndarray | None) -> _LungMaps:
    hu = np.asarray(background.array)
    nz = np.argwhere(lung)
    pad = 2
    box = tuple(slice(max(0, int(lo) - pad), min(n, int(hi) + 1 + pad))
                for lo, hi, n in zip(nz.min(axis=0), nz.max(axis=0), lung.shape))
    lung_box = lung[box]
    d_out = _edt_mm(lung_box, background.spacing)
    vessel = lung_box & (hu[box] > VESSEL_HU) & (d_out >= VESSEL_DEPTH_MM)
    d_vessel = _edt_mm(~vessel, background.spacing)
    d_avoid = None
    if avoid is not None and avoid[box].any():
        d_avoid = _edt_mm(~avoid[box], background.spacing)
    world = background.index_to_world(nz).astype(np.float32)
    local = tuple((nz - np.array([s.start for s in box])).T)
    return _LungMaps(lung=lung, box=box, d_out=d_out, vessel=vessel, d_vessel=d_vessel, d_avoid=d_avoid, index=nz,
                     world=world, out_at=d_out[local], vessel_at=d_vessel[local],
                     avoid_at=None if d_avoid is None else d_avoid[local], mid_x=float(world[:, 0].min() + world[:, 0].max()) / 2.0,
                     mid_z=float(world[:, 2].min() + world[:, 2].max()) / 2.0,
                     step_mm=float(max(background.spacing)), labelable=lung | (hu < VESSEL_HU))


def _candidates(maps: _LungMaps, kind: str, crop: NoduleCrop, region: str, shape: tuple[int, int, int],
                spacing: np.ndarray, placed: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
    """Indices (into ``maps.index``) of lung voxels where ``crop`` may go as ``kind``."""
    r, ext = crop.radius_mm, crop.extent_mm
    d_out = maps.out_at
    if kind == "parenchyma":
        ok = d_out >= ext + PARENCHYMA_CLEARANCE_MM
    elif kind == "juxta_vascular":
        d_v = maps.vessel_at
        ok = (d_out >= ext + 1.0) & (d_v >= 0.5 * r) & (d_v <= r + 1.0)
    else:
        tol = 0.5 * float(spacing.min())
        ok = (d_out >= 0.5 * r) & (d_out <= r + tol)
    reach = np.ceil((ext + DILATE_MM + BLEND_MM) / spacing).astype(int)
    ok &= np.all((maps.index >= reach) & (maps.index < np.asarray(shape) - reach), axis=1)
    if maps.avoid_at is not None:
        ok &= maps.avoid_at >= ext + SEPARATION_MM
    side = ext + DILATE_MM + BLEND_MM
    x, z = maps.world[:, 0], maps.world[:, 2]
    if region == "left":  # LPS: +x is the patient's left
        ok &= x >= maps.mid_x + side
    elif region == "right":
        ok &= x <= maps.mid_x - side
    elif region == "upper":  # LPS: +z is superior
        ok &= z >= maps.mid_z + side
    elif region == "lower":
        ok &= z <= maps.mid_z - side
    idx = np.flatnonzero(ok)
    for centre, other_ext in placed:
        far = np.sum((maps.world[idx] - centre) ** 2, axis=1) >= (ext + other_ext + SEPARATION_MM) ** 2
        idx = idx[far]
    return idx


def _sphere(background: Volume, centre: np.ndarray, radius: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """Box around ``centre`` (global index) and the boolean ball of ``radius`` mm in it."""
    sp = np.asarray(background.spacing)
    half = np.ceil(radius / sp).astype(int)
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, np.asarray(background.shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    d2 = sum(((np.arange(lo[a], hi[a]) - centre[a]) * sp[a]).reshape([-1 if k == a else 1 for k in range(3)]) ** 2
             for a in range(3))
    return box, d2 <= radius * radius


def _spot_ok(background: Volume, maps: _LungMaps, kind: str, crop: NoduleCrop, centre: np.ndarray) -> bool:
    """Cheap local checks of a candidate centre before rendering."""
    hu = np.asarray(background.array)
    if hu[tuple(centre)] >= LUNG_AIR_HU:
        return False
    box, ball = _sphere(background, centre, crop.radius_mm + 1.0)
    dense = (hu[box] >= LUNG_AIR_HU)[ball].mean()
    lung = maps.lung[box][ball].mean()
    aerated = hu[box][ball & maps.lung[box]]
    if not aerated.size or np.median(aerated) <= PURE_AIR_HU:
        return False  # pure air: bowel gas or an airway the lung mask let in, a bulla
    if kind == "parenchyma":
        return bool(dense <= PARENCHYMA_DENSE_SHARE and lung == 1.0)
    if kind == "juxta_vascular":
        return bool(lung == 1.0 and dense <= 0.5)
    return bool(lung >= 0.5)


def _placement_ok(maps: _LungMaps, kind: str, patch: NodulePatch, taken: np.ndarray, hu: np.ndarray) -> bool:
    """Does the rendered label fit its kind (and keep clear of placed nodules)?

    Touching means sharing a voxel face: with the lung boundary for ``juxta_pleural``, with a
    vessel voxel for ``juxta_vascular``; ``parenchyma`` touches neither.
    """
    label = patch.label & maps.labelable[patch.box]
    if not label.any() or np.any(taken & ndimage.binary_dilation(label, iterations=2)):
        return False
    bg = hu[patch.box][label].astype(np.float32)
    gain = np.maximum(patch.blend[label] - patch.weight[label] * bg, 0.0)
    if gain.mean() < MIN_CONTRAST_HU:
        return False  # invisible there (a ground-glass nodule in dense, dependent lung)
    grown = ndimage.binary_dilation(label, structure=ndimage.generate_binary_structure(3, 1))
    lung = maps.lung[patch.box]
    in_lung = lung[label]
    if kind == "juxta_pleural":
        touches = not in_lung.all() or not lung[grown].all()
        over_bone = np.any(hu[patch.box][label] >= BONE_HU)
        return bool(touches and in_lung.mean() >= 1.0 - PLEURAL_OUTSIDE_SHARE and not over_bone)
    if not in_lung.all():
        return False
    on_vessel = np.any(_within(maps.vessel, maps.box, patch.box)[grown])
    if kind == "parenchyma":
        idx = np.argwhere(label) + np.array([s.start for s in patch.box])
        return bool(not on_vessel and maps.at("d_out", idx).min() >= PARENCHYMA_CLEARANCE_MM)
    return bool(on_vessel)


def _within(array: np.ndarray, outer: tuple[slice, ...], inner: tuple[slice, ...]) -> np.ndarray:
    """``array`` (covering ``outer``) cut to ``inner``; False where ``inner`` leaves ``outer``."""
    out = np.zeros(tuple(s.stop - s.start for s in inner), dtype=array.dtype)
    lo = [max(i.start, o.start) for i, o in zip(inner, outer)]
    hi = [min(i.stop, o.stop) for i, o in zip(inner, outer)]
    if any(h <= low for low, h in zip(lo, hi)):
        return out
    dst = tuple(slice(low - i.start, h - i.start) for low, h, i in zip(lo, hi, inner))
    src = tuple(slice(low - o.start, h - o.start) for low, h, o in zip(lo, hi, outer))
    out[dst] = array[src]
    return out


# --------------------------------------------------------------------------- building
@dataclass
class _Context:
    """State of one hybrid being built."""

    background: Volume
    image: np.ndarray
    labels: np.ndarray
    maps: _LungMaps
    rng: np.random.Generator
    region: str
    augment: bool
    placed: list[tuple[np.ndarray, float]] = field(default_factory=list)


def build_hybrid(
    background: Volume,
    nodules: Sequence[LidcNodule],
    seed: int = 0,
    *,
    lung_mask: np.ndarray | None = None,
    region: str = "all",
    kinds: Sequence[str] = KINDS,
    avoid: np.ndarray | None = None,
    augment: bool = True,
    background_name: str | None = None,
) -> HybridScan:
    """Place ``nodules`` into ``background`` at random plausible positions (deterministic in ``seed``).

    Args:
        background: a chest CT in HU (any spacing and orientation).
        nodules: the crops to place; they get labels 1..N in placement order (largest first).
            Crops with an empty mask, or that find no room or vanish on the grid, are skipped.
        seed: seeds the kinds, positions, rotations and mirroring.
        lung_mask: lung mask on the background's grid; computed with
            :func:`medseg.inference.lung_mask.compute_lung_mask` when ``None``.
        region: ``all``, ``left``, ``right`` (LPS x) or ``upper``, ``lower`` (half of the lungs'
            axial extent): every nodule with its margin stays inside it.
        kinds: placement kinds to use, assigned in about equal shares; when a nodule finds no
            room as its kind, the other kinds are tried.
        avoid: voxels to keep clear of (e.g. a lesion already in the background), kept at the
            nodule's radius + :data:`SEPARATION_MM`.
        augment: rotate each crop at random about the world z axis and mirror it half the time.
        background_name: recorded name (default: the file name of ``background.source``).

    Raises:
        InputError: a lung mask that does not fit the grid, or no lung in the background.
    """
    _check_choice("region", region, REGIONS)
    for kind in kinds:
        _check_choice("kind", kind, KINDS)
    if not kinds:
        raise ValueError("give at least one placement kind")
    source = background.source or "background"
    lung = _background_lungs(background, lung_mask, source)
    if avoid is not None and tuple(avoid.shape) != background.shape:
        raise InputError(source, f"avoid mask shape {avoid.shape} differs from the background {background.shape}")
    avoid_b = None if avoid is None else np.asarray(avoid) > 0
    image = _as_int16(np.asarray(background.array))
    bg = background.with_array(image)
    ctx = _Context(bg, image.copy(), np.zeros(background.shape, np.uint16), _lung_maps(bg, lung, avoid_b),
                   np.random.default_rng(seed), region, augment)
    crops, skipped = _prepare_all(nodules)
    crops.sort(key=lambda c: -c.extent_mm)
    assigned = ctx.rng.permutation(np.resize(np.asarray(kinds, dtype=object), len(crops))) if crops else []
    placed: list[PlacedNodule] = []
    for crop, kind in zip(crops, assigned):
        order = [str(kind)] + [k for k in kinds if k != kind]
        got = _place_one(ctx, crop, order, len(placed) + 1)
        if isinstance(got, PlacedNodule):
            placed.append(got)
        else:
            skipped.append(f"{crop.source.file}: {got}")
    lungs = (lung | (ctx.labels > 0)).astype(np.uint8)
    return HybridScan(volume=bg.with_array(ctx.image, modality="CT"), labels=ctx.labels, nodules=placed,
                      background=background_name or Path(source).name, region=region, seed=int(seed),
                      skipped=skipped, lungs=lungs)


def _check_choice(what: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")


def _as_int16(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.int16:
        return array
    return np.clip(np.rint(array), -32768, 32767).astype(np.int16)


def _background_lungs(background: Volume, lung_mask: np.ndarray | None, source: str) -> np.ndarray:
    if lung_mask is None:
        from medseg.inference.lung_mask import compute_lung_mask

        lung = np.asarray(compute_lung_mask(background).mask) > 0
    else:
        if tuple(lung_mask.shape) != background.shape:
            raise InputError(source, f"lung mask shape {lung_mask.shape} differs from the background {background.shape}")
        lung = np.asarray(lung_mask) > 0
    if not lung.any():
        raise InputError(source, "no lung found in the background: cannot place nodules")
    return lung


def _prepare_all(nodules: Sequence[LidcNodule]) -> tuple[list[NoduleCrop], list[str]]:
    crops, skipped = [], []
    for nodule in nodules:
        crop = prepare_crop(nodule)
        if crop is None:
            skipped.append(f"{nodule.file}: empty nodule mask")
        else:
            crops.append(crop)
    return crops, skipped


def _place_one(ctx: _Context, crop: NoduleCrop, kinds: Sequence[str], label: int) -> PlacedNodule | str:
    """Try each kind in turn; the placed nodule, or why it was not placed."""
    bg, maps, rng = ctx.background, ctx.maps, ctx.rng
    spacing = np.asarray(bg.spacing)
    renders = vanished = 0
    for kind in kinds:
        idx = _candidates(maps, kind, crop, ctx.region, bg.shape, spacing, ctx.placed)
        for _ in range(TRIES_PER_KIND if len(idx) else 0):
            centre = maps.index[idx[rng.integers(len(idx))]]
            if not _spot_ok(bg, maps, kind, crop, centre):
                continue
            rot, theta, mirrored = _axial_rotation(rng) if ctx.augment else (np.eye(3), 0.0, False)
            target = bg.index_to_world(centre + rng.uniform(-0.5, 0.5, 3))
            patch = render_nodule(bg, crop, target, rot)
            if patch is None:
                continue
            renders += 1
            vanished += int(not patch.label.any())
            if not _placement_ok(maps, kind, patch, ctx.labels[patch.box] > 0, bg.array):
                continue
            voxels = paste_patch(ctx.image, ctx.labels, patch, label, maps.labelable)
            ctx.placed.append((np.asarray(target, np.float32), crop.extent_mm))
            return _record(bg, ctx.labels, patch, crop, kind, label, voxels, theta, mirrored)
    if renders and vanished == renders:
        return "nodule mask vanishes on the background grid"
    return "no room for it in the lung (" + "/".join(kinds) + ")"


def _record(bg: Volume, labels: np.ndarray, patch: NodulePatch, crop: NoduleCrop, kind: str, label: int,
            voxels: int, theta: float, mirrored: bool) -> PlacedNodule:
    """The placed nodule's facts; its centre is the label centroid kept inside a label voxel."""
    start = np.array([s.start for s in patch.box])
    idx = np.argwhere(labels[patch.box] == label)
    cen = idx.mean(axis=0)
    near = idx[np.argmin(((idx - cen) ** 2).sum(axis=1))]
    cen = near + np.clip(cen - near, -0.4, 0.4)  # rounding the centre finds a label voxel
    volume = voxels * bg.voxel_volume_mm3
    src = crop.source
    return PlacedNodule(
        label=label, lidc_file=src.file, patient_id=src.patient_id, texture=src.texture,
        diameter_mm=(6.0 * volume / math.pi) ** (1.0 / 3.0), kind=kind,
        centre_lps=tuple(float(v) for v in bg.index_to_world(start + cen)),  # type: ignore[arg-type]
        voxels=voxels, volume_mm3=volume, lidc_diameter_mm=float(src.diameter_mm),
        centre_ijk=tuple(int(v) for v in start + near),  # type: ignore[arg-type]
        rotation_deg=theta, mirrored=mirrored, texture_class=texture_class(src))


# --------------------------------------------------------------------------- output
def hybrid_info(scan: HybridScan) -> dict[str, Any]:
    """JSON-able facts, shaped like a phantom's JSON.

    Per nodule: ``id`` (label), ``kind`` (``solid``/``part-solid``/``ground-glass``) and
    ``location`` (``isolated``/``juxta-vascular``/``juxta-pleural``) as in phantom sets, plus
    ``placement`` (one of :data:`KINDS`), the LIDC ``texture``, ``lidc_file``, ``patient_id``.
    """
    vol = scan.volume
    nodules = [{
        "id": n.label, "kind": n.texture_class, "location": LOCATION_OF_KIND[n.kind], "placement": n.kind,
        "texture": n.texture, "lidc_file": n.lidc_file, "patient_id": n.patient_id,
        "centre_lps_mm": [round(v, 3) for v in n.centre_lps], "centre_ijk": list(n.centre_ijk),
        "diameter_mm": round(n.diameter_mm, 3),
        "lidc_diameter_mm": None if math.isnan(n.lidc_diameter_mm) else round(n.lidc_diameter_mm, 3),
        "volume_mm3": round(n.volume_mm3, 4), "voxels": n.voxels,
        "rotation_deg": round(n.rotation_deg, 2), "mirrored": n.mirrored,
    } for n in scan.nodules]
    lung_ml = None if scan.lungs is None else round(float(scan.lungs.sum()) * vol.voxel_volume_mm3 / 1000.0, 2)
    return {
        "generator": "medseg.data.hybrid", "background": scan.background, "region": scan.region,
        "seed": scan.seed, "size": list(vol.shape), "spacing": [float(v) for v in vol.spacing],
        "origin": [round(float(v), 6) for v in vol.origin],
        "direction": [float(v) for v in vol.direction.flatten()], "orientation": vol.orientation,
        "modality": "CT", "lung_volume_ml": lung_ml,
        "diameter_definition": "equivalent-sphere diameter of the voxel-counted label volume",
        "nodules": nodules, "skipped": list(scan.skipped),
    }


def write_hybrid(scan: HybridScan, out_dir: str | os.PathLike[str], name: str, *, lungs: bool = True) -> HybridPaths:
    """Write ``<name>.nii.gz``, ``<name>_nodules.nii.gz`` (``_lungs.nii.gz``) and, last, ``<name>.json``.

    Every file is written atomically; the JSON's presence marks a complete scan.
    """
    out = Path(out_dir)
    ct, nod = out / f"{name}.nii.gz", out / f"{name}_nodules.nii.gz"
    write_mask(scan.volume.array, scan.volume, ct, np.int16)
    write_mask(scan.labels, scan.volume, nod, np.uint16)
    lung_path = None
    if lungs and scan.lungs is not None:
        lung_path = write_mask(scan.lungs, scan.volume, out / f"{name}_lungs.nii.gz", np.uint8)
    info = hybrid_info(scan)
    info["files"] = {"ct": ct.name, "nodules": nod.name, **({"lungs": lung_path.name} if lung_path else {})}
    js = write_json_atomic(out / f"{name}.json", info)
    return HybridPaths(ct=ct, nodules=nod, lungs=lung_path, json=js)


# --------------------------------------------------------------------------- patients
def split_by_patient(nodules: Sequence[LidcNodule], test_fraction: float = 0.2, seed: int = 0) -> PatientSplit:
    """Split the crops' patients into two disjoint sets, deterministic in ``seed``.

    Patients are shuffled with ``seed`` and moved to ``test`` until it holds ``test_fraction`` of
    the nodules (at least one patient on each side when there are two or more).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie between 0 and 1, got {test_fraction}")
    counts: dict[str, int] = {}
    for n in nodules:
        counts[n.patient_id] = counts.get(n.patient_id, 0) + 1
    if len(counts) < 2:
        raise InputError(None, f"need nodules of at least 2 patients to split, got {len(counts)}")
    names = sorted(counts)
    shuffled = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    goal = test_fraction * sum(counts.values())
    test: list[str] = []
    total = 0
    for pid in shuffled[:-1]:
        if total >= goal and test:
            break
        test.append(pid)
        total += counts[pid]
    chosen = set(test)
    return PatientSplit(train=sorted(p for p in names if p not in chosen), test=sorted(test))


def read_patient_list(path: str | os.PathLike[str]) -> list[str]:
    """Patient ids, one a line (blank lines and ``#`` comments ignored)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(p, f"cannot read the patient list ({exc})") from exc
    ids = [s for s in (line.split("#", 1)[0].strip() for line in lines) if s]
    if not ids:
        raise InputError(p, "patient list is empty")
    return ids


def write_patient_list(path: str | os.PathLike[str], ids: Sequence[str]) -> Path:
    """Write patient ids one a line, atomically."""
    return write_text_atomic(path, "".join(f"{i}\n" for i in ids))


def filter_by_patients(nodules: Sequence[LidcNodule], include: Sequence[str] | None = None,
                       exclude: Sequence[str] | None = None) -> list[LidcNodule]:
    """The crops of the ``include`` patients (all when ``None``) minus those of ``exclude``."""
    keep = None if include is None else set(include)
    drop = set(exclude or ())
    out = [n for n in nodules if (keep is None or n.patient_id in keep) and n.patient_id not in drop]
    if not out:
        raise InputError(None, "no LIDC crops left after the patient selection")
    return out


def sample_nodules(pool: Sequence[LidcNodule], count: int, seed: int, salt: str = "") -> list[LidcNodule]:
    """``count`` different crops drawn from ``pool`` (all of them when fewer), deterministic in
    ``seed`` and ``salt`` (e.g. the background's name, so backgrounds get different nodules)."""
    rng = np.random.default_rng([int(seed), zlib.crc32(salt.encode("utf-8"))])
    order = rng.permutation(len(pool))[: max(0, int(count))]
    return [pool[i] for i in order]
