"""DICOM SEG output: loads back with highdicom/pydicom, references the source series and slices,
puts each nodule in its own segment at the right world positions (checked through the SEG's own
geometry), and copes with stripped source headers without losing the other outputs."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medseg.io import read_volume
from medseg.io.dicom_seg import NoduleSegment, SegNotWritten, write_dicom_seg


@pytest.fixture
def series(tmp_path):
    from dicom_factory import oblique_direction, write_ct_series

    hu = np.full((32, 32, 5), -800.0)
    write_ct_series(tmp_path / "ct", hu, spacing=(0.8, 0.7, 2.5), origin=(10.0, -20.0, 40.0),
                    direction=oblique_direction(15))
    return read_volume(tmp_path / "ct")


def _two_nodules(shape: tuple[int, int, int]) -> np.ndarray:
    labels = np.zeros(shape, np.uint16)
    labels[5:9, 10:13, 1:3] = 1
    labels[20:22, 3:5, 4] = 2
    return labels


def _stripped_series(tmp_path, *keys: str):
    """A synthetic CT series whose files lack ``keys``; returns the volume read from it."""
    from dicom_factory import write_ct_series

    files = write_ct_series(tmp_path / "stripped", np.full((16, 16, 4), -800.0))
    for f in files:
        ds = pydicom.dcmread(f)
        for key in keys:
            delattr(ds, key)
        ds.save_as(f)
    return read_volume(tmp_path / "stripped")


def test_seg_references_series_and_places_mask_in_world(series, tmp_path) -> None:
    import highdicom as hd

    labels = _two_nodules(series.shape)
    out = write_dicom_seg(labels, series, tmp_path / "x_seg.dcm", software_version="t")
    raw = pydicom.dcmread(out)
    assert raw.Modality == "SEG" and raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    seg = hd.seg.segread(out)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.meta["series_uid"]
    referenced = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in series.meta["dicom_files"]}
    assert referenced == sources
    assert seg.PatientID == "SECRET123"  # the SEG belongs to the same patient/study as the source
    assert seg.StudyInstanceUID == pydicom.dcmread(series.meta["dicom_files"][0]).StudyInstanceUID
    # world positions of each segment's voxels equal those of its label's voxels
    vol = seg.get_volume(combine_segments=True)
    for k in (1, 2):
        ijk_seg = np.argwhere(vol.array == k)
        world_seg = ijk_seg @ vol.affine[:3, :3].T + vol.affine[:3, 3]  # highdicom affines are LPS
        world_src = series.index_to_world(np.argwhere(labels == k))
        key = lambda p: np.round(p, 2).tolist()  # noqa: E731
        assert sorted(map(key, world_seg)) == sorted(map(key, world_src))


def test_one_segment_per_nodule_with_tracking_and_algorithm(series, tmp_path) -> None:
    import highdicom as hd

    labels = _two_nodules(series.shape)
    out = write_dicom_seg(labels, series, tmp_path / "x_seg.dcm", software_version="9.8",
                          nodules=[NoduleSegment(1), NoduleSegment.from_record({"id": 2, "type": "mass"})])
    seg = hd.seg.segread(out)
    assert seg.number_of_segments == 2 and list(seg.segment_numbers) == [1, 2]
    d1, d2 = seg.get_segment_description(1), seg.get_segment_description(2)
    assert (d1.segment_label, d2.segment_label) == ("Nodule 1", "Mass 2")
    assert (d1.tracking_id, d2.tracking_id) == ("nodule-1", "nodule-2")
    assert d1.tracking_uid != d2.tracking_uid  # one fresh tracking UID per segment
    assert d1.segmented_property_category.value == "49755003"  # SCT Morphologically abnormal structure
    assert (d1.segmented_property_type.value, d2.segmented_property_type.value) == ("27925004", "4147007")  # Nodule, Mass
    assert d1.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    assert d1.algorithm_identification[0].AlgorithmName == "medseg"
    assert d1.algorithm_identification[0].AlgorithmVersion == "9.8"
    # segment k holds exactly label k's voxels (and only frames where it is present are stored)
    per_segment = seg.get_volume(combine_segments=False).array  # (slices, rows, columns, segments)
    assert per_segment[..., 0].sum() == (labels == 1).sum() and per_segment[..., 1].sum() == (labels == 2).sum()
    assert seg.NumberOfFrames == 2 + 1  # nodule 1 on two slices, nodule 2 on one
    again = hd.seg.segread(write_dicom_seg(labels, series, tmp_path / "y_seg.dcm"))
    assert again.get_segment_description(1).tracking_uid != d1.tracking_uid  # fresh on every write


def test_empty_mask_writes_no_seg_and_says_why(series, tmp_path) -> None:
    # a SEG must hold one or more segments (highdicom cannot write zero): none, and the reason
    with pytest.raises(SegNotWritten, match="no nodules found.*at least one segment"):
        write_dicom_seg(np.zeros(series.shape, np.uint16), series, tmp_path / "e_seg.dcm")
    assert not (tmp_path / "e_seg.dcm").exists()
    assert not [p for p in tmp_path.iterdir() if p.name != "ct"]  # no partial file left behind


def test_non_dicom_volume_is_rejected(tmp_path) -> None:
    from medseg.io import Volume

    vol = Volume(np.zeros((4, 4, 4), np.int16), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="DICOM"):
        write_dicom_seg(np.zeros((4, 4, 4), np.uint16), vol, tmp_path / "n_seg.dcm")
    assert not list(tmp_path.iterdir())


def test_no_modality_still_gets_a_seg_with_ct_assumed(tmp_path) -> None:
    import highdicom as hd

    vol = _stripped_series(tmp_path, "Modality")
    labels = np.zeros(vol.shape, np.uint16)
    labels[4:7, 4:7, 1:3] = 1
    notes: list[str] = []
    out = write_dicom_seg(labels, vol, tmp_path / "m_seg.dcm", notes=notes)
    seg = hd.seg.segread(out)
    assert seg.ContentLabel == "CT_SEG" and seg.Modality == "SEG"
    assert notes == ["the source series has no Modality: CT assumed for the SEG's content label"]
    assert "Modality" not in pydicom.dcmread(vol.meta["dicom_files"][0])  # the input is never modified
    assert np.array_equal(read_volume(out, reference=vol).array, labels)


def test_no_patient_name_or_id_gives_a_seg_with_them_empty(tmp_path) -> None:
    import highdicom as hd

    vol = _stripped_series(tmp_path, "PatientName", "PatientID")
    labels = np.zeros(vol.shape, np.uint16)
    labels[4:7, 4:7, 1] = 1
    notes: list[str] = []
    seg = hd.seg.segread(write_dicom_seg(labels, vol, tmp_path / "p_seg.dcm", notes=notes))
    assert str(seg.PatientName) == "" and seg.PatientID == ""  # type 2: present, empty, nothing invented
    assert notes == []


def test_missing_study_uid_is_generated_stable_and_distinct(tmp_path) -> None:
    import highdicom as hd

    vol = _stripped_series(tmp_path, "StudyInstanceUID")
    labels = np.zeros(vol.shape, np.uint16)
    labels[4:7, 4:7, 1] = 1
    notes: list[str] = []
    a = hd.seg.segread(write_dicom_seg(labels, vol, tmp_path / "a_seg.dcm", notes=notes))
    b = hd.seg.segread(write_dicom_seg(labels, vol, tmp_path / "b_seg.dcm"))
    assert a.StudyInstanceUID and a.StudyInstanceUID == b.StudyInstanceUID  # the same study on every run
    assert a.StudyInstanceUID not in {a.SeriesInstanceUID, a.FrameOfReferenceUID, vol.meta["series_uid"]}
    assert a.SeriesInstanceUID != b.SeriesInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID
    assert any("StudyInstanceUID" in n for n in notes)


def test_stripped_header_never_loses_the_other_outputs(tmp_path) -> None:
    import json

    from medseg.inference.pipeline import Segmentation
    from medseg.report.measure import measure_nodules
    from medseg.report.outputs import write_outputs

    vol = _stripped_series(tmp_path, "FrameOfReferenceUID", "Modality", "PatientName", "PatientID")
    labels = np.zeros(vol.shape, np.uint16)
    labels[4:7, 4:7, 1:3] = 1
    seg = Segmentation(volume=vol, labels=labels, lungs=None, nodules=measure_nodules(labels, vol))
    outputs = write_outputs(seg, tmp_path / "out", "case", preview=False)
    assert "dicom_seg" not in outputs and not (tmp_path / "out" / "case_seg.dcm").exists()
    assert {"nodules", "lungs", "csv", "report"} <= set(outputs)
    report = json.loads((tmp_path / "out" / "case_report.json").read_text())
    seg_warnings = [w for w in report["warnings"] if "DICOM SEG" in w]
    assert seg_warnings == ["DICOM SEG not written: the source series has no FrameOfReferenceUID "
                            "(the SEG places its frames in the images' frame of reference)"]
    assert "Doe" not in json.dumps(report) and "SECRET123" not in json.dumps(report)


def test_outputs_name_segments_from_the_nodule_records(series, tmp_path) -> None:
    import highdicom as hd

    from medseg.inference.pipeline import Segmentation
    from medseg.report.measure import measure_nodules
    from medseg.report.outputs import write_outputs

    labels = _two_nodules(series.shape)
    nodules = measure_nodules(labels, series)
    nodules[1]["type"] = "mass"
    outputs = write_outputs(Segmentation(series, labels, None, nodules), tmp_path / "out", "case", preview=False)
    seg = hd.seg.segread(outputs["dicom_seg"])
    assert [seg.get_segment_description(k).segment_label for k in (1, 2)] == ["Nodule 1", "Mass 2"]
    empty = write_outputs(Segmentation(series, np.zeros_like(labels), None, []), tmp_path / "e", "case", preview=False)
    assert "dicom_seg" not in empty and "csv" in empty
    report = (tmp_path / "e" / "case_report.json").read_text()
    assert "DICOM SEG not written: no nodules found" in report
