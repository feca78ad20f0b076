"""DICOM SEG (highdicom): write one segment per nodule referencing the source CT series; read a
SEG back as an instance label map.

Writing: the mask must lie on the source series' grid (which is what inference produces): frames
are taken in the reader's slice order, the order of ``volume.meta["dicom_files"]``. Label ``k``
becomes segment ``k`` ("Nodule k" or "Mass k", tracking ID ``nodule-k`` and a fresh tracking UID),
and only the frames where a segment is present are stored (as 3D Slicer, OHIF and dcmqi do).

Reading: a SEG holds only its segmented frames, so on its own it gives a label map on its frames'
extent (the referenced image's lattice, from the first to the last stored slice); with the image
(``reference``) it is placed on that image's whole grid, voxel for voxel.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path
from medseg.io.limits import check_fits_in_memory, check_spacing
from medseg.io.volume import Volume

#: Segmentation Storage (binary/fractional) and Label Map Segmentation Storage
SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")
#: patient/study attributes highdicom copies (DICOM type 2): left empty when the source lacks them
_TYPE2_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
               "ReferringPhysicianName", "AccessionNumber", "StudyID")
#: attributes without which a SEG cannot reference its source, and why
_REQUIRED = {
    "SOPClassUID": "the SEG names each source image by it",
    "SOPInstanceUID": "the SEG names each source image by it",
    "FrameOfReferenceUID": "the SEG places its frames in the images' frame of reference",
}


class SegNotWritten(InputError):
    """No DICOM SEG can be made from this mask or source series; the message says why."""


@dataclass(frozen=True)
class NoduleSegment:
    """How one label of the mask is named in the SEG: its id (= segment number) and kind."""

    id: int
    kind: str = "nodule"  # "nodule" or "mass"

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> NoduleSegment:
        """From a measurement record (:func:`medseg.report.measure.measure_nodules`: ``id``, ``type``)."""
        return cls(int(record["id"]), "mass" if record.get("type") == "mass" else "nodule")

    @property
    def label(self) -> str:
        """The segment label, e.g. ``"Nodule 3"`` or ``"Mass 3"``."""
        return f"{self.kind.capitalize()} {self.id}"

    @property
    def tracking_id(self) -> str:
        """The segment's tracking identifier: ``nodule-<id>``, the id of the report and CSV."""
        return f"nodule-{self.id}"


def write_dicom_seg(
    labels: np.ndarray,
    volume: Volume,
    path: str | os.PathLike[str],
    software_version: str = "0",
    nodules: Sequence[NoduleSegment] | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write instance ``labels`` (0 = background, 1..N on ``volume``'s grid) as a binary SEG.

    One segment per label value (segment number = label id; an id between 1 and the largest with
    no voxels is described but holds no frame), named from ``nodules`` (a label without an entry
    is a "Nodule"); the SEG references every source slice and shares the source
    study. What had to be filled in for a stripped source header is appended to ``notes`` (see
    :func:`prepare_sources`). Raises ``ValueError`` when the volume did not come from DICOM or the
    mask is off its grid, and :class:`SegNotWritten` when the mask is empty (a SEG must hold at
    least one segment) or the source lacks an attribute no SEG can do without.
    """
    import highdicom as hd

    files = volume.meta.get("dicom_files")
    if not files:
        raise ValueError("DICOM SEG needs a volume read from a DICOM series")
    if tuple(labels.shape) != volume.shape or len(files) != volume.shape[2]:
        raise ValueError("mask does not match the source DICOM series grid")
    n = int(labels.max()) if labels.size else 0
    if (labels.size and int(labels.min()) < 0) or n > 65535:
        raise ValueError("labels must be instance ids 0..65535")
    if n == 0:
        raise SegNotWritten(path, "no nodules found, and a DICOM SEG must hold at least one segment")
    sources, filled = prepare_sources(files, volume.spacing[2])
    content_label, assumed = _content_label(sources[0])
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.ascontiguousarray(labels.transpose(2, 1, 0)).astype(np.uint16),  # (slices, rows, columns)
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(n, nodules, software_version),
        series_instance_uid=hd.UID(),
        series_number=9001,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name="medseg lung nodule segmentation",
        software_versions=software_version,
        device_serial_number="0",
        series_description="medseg lung nodules",
        content_label=content_label,
        omit_empty_frames=True,
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    if notes is not None:
        notes.extend(filled + assumed)
    return Path(path)


def segment_descriptions(n: int, nodules: Sequence[NoduleSegment] | None = None,
                         software_version: str = "0") -> list[Any]:
    """highdicom segment descriptions for labels 1..``n``: label, SNOMED category and type
    (Morphologically abnormal structure / Nodule or Mass), tracking ID and a fresh tracking UID,
    the algorithm (medseg, automatic), anatomic region Lung."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    by_id = {s.id: s for s in nodules or ()}
    out = []
    for k in range(1, n + 1):
        seg = by_id.get(k, NoduleSegment(k))
        out.append(hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=seg.label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Mass if seg.kind == "mass" else codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="medseg", version=software_version, family=codes.DCM.ArtificialIntelligence
            ),
            tracking_uid=hd.UID(),
            tracking_id=seg.tracking_id,
            anatomic_regions=[codes.SCT.Lung],
        ))
    return out


