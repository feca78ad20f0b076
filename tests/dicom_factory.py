"""Write small synthetic DICOM CT series for tests (pydicom), with full control of geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.0),
    origin: tuple[float, float, float] = (-20.0, -30.0, 100.0),
    direction: np.ndarray | None = None,
    *,
    slope: float = 1.0,
    intercept: float = -1024.0,
    patient_name: str = "Doe^Jane",
    patient_id: str = "SECRET123",
    series_uid: str | None = None,
    modality: str = "CT",
    shuffle_names: bool = True,
    positions: list[np.ndarray] | None = None,
) -> list[Path]:
    """Write ``hu`` (indexed [i, j, k]) as one file per k-slice; returns the file paths.

    File names are deliberately not in slice order (``shuffle_names``) so readers must sort by
    position. ``positions`` overrides the per-slice ImagePositionPatient (to fake tilt/gaps).
    """
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    row_dir, col_dir, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    study_uid, series_uid = generate_uid(), series_uid or generate_uid()
    frame_uid = generate_uid()  # one frame of reference for the whole series
    stored = np.round((hu.astype(np.float64) - intercept) / slope).astype(np.int16)
    n = hu.shape[2]
    order = np.random.default_rng(0).permutation(n) if shuffle_names else np.arange(n)
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{order[k]:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.PatientName, ds.PatientID = patient_name, patient_id
        ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20200101", 1, int(order[k]) + 1
        ds.Manufacturer = "medseg-tests"
        pos = positions[k] if positions is not None else np.asarray(origin) + normal * spacing[2] * k
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([row_dir, col_dir])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing (j), column spacing (i)
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # rows = j, columns = i
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def oblique_direction(angle_deg: float = 20.0) -> np.ndarray:
    """A proper rotation about an oblique axis (columns are axis directions)."""
    a = np.deg2rad(angle_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]])
    return rz @ rx


def read_back(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path)
