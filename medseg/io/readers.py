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
from medseg.io.limits import check_fits_in_memory, check_geometry, check_spacing
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


def read_volume(path: str | os.PathLike[str], reference: Volume | None = None) -> Volume:
    """Read a NIfTI / NRRD / MHA / MHD file, a DICOM series folder or a DICOM SEG file.

    A DICOM SEG (by its SOP Class UID) reads as an instance label map (segment ``k`` -> label
    ``k``, :func:`medseg.io.dicom_seg.read_dicom_seg`): on its own frames' extent, or on the grid
    of ``reference`` (the image it segments) when given; ``reference`` is ignored for every other
    format. Raises :class:`~medseg.errors.InputError` naming ``path`` for a missing path, an
    unreadable, truncated or corrupt file, a 2D image, a folder without DICOM images, or an
    unsupported format.
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
        from medseg.io.dicom_seg import is_dicom_seg, read_dicom_seg

        return read_dicom_seg(p, reference) if is_dicom_seg(p) else read_dicom_series(p.parent)
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
        img = nib.load(str(p))  # the header only: voxel data is read below, after the checks
    except Exception as exc:  # nibabel raises many types for truncated/corrupt files
        raise InputError(p, f"cannot read NIfTI file, truncated or corrupt ({exc.__class__.__name__}: {exc})") from exc
    _check_nifti_header(p, img)
    try:
        array = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputError(p, f"cannot read NIfTI file, truncated or corrupt ({exc.__class__.__name__}: {exc})") from exc
    array = _as_3d(np.asarray(array), p)
    if not np.all(np.isfinite(img.affine)):
        raise InputError(p, "NIfTI header holds a non-finite affine")
    try:
        vol = Volume.from_affine_ras(array, img.affine, source=str(p), meta={"format": "nifti"})
    except ValueError as exc:
        raise InputError(p, f"invalid NIfTI geometry: {exc}") from exc
    return vol


def _check_nifti_header(p: Path, img: Any) -> None:
    """Spacing and size from the header as stored, before any voxel data is read.

    nibabel silently reads a pixdim of 0 as 1 mm and a negative one as its absolute value, so the
    stored header is read again unchecked: the spacing that gives the affine must be valid (the
    sform's axes when ``sform_code`` > 0, else ``pixdim``, which the qform and the fallback use).
    """
    from nibabel.openers import ImageOpener

    hdr = img.header
    shape = tuple(int(n) for n in hdr.get_data_shape())
    try:
        with ImageOpener(str(p)) as fh:
            raw = type(hdr).from_fileobj(fh, check=False)
    except Exception as exc:
        raise InputError(p, f"cannot read NIfTI header ({exc.__class__.__name__}: {exc})") from exc
    n = min(len(shape), 3)
    if int(raw["sform_code"]) > 0:
        srow = np.stack([raw["srow_x"], raw["srow_y"], raw["srow_z"]]).astype(np.float64)[:, :3]
        check_spacing(p, np.linalg.norm(srow, axis=0)[:n], "NIfTI sform (srow_x/y/z)")
    else:
        where = "NIfTI pixdim" + ("" if int(raw["qform_code"]) > 0 else " (no qform or sform)")
        check_spacing(p, [float(v) for v in raw["pixdim"][1 : 1 + n]], where)
    slope, inter = hdr.get_slope_inter()
    scaled = slope not in (None, 1.0) or inter not in (None, 0.0)
    check_fits_in_memory(p, shape, 8 if scaled else hdr.get_data_dtype().itemsize)


def _read_itk(p: Path) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()  # the header only
        _check_itk_header(p, reader)
        img = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise InputError(p, f"cannot read image, truncated or corrupt ({first})") from exc
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


def _check_itk_header(p: Path, reader: Any) -> None:
    """Dimensions, components, spacing, geometry and size from a header read without its data."""
    import SimpleITK as sitk

    components = reader.GetNumberOfComponents()
    if components != 1:
        raise InputError(p, f"image has {components} components per voxel; expected a scalar image")
    dim = reader.GetDimension()
    if dim == 2:
        raise InputError(p, f"image is 2D (size {reader.GetSize()}); medseg needs a 3D volume")
    if dim != 3:
        raise InputError(p, f"expected a 3D volume, got {dim} dimensions")
    check_spacing(p, reader.GetSpacing(), "image header")
    check_geometry(p, reader.GetOrigin(), reader.GetDirection())
    itemsize = sitk.Image([1, 1, 1], reader.GetPixelID()).GetSizeOfPixelComponent()
    check_fits_in_memory(p, reader.GetSize(), itemsize)


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
