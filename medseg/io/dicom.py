"""DICOM series discovery and reading (pydicom, with pylibjpeg decoders for compressed data).

Slices are ordered by their position along the slice normal, never by file name. Series with a
gantry tilt, missing slices (uneven spacing), mixed orientations or mixed slice sizes are
rejected with a message naming the folder and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.limits import check_fits_in_memory, check_geometry, check_spacing
from medseg.io.volume import Volume

#: Relative tolerance on slice spacing before a series counts as having missing slices.
SPACING_RTOL = 0.05
#: Largest in-plane drift (mm per mm of slice travel) before a series counts as gantry-tilted.
TILT_TOL = 1e-3


@dataclass
class DicomSeries:
    """One image series found on disk: its UID, modality and files (unordered)."""

    series_uid: str
    modality: str | None
    files: list[Path] = field(default_factory=list)
    folder: Path | None = None

    @property
    def n_files(self) -> int:
        return len(self.files)


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError):
        return None
    # Keep only image slices that carry geometry (skip DICOMDIR, SR, SEG, RTSTRUCT, ...).
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        return None
    if "SeriesInstanceUID" not in ds or "Rows" not in ds:
        return None
    return ds


def iter_candidate_files(folder: Path, recursive: bool) -> Iterable[Path]:
    """Files that may be DICOM (hidden files and obvious non-DICOM formats skipped)."""
    skip = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".raw", ".json", ".csv", ".txt", ".png", ".jpg")
    walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for root, dirs, files in walker:
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.lower().endswith(skip):
                continue
            path = Path(root) / name
            if path.is_file():
                yield path


def find_dicom_series(folder: str | os.PathLike[str], recursive: bool = False) -> list[DicomSeries]:
    """Group the DICOM image files under ``folder`` by SeriesInstanceUID (and folder)."""
    folder = Path(folder)
    groups: dict[tuple[str, str], DicomSeries] = {}
    for path in iter_candidate_files(folder, recursive):
        ds = _read_header(path)
        if ds is None:
            continue
        key = (str(ds.SeriesInstanceUID), str(path.parent))
        if key not in groups:
            groups[key] = DicomSeries(str(ds.SeriesInstanceUID), getattr(ds, "Modality", None), [], path.parent)
        groups[key].files.append(path)
    return list(groups.values())


def choose_series(series: list[DicomSeries], folder: Path) -> DicomSeries:
    """The CT series with the most slices (any modality if there is no CT)."""
    if not series:
        raise InputError(folder, "no DICOM images found in this folder")
    ct = [s for s in series if (s.modality or "").upper() == "CT"]
    pool = ct or series
    return max(pool, key=lambda s: s.n_files)


def _slice_positions(headers: list, folder: Path, iop: np.ndarray, rows: int,
                     cols: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Slice origins, their order along the slice normal and the slice step; refuses series that
    cannot be stacked (mixed orientations or sizes, duplicates, gaps, gantry tilt)."""
    normal = np.cross(iop[:3], iop[3:])
    positions = []
    for path, ds in headers:
        other = np.array([float(v) for v in ds.ImageOrientationPatient])
        if not np.allclose(other, iop, atol=1e-4):
            raise InputError(folder, f"slices have different orientations ({path.name}); cannot stack them")
        if int(ds.Rows) != rows or int(ds.Columns) != cols:
            raise InputError(folder, f"slices have different sizes ({path.name}); cannot stack them")
        positions.append(np.array([float(v) for v in ds.ImagePositionPatient]))
    positions_arr = np.array(positions)
    along = positions_arr @ normal
    order = np.argsort(along)
    along = along[order]
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        raise InputError(folder, "two slices share one position (duplicate or multi-phase series)")
    median_step = float(np.median(steps))
    if np.max(np.abs(steps - median_step)) > SPACING_RTOL * median_step:
        raise InputError(
            folder,
            f"inconsistent slice spacing ({steps.min():.3g} to {steps.max():.3g} mm): "
            "missing slices or a variable-thickness scan; resample it first",
        )
    travel = positions_arr[order[-1]] - positions_arr[order[0]]
    drift = travel - (travel @ normal) * normal
    if np.linalg.norm(drift) > TILT_TOL * max(abs(travel @ normal), 1.0):
        raise InputError(folder, "gantry-tilted series (slice origins drift in-plane); resample it first")
    return positions_arr, order, median_step


