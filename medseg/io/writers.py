"""Write volumes and masks as NIfTI, NRRD or MHA, atomically, on exactly the reference grid."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg.io.atomic import atomic_path
from medseg.io.volume import Volume

#: Output image formats (``medseg infer --format``): file suffix without the leading dot.
#: ``.mhd`` is not written: its separate ``.raw`` data file cannot be renamed into place atomically.
OUTPUT_FORMATS = ("nii.gz", "nrrd", "mha")


def image_suffix(output_format: str) -> str:
    """``".nii.gz"`` for ``"nii.gz"``...; ValueError for a format not in :data:`OUTPUT_FORMATS`."""
    fmt = output_format.lower().lstrip(".")
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    return f".{fmt}"


def write_volume(volume: Volume, path: str | os.PathLike[str], dtype: np.dtype | type | None = None) -> Path:
    """Write ``volume`` to ``path`` atomically: ``.nii``/``.nii.gz`` (nibabel, sform and qform set)
    or ``.nrrd``/``.mha`` (SimpleITK, compressed), the format chosen by the suffix."""
    target = Path(path)
    array = volume.array if dtype is None else volume.array.astype(dtype, copy=False)
    name = target.name.lower()
    if not name.endswith((".nii", ".nii.gz", ".nrrd", ".mha")):
        raise ValueError(f"{target}: cannot write this format (use .nii.gz, .nrrd or .mha)")
    with atomic_path(target) as tmp:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.Nifti1Image(np.asarray(array), volume.affine_ras)
            img.set_sform(volume.affine_ras, code=1)
            img.set_qform(volume.affine_ras, code=1)
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, str(tmp))
        else:
            import SimpleITK as sitk

            img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
            img.SetSpacing(volume.spacing)
            img.SetOrigin(volume.origin)
            img.SetDirection(tuple(volume.direction.flatten()))
            sitk.WriteImage(img, str(tmp), True)
    return target


def write_mask(
    mask: np.ndarray,
    reference: Volume,
    path: str | os.PathLike[str],
    dtype: np.dtype | type = np.uint8,
) -> Path:
    """Write ``mask`` (shape of ``reference``) on the reference's exact grid, in the format of
    ``path``'s suffix (``.nii.gz``, ``.nrrd`` or ``.mha``)."""
    if tuple(mask.shape) != reference.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the reference grid {reference.shape}")
    return write_volume(reference.with_array(np.asarray(mask)), path, dtype=dtype)