def prepare_sources(files: Sequence[str | os.PathLike[str]], slice_spacing: float) -> tuple[list[Any], list[str]]:
    """The source headers as highdicom needs them, completed in memory (the files are never
    modified), and one note per attribute that had to be filled in.

    * SOP Class/Instance UIDs missing from the dataset come from the file meta; a source without
      them, or without a FrameOfReferenceUID, raises :class:`SegNotWritten` naming the attribute.
    * A missing or blank Study/Series Instance UID is generated from the series' SOP Instance UIDs
      (stable across runs, unique to this set of images, never the UID of anything else).
    * A missing SliceThickness becomes the slice spacing.
    * Missing patient/study attributes of DICOM type 2 (name, ID, birth date...) are left empty.
    """
    import pydicom

    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    folder = Path(files[0]).parent
    for ds in datasets:
        _uids_from_file_meta(ds)
    for key, why in _REQUIRED.items():
        if any(not _value(ds, key) for ds in datasets):
            raise SegNotWritten(folder, f"the source series has no {key} ({why})")
    notes = []
    seed = sorted(_value(ds, "SOPInstanceUID") for ds in datasets)
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        if _fill_uid(datasets, key, seed):
            notes.append(f"the source series has no {key}: the SEG uses one generated from its image UIDs")
    if any(not _value(ds, "SliceThickness") for ds in datasets):
        for ds in datasets:
            ds.SliceThickness = format(slice_spacing, ".6g")
        notes.append(f"the source series has no SliceThickness: the SEG uses the slice spacing ({slice_spacing:.6g} mm)")
    for ds in datasets:
        for key in _TYPE2_KEYS:
            if key not in ds:
                setattr(ds, key, "")
    return datasets, notes


def _value(ds: Any, key: str) -> str:
    return str(getattr(ds, key, "") or "").strip()


def _uids_from_file_meta(ds: Any) -> None:
    meta = getattr(ds, "file_meta", None)
    for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if not _value(ds, key) and meta is not None and _value(meta, meta_key):
            setattr(ds, key, _value(meta, meta_key))


def _fill_uid(datasets: list[Any], key: str, seed: list[str]) -> bool:
    """Fill a missing/blank UID with the other slices' value when they agree on one, else with a
    UID generated from ``seed``; True when one was generated."""
    from pydicom.uid import generate_uid

    values = [_value(ds, key) for ds in datasets]
    if all(values):
        return False
    present = set(values) - {""}
    uid = next(iter(present)) if len(present) == 1 else generate_uid(entropy_srcs=[key, *seed])
    for ds, value in zip(datasets, values):
        if not value:
            setattr(ds, key, uid)
    return len(present) != 1


def _content_label(src: Any) -> tuple[str, list[str]]:
    """``<Modality>_SEG`` (highdicom's default); CT is assumed when the source has no usable Modality."""
    modality = _value(src, "Modality").upper()
    if re.fullmatch(r"[A-Z0-9_]{1,12}", modality):
        return f"{modality}_SEG", []
    return "CT_SEG", ["the source series has no Modality: CT assumed for the SEG's content label"]


# ------------------------------------------------------------------------------------- reading
def is_dicom_seg(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a DICOM Segmentation file (by its SOP Class UID)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError):
        return False
    uid = _value(ds, "SOPClassUID") or _value(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID")
    return uid in SEG_SOP_CLASSES


def read_dicom_seg(path: str | os.PathLike[str], reference: Volume | None = None) -> Volume:
    """A DICOM SEG file as an instance label map: segment ``k``'s voxels get label ``k`` (uint16).

    Geometry is the SEG's own (plane positions, orientation and pixel spacing of its functional
    groups), with the slice axis along the image normal as :mod:`medseg.io.dicom` reads series.
    Without ``reference`` the map spans the SEG's stored frames; with it (the segmented image or a
    volume on its grid) it is placed on that grid (:func:`place_on_grid`). Raises
    :class:`InputError` for an unreadable SEG, frames that are not a regular 3D grid, or
    overlapping segments (a label map holds one segment per voxel).
    """
    p = Path(path)
    seg = _open_seg(p)
    try:
        geometry = seg.get_volume_geometry()
    except (ValueError, RuntimeError, AttributeError, KeyError) as exc:
        raise InputError(p, f"cannot read the DICOM SEG's geometry ({_one_line(exc)})") from exc
    if geometry is None:
        raise InputError(p, "DICOM SEG frames do not form a regular 3D grid; cannot read it as a label map")
    check_fits_in_memory(p, geometry.spatial_shape, 2)
    try:
        hv = seg.get_volume(combine_segments=True, relabel=False, dtype=np.uint16)
    except (ValueError, RuntimeError, AttributeError, KeyError) as exc:  # e.g. overlapping segments
        raise InputError(p, f"cannot read the DICOM SEG as a label map ({_one_line(exc)})") from exc
    volume = _from_highdicom(hv, p, _seg_meta(seg))
    return volume if reference is None else place_on_grid(volume, reference, p)


def _open_seg(p: Path) -> Any:
    import highdicom as hd

    try:
        return hd.seg.segread(p)
    except Exception as exc:  # pydicom/highdicom raise many types for corrupt or non-SEG files
        raise InputError(p, f"cannot read DICOM SEG, truncated or corrupt ({_one_line(exc)})") from exc


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text if len(text) <= 200 else text[:197] + '...'}"


