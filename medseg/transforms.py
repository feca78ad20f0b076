"""Preprocessing shared by training and inference, and MONAI pipelines built from a plan.

``normalise_ct`` is the single definition of CT intensity handling: training transforms and the
inference path both call it, so a model always sees the intensities it was trained on.
"""

from __future__ import annotations

import numpy as np
from monai.transforms import MapTransform

from medseg.plan import IntensityPlan, Plan


def normalise_ct(array: np.ndarray, intensity: IntensityPlan) -> np.ndarray:
    """Clip HU to ``intensity.clip`` then standardise with the plan's mean/std (float32)."""
    lo, hi = intensity.clip
    out = np.clip(np.asarray(array, dtype=np.float32), lo, hi)
    out -= np.float32(intensity.mean)
    out /= np.float32(intensity.std)
    return out


def pad_value(intensity: IntensityPlan) -> float:
    """Normalised value of the lowest clipped HU (air): what patches and windows are padded with.

    Training pads small cases to the patch size with it, and sliding-window inference should pass
    it as ``cval`` so a model sees the same padding in both.
    """
    return float((intensity.clip[0] - intensity.mean) / intensity.std)


# --- MONAI dictionary transforms (module level so DataLoader workers can pickle them) ---------


class LoadVolumed(MapTransform):
    """Read ``keys`` with :func:`medseg.io.read_volume` into channel-first ``MetaTensor``s.

    Uses medseg's own reader (NIfTI, NRRD, MHA, DICOM) so training sees exactly the geometry that
    inference sees; the MONAI affine is the volume's RAS affine.
    """

    def __init__(self, keys, dtype=None, allow_missing_keys: bool = False) -> None:  # noqa: ANN001
        super().__init__(keys, allow_missing_keys)
        self.dtype = dtype

    def __call__(self, data):  # noqa: ANN001, ANN204
        import torch
        from monai.data import MetaTensor

        from medseg.io import read_volume

        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            vol = read_volume(path)
            arr = np.asarray(vol.array)
            arr = arr.astype(self.dtype or np.float32, copy=False)
            d[key] = MetaTensor(
                torch.from_numpy(np.ascontiguousarray(arr))[None],
                affine=torch.as_tensor(vol.affine_ras, dtype=torch.float64),
                meta={"filename_or_obj": str(path)},
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


class BinariseLabeld(MapTransform):
    """Any label value > 0 becomes foreground 1 (instance label maps train as binary)."""

    def __call__(self, data):  # noqa: ANN001, ANN204
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = (d[key] > 0).to(d[key].dtype)
        return d


def _preprocess(plan: Plan):  # noqa: ANN202
    """Deterministic part shared by training and validation (cached by ``CacheDataset``)."""
    from monai.transforms import EnsureTyped, Orientationd, Spacingd, SpatialPadd

    return [
        LoadVolumed(["image", "label"]),
        BinariseLabeld("label"),
        Orientationd(["image", "label"], axcodes=plan.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(["image", "label"], pixdim=plan.spacing, mode=("bilinear", "nearest")),
        NormaliseCTd("image", plan.intensity),
        SpatialPadd("image", spatial_size=plan.patch_size, mode="constant", value=pad_value(plan.intensity)),
        SpatialPadd("label", spatial_size=plan.patch_size, mode="constant", value=0),
        EnsureTyped(["image", "label"], dtype=np.float32, track_meta=False),
    ]


def train_transforms(plan: Plan, task: dict | None = None):  # noqa: ANN201
    """Training pipeline: load, RAS, resample, normalise, pad; fg-oversampled crop; augmentation."""
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    task = task or {}
    samp = task.get("sampling", {})
    aug = task.get("augmentation", {})
    keys = ["image", "label"]
    patch = list(plan.patch_size)
    xs: list = _preprocess(plan)
    xs.append(
        RandCropByPosNegLabeld(
            keys, label_key="label", spatial_size=patch, pos=float(samp.get("pos", 2)),
            neg=float(samp.get("neg", 1)), num_samples=1,
        )
    )
    if aug.get("affine", 0):
        rot = np.deg2rad(float(aug.get("rotate_deg", 15.0)))
        scale = float(aug.get("scale", 0.15))
        xs.append(
            RandAffined(
                keys, prob=float(aug["affine"]), rotate_range=(0.0, 0.0, rot), scale_range=(scale,) * 3,
                mode=("bilinear", "nearest"), padding_mode=("border", "zeros"), spatial_size=patch,
            )
        )
    flip = float(aug.get("flip", 0))
    if flip:
        xs += [RandFlipd(keys, prob=flip, spatial_axis=a) for a in range(3)]
    if aug.get("rot90", 0) and patch[0] == patch[1]:
        xs.append(RandRotate90d(keys, prob=float(aug["rot90"]), max_k=3, spatial_axes=(0, 1)))
    if aug.get("intensity_scale", 0):
        xs.append(RandScaleIntensityd("image", factors=0.1, prob=float(aug["intensity_scale"])))
    if aug.get("intensity_shift", 0):
        xs.append(RandShiftIntensityd("image", offsets=0.1, prob=float(aug["intensity_shift"])))
    if aug.get("noise", 0):
        xs.append(RandGaussianNoised("image", prob=float(aug["noise"]), std=0.05))
    if aug.get("contrast", 0):
        xs.append(RandAdjustContrastd("image", prob=float(aug["contrast"]), gamma=(0.7, 1.5)))
    return Compose(xs)


def val_transforms(plan: Plan):  # noqa: ANN201
    """Validation pipeline: the deterministic preprocessing only (whole case, no crop)."""
    from monai.transforms import Compose

    return Compose(_preprocess(plan))
