"""Read any supported medical image into a :class:`~medseg.io.volume.Volume`.

NIfTI goes through nibabel (exact header affine, scaled data); NRRD and MHA/MHD through
SimpleITK; DICOM series folders through :mod:`medseg.io.dicom`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.io.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES


def case_name(path: str | os.PathLike[str]) -> str:
    """The input's name without its image extension (``scan.nii.gz`` -> ``scan``)."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES + DICOM_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for file names medseg reads as single-file volumes."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read a NIfTI / NRRD / MHA / MHD file or a DICOM series folder.

    Raises :class:`~medseg.errors.InputError` naming ``path`` for a missing path, an unreadable,
    truncated or corrupt file, a 2D image, a folder without DICOM images, or an unsupported format.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file or folder")
    if p.is_dir():
        from medseg.io.dicom import read_dicom_series

        return read_dicom_series(p)
    lower = p.name.lower()
    if lower.endswith(NIFTI_SUFFIXES):
        return _read_nifti(p)
    if lower.endswith(ITK_SUFFIXES):
        return _read_itk(p)
    if lower.endswith(DICOM_SUFFIXES) or _has_dicom_preamble(p):
        from medseg.io.dicom import read_dicom_series

        return read_dicom_series(p.parent)
    raise InputError(
        p,
        "unsupported format (expected .nii, .nii.gz, .nrrd, .mha, .mhd or a DICOM series folder)",
    )


def _has_dicom_preamble(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _as_3d(array: np.ndarray, p: Path) -> np.ndarray:
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim == 2 or (array.ndim == 3 and min(array.shape) == 1):
        raise InputError(p, f"image is 2D (shape {tuple(array.shape)}); medseg needs a 3D volume")
    if array.ndim != 3:
        raise InputError(p, f"expected a 3D volume, got {array.ndim} dimensions (shape {tuple(array.shape)})")
    return array


def _read_nifti(p: Path) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(p))
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for truncated/corrupt files
        raise InputError(p, f"cannot read NIfTI file, truncated or corrupt ({exc.__class__.__name__}: {exc})") from exc
    array = _as_3d(np.asarray(array), p)
    if not np.all(np.isfinite(img.affine)):
        raise InputError(p, "NIfTI header holds a non-finite affine")
    try:
        vol = Volume.from_affine_ras(array, img.affine, source=str(p), meta={"format": "nifti"})
    except ValueError as exc:
        raise InputError(p, f"invalid NIfTI geometry: {exc}") from exc
    return vol


def _read_itk(p: Path) -> Volume:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise InputError(p, f"cannot read image, truncated or corrupt ({first})") from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(p, f"image has {img.GetNumberOfComponentsPerPixel()} components per voxel; expected a scalar image")
    if img.GetDimension() == 2:
        raise InputError(p, f"image is 2D (size {img.GetSize()}); medseg needs a 3D volume")
    if img.GetDimension() != 3:
        raise InputError(p, f"expected a 3D volume, got {img.GetDimension()} dimensions")
    array = _as_3d(sitk.GetArrayFromImage(img).transpose(2, 1, 0), p)
    modality = None
    if img.HasMetaDataKey("Modality"):
        modality = img.GetMetaData("Modality").strip() or None
    return Volume(
        array=np.ascontiguousarray(array),
        spacing=img.GetSpacing(),
        origin=img.GetOrigin(),
        direction=np.array(img.GetDirection()).reshape(3, 3),
        modality=modality,
        source=str(p),
        meta={"format": p.suffix.lower().lstrip(".")},
    )


def as_volume(image: Any) -> Volume:
    """A :class:`Volume` from a Volume, a SimpleITK image or a nibabel image (in memory, no file)."""
    if isinstance(image, Volume):
        return image
    if hasattr(image, "GetSpacing") and hasattr(image, "GetDirection"):
        import SimpleITK as sitk

        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(None, f"expected a scalar 3D SimpleITK image, got size {image.GetSize()}")
        return Volume(array=np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0)),
                      spacing=image.GetSpacing(), origin=image.GetOrigin(),
                      direction=np.array(image.GetDirection()).reshape(3, 3), meta={"format": "sitk"})
    if hasattr(image, "affine") and hasattr(image, "dataobj"):
        array = _as_3d(np.asarray(np.asanyarray(image.dataobj)), Path("<nibabel image>"))
        return Volume.from_affine_ras(array, image.affine, meta={"format": "nifti"})
    raise TypeError(f"expected a Volume, SimpleITK image or nibabel image, got {type(image).__name__}")