def _seg_meta(seg: Any) -> dict[str, Any]:
    """Facts about the SEG for ``Volume.meta`` (UIDs and segment numbers; no patient data)."""
    refs = getattr(seg, "ReferencedSeriesSequence", None) or []
    return {
        "format": "dicom-seg",
        "series_uid": _value(seg, "SeriesInstanceUID"),
        "referenced_series_uid": _value(refs[0], "SeriesInstanceUID") if refs else None,
        "frame_of_reference_uid": _value(seg, "FrameOfReferenceUID") or None,
        "segment_numbers": [int(n) for n in seg.segment_numbers],
    }


def _from_highdicom(hv: Any, p: Path, meta: dict[str, Any]) -> Volume:
    """A highdicom Volume (array [slice, row, column], LPS affine) as a medseg Volume ([i, j, k])."""
    lin = np.asarray(hv.affine, dtype=np.float64)[:3, :3][:, ::-1]  # columns: i (column), j (row), k (slice)
    origin = np.asarray(hv.affine, dtype=np.float64)[:3, 3]
    array = np.asarray(hv.array).transpose(2, 1, 0)
    spacing = np.linalg.norm(lin, axis=0)
    check_spacing(p, spacing, "DICOM SEG geometry (pixel spacing, plane positions)")
    direction = lin / spacing
    if np.cross(direction[:, 0], direction[:, 1]) @ direction[:, 2] < 0:  # slices stacked against the normal
        origin = origin + lin[:, 2] * (array.shape[2] - 1)
        direction[:, 2] *= -1
        array = array[:, :, ::-1]
    return Volume(array=np.ascontiguousarray(array), spacing=tuple(spacing), origin=tuple(origin),
                  direction=direction, modality="SEG", source=str(p), meta=meta)


def place_on_grid(labels: Volume, grid: Volume, path: str | os.PathLike[str] | None = None) -> Volume:
    """``labels`` moved voxel for voxel onto ``grid`` (no interpolation), zeros elsewhere.

    ``labels`` must lie on ``grid``'s lattice: the same spacing and orientation (axes may be
    permuted or flipped) and voxel centres on ``grid``'s voxel centres, e.g. a SEG's frames on the
    slices of the image it segments. Raises :class:`InputError` naming ``path`` otherwise, or when a
    labelled voxel falls outside ``grid``.
    """
    if labels.same_grid(grid):
        return labels
    where = path if path is not None else labels.source
    origin = grid.world_to_index(np.asarray(labels.origin))
    steps = grid.world_to_index(labels.index_to_world(np.eye(3))) - origin  # row a: one step along axis a
    perm = np.rint(steps)
    extent = max(labels.shape)
    aligned = (np.all(np.abs(perm).sum(axis=0) == 1) and np.all(np.abs(perm).sum(axis=1) == 1)
               and np.abs(steps - perm).max() * extent < 0.05 and np.abs(origin - np.rint(origin)).max() < 0.05)
    if not aligned:
        raise InputError(where, "label map is not on the image's voxel grid (orientation, spacing or slice "
                                "positions differ); resample it onto the image first")
    ijk = np.argwhere(labels.array > 0)
    dst = (ijk @ perm + np.rint(origin)).astype(np.int64)
    inside = np.all((dst >= 0) & (dst < np.array(grid.shape)), axis=1)
    if not inside.all():
        raise InputError(where, f"{int((~inside).sum())} labelled voxels lie outside the image grid {grid.shape}")
    out = np.zeros(grid.shape, labels.array.dtype)
    out[tuple(dst.T)] = np.asarray(labels.array)[tuple(ijk.T)]
    return Volume(array=out, spacing=grid.spacing, origin=grid.origin, direction=grid.direction,
                  modality=labels.modality, source=labels.source, meta=dict(labels.meta))
