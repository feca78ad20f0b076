"""DICOM SEG output (highdicom) referencing the source CT series.

The mask must lie on the source series' grid (which is what inference produces): frames are
taken in the reader's slice order, the order of ``volume.meta["dicom_files"]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg.io.atomic import atomic_path
from medseg.io.volume import Volume


def write_dicom_seg(
    labels: np.ndarray,
    volume: Volume,
    path: str | os.PathLike[str],
    segment_label: str = "Lung nodule",
    software_version: str = "0",
) -> Path:
    """Write ``labels`` (instance labels on ``volume``'s grid; all > 0 = nodule) as a binary SEG.

    One segment ("Lung nodule") holding all nodules; the SEG references every source slice and
    shares the source study. Raises ``ValueError`` when the volume did not come from DICOM.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    files = volume.meta.get("dicom_files")
    if not files:
        raise ValueError("DICOM SEG needs a volume read from a DICOM series")
    if tuple(labels.shape) != volume.shape or len(files) != volume.shape[2]:
        raise ValueError("mask does not match the source DICOM series grid")
    sources = [_with_uids(pydicom.dcmread(f, stop_before_pixels=True)) for f in files]
    frames = np.ascontiguousarray((labels > 0).transpose(2, 1, 0))  # (slices, rows, columns)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="medseg", version=software_version, family=codes.DCM.ArtificialIntelligence
        ),
        anatomic_regions=[codes.SCT.Lung],
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=9001,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name="medseg lung nodule segmentation",
        software_versions=software_version,
        device_serial_number="0",
        series_description="medseg lung nodules",
        omit_empty_frames=False,
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)


def _with_uids(ds):
    """Fill UIDs that anonymisers sometimes blank, in memory only (the input is never modified).

    SOP class/instance come from the file meta; blank study/series UIDs get deterministic
    replacements derived from the frame of reference so that all slices agree.
    """
    from pydicom.uid import generate_uid

    meta = getattr(ds, "file_meta", None)
    if not str(getattr(ds, "SOPClassUID", "") or "") and meta is not None:
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
    if not str(getattr(ds, "SOPInstanceUID", "") or "") and meta is not None:
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    # Type 2 patient/study attributes highdicom copies: present but empty when the source lacks them
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "AccessionNumber", "StudyID"):
        if key not in ds:
            setattr(ds, key, "")
    seed = str(getattr(ds, "FrameOfReferenceUID", "") or "medseg")
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not str(getattr(ds, key, "") or ""):
            setattr(ds, key, generate_uid(entropy_srcs=[seed, key]))
    return ds