def read_dicom_series(folder: str | os.PathLike[str], series_uid: str | None = None) -> Volume:
    """Read one DICOM series from ``folder`` into a :class:`Volume` in Hounsfield units (CT).

    When the folder holds several series, the CT series with the most slices is read unless
    ``series_uid`` names one.
    """
    folder = Path(folder)
    series = find_dicom_series(folder)
    if series_uid is not None:
        series = [s for s in series if s.series_uid == series_uid]
        if not series:
            raise InputError(folder, "the requested DICOM series is not in this folder")
    chosen = choose_series(series, folder)
    headers = [(p, _read_header(p)) for p in chosen.files]
    if len(headers) < 2:
        raise InputError(folder, f"DICOM series has {len(headers)} slice; medseg needs a 3D volume")

    iop = np.array([float(v) for v in headers[0][1].ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    rows, cols = int(headers[0][1].Rows), int(headers[0][1].Columns)
    positions_arr, order, median_step = _slice_positions(headers, folder, iop, rows, cols)

    try:  # PixelSpacing = (between rows: j, between columns: i)
        row_mm, col_mm = (float(v) for v in headers[0][1].PixelSpacing)
    except (AttributeError, TypeError, ValueError) as exc:
        raise InputError(folder, "DICOM series has no usable PixelSpacing (two numbers)") from exc
    spacing = (col_mm, row_mm, median_step)  # (i: columns, j: rows, k: slices)
    check_spacing(folder, spacing, "DICOM headers (PixelSpacing, slice positions)")
    direction = np.stack([row_dir, col_dir, normal], axis=1)
    check_geometry(folder, positions_arr[order[0]], direction)
    check_fits_in_memory(folder, (cols, rows, len(order)), 4)  # decoded as float32
    array = _decode_slices([headers[i][0] for i in order])
    sorted_files = [str(headers[i][0]) for i in order]
    return Volume(
        array=array,
        spacing=spacing,
        origin=tuple(positions_arr[order[0]]),
        direction=direction,
        modality=chosen.modality,
        source=str(folder),
        meta={"format": "dicom", "series_uid": chosen.series_uid, "dicom_files": sorted_files},
    )


#: transfer syntaxes that only the GPL-licensed pylibjpeg-libjpeg (or GDCM) decodes; JPEG-LS also
#: has pyjpegls and plain 8-bit JPEG has Pillow, but both are tried before this message is given
LIBJPEG_SYNTAXES = (
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, Process 14, Selection Value 1 (most lossless CT)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
)


def _decode_slices(paths: list[Path]) -> np.ndarray:
    """Pixel data of the sorted slice files in Hounsfield units, ``[i, j, k]`` (int16 when exact)."""
    import pydicom

    slices = []
    integral = True
    for path in paths:
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception as exc:  # decoder errors come in many types
            raise _decode_error(path, exc) from exc
        if pixels.ndim != 2:
            raise InputError(path, f"expected one 2D frame per file, got pixel array of shape {pixels.shape}")
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        integral &= slope == 1.0 and intercept == round(intercept)
        slices.append(pixels.astype(np.float32) * slope + intercept)
    stack = np.stack(slices, axis=-1)  # (rows=j, cols=i, k)
    array = np.ascontiguousarray(stack.transpose(1, 0, 2))
    if integral and array.min() >= -32768 and array.max() <= 32767:
        array = array.astype(np.int16)
    return array


def _decode_error(path: Path, exc: Exception) -> InputError:
    """The InputError for a slice whose pixel data could not be decoded (a missing decoder named)."""
    from medseg.errors import MissingExtraError

    text = str(exc)
    # pydicom 3: "... all plugins are missing dependencies"; 2.x: "... missing required dependencies"
    if isinstance(exc, (RuntimeError, NotImplementedError)) and "missing" in text and "dependencies" in text:
        syntax = _transfer_syntax(path)
        name = getattr(syntax, "name", None) or str(syntax)
        if str(syntax) in LIBJPEG_SYNTAXES:
            return MissingExtraError(f"pixel data compressed as {name}", "jpeg", path,
                                     why="the GPL-licensed decoder pylibjpeg-libjpeg, not installed by default")
        return InputError(path, f"no decoder is installed for pixel data compressed as {name}")
    detail = " ".join(text.split())  # one line: pydicom lists each plugin's error on its own line
    detail = detail if len(detail) <= 300 else detail[:297] + "..."
    return InputError(path, f"cannot decode DICOM pixel data ({exc.__class__.__name__}: {detail})")


def _transfer_syntax(path: Path) -> object:
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    except Exception:
        return "unknown transfer syntax"
