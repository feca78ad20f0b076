"""DICOM SEG as ground truth: ``read_volume`` on a SEG gives the instance label map at the right
world positions (the SEG's own geometry), placed on the image's grid for ``evaluate`` and training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.cli import main
from medseg.errors import InputError
from medseg.evaluation.api import evaluate
from medseg.io import read_volume, write_mask, write_volume
from medseg.io.dicom_seg import write_dicom_seg


@pytest.fixture
def ct(tmp_path):
    from dicom_factory import oblique_direction, write_ct_series

    write_ct_series(tmp_path / "ct", np.full((24, 20, 6), -800.0), spacing=(0.8, 0.7, 2.5),
                    origin=(10.0, -20.0, 40.0), direction=oblique_direction(15))
    return read_volume(tmp_path / "ct")


@pytest.fixture
def labels(ct):
    lab = np.zeros(ct.shape, np.uint16)
    lab[3:7, 4:8, 1:3] = 1  # slices 1-2
    lab[15:18, 10:14, 4] = 2  # slice 4: the SEG stores slices 1..4 only
    return lab


def _world(vol, mask):
    return vol.index_to_world(np.argwhere(mask))


def test_read_volume_gives_label_ids_at_the_ct_world_positions(ct, labels, tmp_path) -> None:
    seg_path = write_dicom_seg(labels, ct, tmp_path / "gt_seg.dcm")
    own = read_volume(seg_path)
    assert own.meta["format"] == "dicom-seg" and own.modality == "SEG" and own.array.dtype == np.uint16
    assert own.meta["referenced_series_uid"] == ct.meta["series_uid"]
    assert sorted(np.unique(own.array).tolist()) == [0, 1, 2]
    for k in (1, 2):  # each segment's voxels sit exactly on its label's voxels, in world mm
        world_seg, world_ct = _world(own, own.array == k), _world(ct, labels == k)
        assert len(world_seg) == len(world_ct)
        idx = ct.world_to_index(world_seg)
        assert np.abs(idx - np.rint(idx)).max() < 1e-3
        assert {tuple(v) for v in np.rint(idx).astype(int)} == {tuple(v) for v in np.argwhere(labels == k)}
    # alone it spans the stored frames (slices 1..4) of the CT's lattice; with the CT, its whole grid
    assert own.shape == (24, 20, 4) and np.allclose(own.origin, ct.index_to_world([0, 0, 1]), atol=1e-3)
    assert np.allclose(own.direction, ct.direction, atol=1e-4) and np.allclose(own.spacing, ct.spacing, atol=1e-4)
    on_ct = read_volume(seg_path, reference=ct)
    assert on_ct.same_grid(ct) and np.array_equal(on_ct.array, labels)


def test_seg_covering_every_slice_is_on_the_ct_grid_by_itself(ct, labels, tmp_path) -> None:
    labels[10:12, 2:4, 0] = 3
    labels[10:12, 2:4, 5] = 4
    back = read_volume(write_dicom_seg(labels, ct, tmp_path / "full_seg.dcm"))
    assert back.same_grid(ct) and np.array_equal(back.array, labels)


def test_evaluate_seg_against_nifti_truth(ct, labels, tmp_path, capsys) -> None:
    seg_path = write_dicom_seg(labels, ct, tmp_path / "gt_seg.dcm")
    nifti = write_mask(labels, ct, tmp_path / "truth.nii.gz", np.uint16)
    for pred, gt in ((nifti, seg_path), (seg_path, nifti)):
        assert main(["evaluate", str(pred), str(gt), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["dice"] == pytest.approx(1.0) and out["n_gt_lesions"] == 2 and out["n_detected"] == 2
    one = write_mask((labels == 1).astype(np.uint16), ct, tmp_path / "one.nii.gz", np.uint16)
    r = evaluate(one, seg_path)  # nodule 2 of the SEG is missed: the SEG's labels really count
    assert r["n_gt_lesions"] == 2 and r["n_detected"] == 1 and r["dice"] < 0.99


def test_seg_off_the_prediction_grid_is_a_clear_input_error(ct, labels, tmp_path, capsys) -> None:
    seg_path = write_dicom_seg(labels, ct, tmp_path / "gt_seg.dcm")
    coarse = ct.with_array(np.zeros(ct.shape, np.uint16), spacing=(1.0, 0.7, 2.5))
    other = write_volume(coarse, tmp_path / "coarse.nii.gz")
    with pytest.raises(InputError, match="not on the image's voxel grid"):
        evaluate(other, seg_path)
    assert main(["evaluate", str(other), str(seg_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "gt_seg.dcm" in err and "not on the image's voxel grid" in err and len(err.splitlines()) == 1


def test_truncated_seg_is_an_input_error(ct, labels, tmp_path) -> None:
    seg_path = write_dicom_seg(labels, ct, tmp_path / "gt_seg.dcm")
    data = seg_path.read_bytes()
    seg_path.write_bytes(data[: len(data) - 200])
    with pytest.raises(InputError, match="gt_seg.dcm: cannot read DICOM SEG"):
        read_volume(seg_path)


def test_training_loader_places_seg_labels_on_the_image_grid(ct, labels, tmp_path) -> None:
    from medseg.transforms import LoadVolumed

    seg_path = write_dicom_seg(labels, ct, tmp_path / "gt_seg.dcm")
    d = LoadVolumed(["image", "label"])({"image": str(tmp_path / "ct"), "label": str(seg_path)})
    assert tuple(d["label"].shape) == (1, *ct.shape)
    assert np.array_equal(np.asarray(d["label"][0]), labels.astype(np.float32))
    assert np.allclose(np.asarray(d["label"].affine), np.asarray(d["image"].affine))


def test_real_ct_seg_round_trip_against_a_flipped_nifti_truth(shared_data, tmp_path) -> None:
    # a real JPEG 2000 CT series (LPS) and TotalSegmentator labels on it stored as LAS NIfTI
    ct = read_volume(shared_data / "real_ct" / "abdomen_dicom_jpeg2000")
    truth = read_volume(shared_data / "real_ct" / "abdomen_dicom_jpeg2000_totalseg_labels.nii.gz")
    assert np.allclose(truth.index_to_world([0, truth.shape[1] - 1, 0]), ct.origin, atol=1e-2)  # j flipped
    organs = np.zeros(truth.shape, np.uint16)
    for new, old in enumerate((7, 8, 20), start=1):
        organs[np.asarray(truth.array) == old] = new
    on_ct = organs[:, ::-1, :]
    seg_path = write_dicom_seg(on_ct, ct, tmp_path / "organs_seg.dcm")
    assert np.array_equal(read_volume(seg_path, reference=ct).array, on_ct)
    truth_path = write_volume(truth.with_array(organs), tmp_path / "organs.nii.gz")
    r = evaluate(seg_path, truth_path)
    assert r["dice"] == pytest.approx(1.0) and r["n_gt_lesions"] == 3 and r["n_detected"] == 3


def test_place_on_grid_handles_crops_permuted_and_flipped_axes(ct, labels) -> None:
    from medseg.io import Volume
    from medseg.io.dicom_seg import place_on_grid

    crop = labels[2:20, 3:16, 1:5]  # a sub-block, then stored as axes (k, i, -j)
    stored = crop.transpose(2, 0, 1)[:, :, ::-1]
    d = ct.direction
    origin = ct.index_to_world([2, 15, 1])  # voxel (0, 0, 0) of the stored block
    block = Volume(np.ascontiguousarray(stored), spacing=(ct.spacing[2], ct.spacing[0], ct.spacing[1]),
                   origin=tuple(origin), direction=np.stack([d[:, 2], d[:, 0], -d[:, 1]], axis=1))
    placed = place_on_grid(block, ct)
    assert placed.same_grid(ct) and np.array_equal(placed.array, labels)
    shifted = Volume(block.array, block.spacing, tuple(origin + 0.3 * d[:, 0]), block.direction)
    with pytest.raises(InputError, match="not on the image's voxel grid"):
        place_on_grid(shifted, ct)
    outside = Volume(block.array, block.spacing, tuple(ct.index_to_world([20, 15, 1])), block.direction)
    with pytest.raises(InputError, match="labelled voxels lie outside the image grid"):
        place_on_grid(outside, ct)
