"""MONAI pipelines built from a plan, on the one preprocessing definition of :mod:`medseg.preprocess`.

Orientation, the plan grid, CT normalisation and resampling are defined once in
:mod:`medseg.preprocess`; :class:`PlanResampled` applies them here exactly as inference does, so
a training or validation case is the array ``Predictor`` would feed its sliding window.
``normalise_ct`` and ``pad_value`` are re-exported from there (they were defined here).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import MapTransform

from medseg.plan import IntensityPlan, Plan
from medseg.preprocess import PlanGrid, normalise_ct, pad_value
from medseg.tasks import AugmentationTask, TaskConfig

# --- MONAI dictionary transforms (module level so DataLoader workers can pickle them) ---------


class LoadVolumed(MapTransform):
    """Read ``keys`` with :func:`medseg.io.read_volume` into channel-first ``MetaTensor``s.

    Uses medseg's own reader (NIfTI, NRRD, MHA, DICOM) so training sees exactly the geometry that
    inference sees; the MONAI affine is the volume's RAS affine. A DICOM SEG (which stores only its
    segmented frames) is placed on the grid of the first key's volume, the image.
    """

    def __init__(self, keys, dtype=None, allow_missing_keys: bool = False) -> None:  # noqa: ANN001
        super().__init__(keys, allow_missing_keys)
        self.dtype = dtype

    def __call__(self, data):  # noqa: ANN001, ANN204
        import torch
        from monai.data import MetaTensor

        from medseg.io import read_volume

        d = dict(data)
        first = None  # the first key's volume (the image): a DICOM SEG label is placed on its grid
        for key in self.key_iterator(d):
            path = d[key]
            vol = read_volume(path, reference=first)
            first = vol if first is None else first
            arr = np.asarray(vol.array)
            arr = arr.astype(self.dtype or np.float32, copy=False)
            d[key] = MetaTensor(
                torch.from_numpy(np.ascontiguousarray(arr))[None],
                affine=torch.as_tensor(vol.affine_ras, dtype=torch.float64),
                # the reader's voxel size: the plan grid uses it rather than the affine's column norms
                meta={"filename_or_obj": str(path), "spacing": tuple(vol.spacing)},
            )
        return d


class NormaliseCTd(MapTransform):
    """:func:`normalise_ct` as a MONAI transform (keeps the MetaTensor's geometry)."""

    def __init__(self, keys, intensity: IntensityPlan, allow_missing_keys: bool = False) -> None:  # noqa: ANN001
        super().__init__(keys, allow_missing_keys)
        self.intensity = intensity

    def __call__(self, data):  # noqa: ANN001, ANN204
        import torch
        from monai.data import MetaTensor

        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            out = torch.from_numpy(normalise_ct(np.asarray(img.detach().cpu()), self.intensity))
            d[key] = MetaTensor(out, meta=dict(img.meta)) if isinstance(img, MetaTensor) else out
        return d


class PlanResampled(MapTransform):
    """Put ``keys`` on the plan grid exactly as inference does (:mod:`medseg.preprocess`).

    ``image_key`` (HU) is normalised with :func:`normalise_ct` and resampled trilinearly: the array
    :meth:`medseg.inference.predictor.Predictor.network_input` builds for the same scan. Every other
    key (labels) takes the nearest voxel. With ``hu_key``, the image is also resampled without
    normalisation into that key, for transforms that work in HU (:class:`HardNegativeMapd`).
    Inputs are channel-first single-channel MetaTensors as :class:`LoadVolumed` makes; outputs are
    float32 MetaTensors ``[1, *plan grid]`` whose affine is the plan grid's.
    """

    def __init__(self, keys, plan: Plan, image_key: str = "image", hu_key: str | None = None,  # noqa: ANN001
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        # the plan's parts only: small to pickle into DataLoader workers
        self.spacing = tuple(float(s) for s in plan.spacing)
        self.orientation = plan.orientation
        self.intensity = plan.intensity
        self.image_key, self.hu_key = image_key, hu_key

    def __call__(self, data):  # noqa: ANN001, ANN204
        d = dict(data)
        for key in self.key_iterator(d):
            src = d[key]
            arr, grid = self._grid(src)
            box = grid.whole()
            if key == self.image_key:
                if self.hu_key is not None:
                    d[self.hu_key] = _on_grid(box.image(arr).full(), grid, src)
                out = box.image(arr, self.intensity).full()
            else:
                out = box.label(arr)
            d[key] = _on_grid(out, grid, src)
        return d

    def _grid(self, img) -> tuple[np.ndarray, PlanGrid]:  # noqa: ANN001
        """The single channel of ``img`` and its plan grid (from the MetaTensor's affine)."""
        arr = np.asarray(img.detach().cpu())
        if arr.ndim != 4 or arr.shape[0] != 1:
            raise ValueError(f"PlanResampled expects channel-first single-channel data, got shape {arr.shape}")
        meta = getattr(img, "meta", {})
        affine = np.asarray(img.affine, dtype=np.float64)
        return arr[0], PlanGrid.from_affine(arr.shape[1:], affine, self.spacing, self.orientation, meta.get("spacing"))


def _on_grid(array: np.ndarray, grid: PlanGrid, like) -> object:  # noqa: ANN001
    """``array`` (plan grid) as a channel-first MetaTensor carrying the plan grid's geometry."""
    import torch
    from monai.data import MetaTensor

    meta = {k: v for k, v in getattr(like, "meta", {}).items() if k not in ("affine", "spacing")}
    meta["spacing"] = grid.target
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    return MetaTensor(tensor, affine=torch.as_tensor(grid.grid_affine, dtype=torch.float64), meta=meta)


class BinariseLabeld(MapTransform):
    """Any label value > 0 becomes foreground 1 (instance label maps train as binary)."""

    def __call__(self, data):  # noqa: ANN001, ANN204
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = (d[key] > 0).to(d[key].dtype)
        return d


class OwnMemoryd(MapTransform):
    """Give each cropped array its own float32 memory (a crop is a view of the cached whole case,
    whose label is cached as uint8).

    Training reads cached cases without MONAI's per-draw deep copy (``copy_cache=False``, see
    :func:`medseg.training.run.training_dataset`): copying a whole-scan case (hundreds of MB at the
    plan spacing) for every 48x48x16 patch tripled the training step. This copy of the patch alone
    keeps any later in-place transform from writing into the cache.
    """

    def __call__(self, data):  # noqa: ANN001, ANN204
        d = dict(data)
        for key in self.key_iterator(d):
            v = d[key]
            d[key] = v.to(torch.float32, copy=True) if isinstance(v, torch.Tensor) else np.array(v, np.float32)
        return d


class HardNegativeMapd(MapTransform):
    """Add ``sampling_key``: 1 = foreground, 2 = hard negative, 0 = any other voxel.

    A hard negative is a dense voxel (>= ``min_hu``) that is not foreground and sits in aerated
    surroundings (mean HU over a ``context_mm`` box <= ``max_context_hu``): vessels, airway walls
    and fissures inside the lung, which are what a nodule model mistakes for nodules on a whole
    scan. Random background patches rarely land on them, so they are sampled on purpose. Runs on
    the HU image (before normalisation); ``spacing`` is the image's voxel size in mm.
    """

    def __init__(self, image_key: str, label_key: str, sampling_key: str, spacing, min_hu: float = -500.0,  # noqa: ANN001
                 max_context_hu: float = -500.0, context_mm: float = 6.0) -> None:
        super().__init__([image_key, label_key])
        self.image_key, self.label_key, self.sampling_key = image_key, label_key, sampling_key
        self.spacing = [float(s) for s in spacing]
        self.min_hu, self.max_context_hu, self.context_mm = float(min_hu), float(max_context_hu), float(context_mm)

    def __call__(self, data):  # noqa: ANN001, ANN204
        import torch
        from scipy import ndimage

        d = dict(data)
        img = np.asarray(d[self.image_key].detach().cpu())[0].astype(np.float32, copy=False)
        fg = np.asarray(d[self.label_key].detach().cpu())[0] > 0
        size = [max(1, int(round(self.context_mm / s)) | 1) for s in self.spacing]  # odd, centred box
        context = ndimage.uniform_filter(img, size=size, mode="nearest")
        out = np.zeros(img.shape, np.uint8)
        out[(img >= self.min_hu) & (context <= self.max_context_hu) & ~fg] = 2
        out[fg] = 1
        d[self.sampling_key] = torch.from_numpy(out)[None]
        return d


class LesionBalancedIndicesd(MapTransform):
    """Make every lesion equally likely as a foreground crop centre, whatever its size.

    ``ClassesToIndicesd`` lists foreground voxels, so a uniform draw picks lesions in proportion to
    their volume: in a whole scan with a 20 mm and a 5 mm nodule the small one (64x fewer voxels)
    is almost never a patch centre, and small nodules are what a model misses. This rewrites the
    ``fg_class`` index list as an equal share per lesion (26-connected component of the label),
    drawn with replacement from that lesion's voxels, keeping the list's length.
    """

    def __init__(self, label_key: str, indices_key: str, fg_class: int = 1, seed: int = 0) -> None:
        super().__init__([label_key, indices_key])
        self.label_key, self.indices_key, self.fg_class = label_key, indices_key, int(fg_class)
        self.seed = int(seed)

    def __call__(self, data):  # noqa: ANN001, ANN204
        import cc3d

        d = dict(data)
        indices = list(d[self.indices_key])
        fg = np.asarray(indices[self.fg_class]).ravel()
        if fg.size == 0:
            return d
        lab = np.asarray(d[self.label_key].detach().cpu() if hasattr(d[self.label_key], "detach") else d[self.label_key])
        comps = cc3d.connected_components(lab[0] > 0, connectivity=26)
        lesion = comps.ravel()[fg]
        ids = np.unique(lesion[lesion > 0])
        if len(ids) < 2:
            return d
        share = max(1, -(-fg.size // len(ids)))
        rng = np.random.default_rng(self.seed)  # cached once per case: deterministic
        picked = [rng.choice(fg[lesion == i], size=share, replace=True) for i in ids]
        indices[self.fg_class] = np.concatenate(picked).astype(fg.dtype)
        d[self.indices_key] = indices
        return d


def _preprocess(plan: Plan, hard_negatives: dict | None = None, max_indices: int = 200_000):  # noqa: ANN202
    """Deterministic part shared by training and validation (cached by ``CacheDataset``).

    The image is put on the plan grid and normalised by :class:`PlanResampled`, exactly as
    inference builds its network input. With ``hard_negatives`` (training), a three-class sampling
    map is built from the HU image on the same grid (see :class:`HardNegativeMapd`) and reduced to
    at most ``max_indices`` crop centres per class, so the random crop does not rescan a whole-scan
    volume on every draw.
    """
    from monai.transforms import ClassesToIndicesd, DeleteItemsd, EnsureTyped, SpatialPadd

    hu_key = "image_hu" if hard_negatives is not None else None
    xs = [
        LoadVolumed(["image", "label"]),
        BinariseLabeld("label"),
        PlanResampled(["image", "label"], plan, image_key="image", hu_key=hu_key),
    ]
    if hard_negatives is not None:
        opts = {k: hard_negatives[k] for k in ("min_hu", "max_context_hu", "context_mm") if k in hard_negatives}
        # mined in HU: the normalised image is clipped, which would shift the context means
        xs += [HardNegativeMapd(hu_key, "label", "sampling", plan.spacing, **opts), DeleteItemsd(hu_key)]
    xs += [
        SpatialPadd("image", spatial_size=plan.patch_size, mode="constant", value=pad_value(plan.intensity)),
        SpatialPadd("label", spatial_size=plan.patch_size, mode="constant", value=0),
    ]
    if hard_negatives is not None:
        xs += [
            SpatialPadd("sampling", spatial_size=plan.patch_size, mode="constant", value=0),
            ClassesToIndicesd("sampling", indices_postfix="_idx", num_classes=3, max_samples_per_class=max_indices),
            DeleteItemsd("sampling"),
            LesionBalancedIndicesd("label", "sampling_idx", fg_class=1),
        ]
    # the label is cached as uint8 (a quarter of float32: whole-scan cases are tens of M voxels);
    # OwnMemoryd makes each training patch float32 again
    xs += [EnsureTyped("image", dtype=np.float32, track_meta=False),
           EnsureTyped("label", dtype=np.uint8, track_meta=False)]
    return xs


def train_transforms(plan: Plan, task: TaskConfig | None = None):  # noqa: ANN201
    """Training pipeline: load, RAS, resample, normalise, pad; fg-oversampled crop; augmentation.

    ``task`` supplies the sampling and augmentation settings (None: the task defaults).
    """
    from dataclasses import asdict

    from monai.transforms import Compose, DeleteItemsd, RandCropByLabelClassesd, RandCropByPosNegLabeld

    task = task if task is not None else TaskConfig()
    samp = task.sampling
    keys = ["image", "label"]
    patch = list(plan.patch_size)
    if samp.hard_negative.ratio > 0:
        # background : foreground : hard negative; a class a case lacks is skipped for that case
        xs: list = _preprocess(plan, hard_negatives=asdict(samp.hard_negative))
        ratios = [samp.neg, samp.pos, samp.hard_negative.ratio]
        xs += [
            RandCropByLabelClassesd(keys, label_key="label", spatial_size=patch, ratios=ratios, num_classes=3,
                                    num_samples=1, indices_key="sampling_idx", warn=False),
            DeleteItemsd("sampling_idx"),
            OwnMemoryd(keys),
        ]
    else:
        xs = _preprocess(plan)
        xs += [RandCropByPosNegLabeld(keys, label_key="label", spatial_size=patch, pos=samp.pos, neg=samp.neg,
                                      num_samples=1), OwnMemoryd(keys)]
    return Compose(xs + _augmentations(task.augmentation, keys, patch))


def _augmentations(aug: AugmentationTask, keys: list[str], patch: list[int]) -> list:
    """The random augmentations of a task's ``augmentation`` section (those with probability > 0)."""
    from monai.transforms import (
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandSimulateLowResolutiond,
    )

    xs: list = []
    if aug.affine:
        xs.append(RandAffined(keys, prob=aug.affine, rotate_range=(0.0, 0.0, np.deg2rad(aug.rotate_deg)),
                              scale_range=(aug.scale,) * 3, mode=("bilinear", "nearest"),
                              padding_mode=("border", "zeros"), spatial_size=patch))
    if aug.flip:
        xs += [RandFlipd(keys, prob=aug.flip, spatial_axis=a) for a in range(3)]
    if aug.rot90 and patch[0] == patch[1]:
        xs.append(RandRotate90d(keys, prob=aug.rot90, max_k=3, spatial_axes=(0, 1)))
    if aug.intensity_scale:
        xs.append(RandScaleIntensityd("image", factors=0.1, prob=aug.intensity_scale))
    if aug.intensity_shift:
        xs.append(RandShiftIntensityd("image", offsets=0.1, prob=aug.intensity_shift))
    if aug.noise:
        xs.append(RandGaussianNoised("image", prob=aug.noise, std=0.05))
    if aug.contrast:
        xs.append(RandAdjustContrastd("image", prob=aug.contrast, gamma=(0.7, 1.5)))
    if aug.low_resolution:
        # nnU-Net's low-resolution simulation: the image (never the label) is shrunk by a random
        # zoom and blown back up, so the network sees the blur of coarser scans than its spacing.
        xs.append(RandSimulateLowResolutiond("image", prob=aug.low_resolution, zoom_range=aug.low_resolution_zoom))
    return xs


def val_transforms(plan: Plan):  # noqa: ANN201
    """Validation pipeline: the deterministic preprocessing only (whole case, no crop)."""
    from monai.transforms import Compose

    return Compose(_preprocess(plan))
