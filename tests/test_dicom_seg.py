"""DICOM SEG output: loads back with highdicom/pydicom, references the source series and slices,
and puts the mask at the right world positions (checked through the SEG's own geometry)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medseg.io import read_volume
from medseg.io.dicom_seg import write_dicom_seg


@pytest.fixture
def series(tmp_path):
    from dicom_factory import oblique_direction, write_ct_series

    hu = np.full((32, 32, 5), -800.0)
    write_ct_series(tmp_path / "ct", hu, spacing=(0.8, 0.7, 2.5), origin=(10.0, -20.0, 40.0),
                    direction=oblique_direction(15))
    return read_volume(tmp_path / "ct")


def test_seg_references_series_and_places_mask_in_world(series, tmp_path) -> None:
    import highdicom as hd

    labels = np.zeros(series.shape, np.uint16)
    labels[5:9, 10:13, 1:3] = 1
    labels[20:22, 3:5, 4] = 2
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
    # world positions of the SEG's voxels equal those of the labelled voxels
    vol = seg.get_volume(combine_segments=True)
    ijk_seg = np.argwhere(vol.array > 0)
    world_seg = ijk_seg @ vol.affine[:3, :3].T + vol.affine[:3, 3]  # highdicom affines are LPS
    world_src = series.index_to_world(np.argwhere(labels > 0))
    key = lambda p: np.round(p, 2).tolist()  # noqa: E731
    assert sorted(map(key, world_seg)) == sorted(map(key, world_src))


def test_empty_mask_still_writes_a_valid_seg(series, tmp_path) -> None:
    import highdicom as hd

    out = write_dicom_seg(np.zeros(series.shape, np.uint16), series, tmp_path / "e_seg.dcm")
    assert hd.seg.segread(out).number_of_segments == 1


def test_non_dicom_volume_is_rejected(tmp_path) -> None:
    from medseg.io import Volume

    vol = Volume(np.zeros((4, 4, 4), np.int16), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="DICOM"):
        write_dicom_seg(np.zeros((4, 4, 4), np.uint16), vol, tmp_path / "n_seg.dcm")
    assert not list(tmp_path.iterdir())
