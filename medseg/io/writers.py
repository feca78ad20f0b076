"""Write volumes and masks as NIfTI, atomically, on exactly the reference grid."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg.io.atomic import atomic_path
from medseg.io.volume import Volume


def write_volume(volume: Volume, path: str | os.PathLike[str], dtype: np.dtype | type | None = None) -> Path:
    """Write ``volume`` to ``path`` (``.nii``/``.nii.gz``; ``.nrrd``/``.mha`` via SimpleITK) atomically."""
    target = Path(path)
    array = volume.array if dtype is None else volume.array.astype(dtype, copy=False)
    name = target.name.lower()
    with atomic_path(target) as tmp:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.Nifti1Image(np.asarray(array), volume.affine_ras)
            img.set_sform(volume.affine_ras, code=1)
            img.set_qform(volume.affine_ras, code=1)
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, str(tmp))
        elif name.endswith((".nrrd", ".mha", ".mhd")):
            import SimpleITK as sitk

            img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
            img.SetSpacing(volume.spacing)
            img.SetOrigin(volume.origin)
            img.SetDirection(tuple(volume.direction.flatten()))
            sitk.WriteImage(img, str(tmp), True)
        else:
            raise ValueError(f"{target}: cannot write this format (use .nii.gz, .nrrd or .mha)")
    return target


def write_mask(
    mask: np.ndarray,
    reference: Volume,
    path: str | os.PathLike[str],
    dtype: np.dtype | type = np.uint8,
) -> Path:
    """Write ``mask`` (shape of ``reference``) as NIfTI on the reference's exact grid."""
    if tuple(mask.shape) != reference.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the reference grid {reference.shape}")
    return write_volume(reference.with_array(np.asarray(mask)), path, dtype=dtype)
