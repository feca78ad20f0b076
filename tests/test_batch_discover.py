"""Batch case discovery: folder trees, DICOM series, broken DICOM folders, CSV manifests, pipelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_factory import write_ct_series

from medseg.batch.discover import discover
from medseg.batch.pipeline import load_pipeline
from medseg.errors import InputError
from medseg.io import Volume, write_volume

REPO = Path(__file__).resolve().parents[1]


def _nifti(path: Path, shape=(8, 8, 6)) -> Path:
    write_volume(Volume(np.zeros(shape, np.int16), spacing=(1.0, 1.0, 2.0)), path)
    return path


def test_folder_tree_ids_follow_relative_paths(tmp_path):
    root = tmp_path / "in"
    _nifti(root / "a.nii.gz")
    _nifti(root / "site1" / "p01" / "ct.nii")
    write_volume(Volume(np.zeros((8, 8, 6), np.int16), spacing=(1.0, 1.0, 1.0)), root / "site1" / "scan.mha")
    write_ct_series(root / "site2" / "series_a", np.full((8, 8, 4), -500.0))
    cases = discover(root)
    by_id = {c.case_id: c for c in cases}
    assert set(by_id) == {"a", "site1__p01__ct", "site1__scan", "site2__series_a"}
    assert by_id["site2__series_a"].kind == "dicom" and len(by_id["site2__series_a"].files) == 4
    assert all(c.error is None for c in cases)
    assert Path(by_id["site1__p01__ct"].input) == root / "site1" / "p01" / "ct.nii"


def test_id_collisions_are_disambiguated(tmp_path):
    _nifti(tmp_path / "a" / "b.nii.gz")
    _nifti(tmp_path / "a__b.nii.gz")
    _nifti(tmp_path / "a__b.nii")
    ids = [c.case_id for c in discover(tmp_path)]
    assert len(ids) == 3 and len(set(ids)) == 3 and all(i.startswith("a__b") for i in ids)


def test_broken_dicom_folders_become_failed_cases(tmp_path):
    root = tmp_path / "in"
    (root / "empty_series").mkdir(parents=True)
    (root / "empty_series" / "IM0001.dcm").write_bytes(b"")
    (root / "extensionless").mkdir()
    (root / "extensionless" / "IM1").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")  # preamble, no image
    (root / "empty_leaf").mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a scan")
    write_ct_series(root / "mr", np.zeros((8, 8, 3)), modality="MR")  # non-CT: skipped, not failed
    _nifti(root / "good.nii.gz")
    cases = {c.case_id: c for c in discover(root)}
    assert set(cases) == {"empty_series", "extensionless", "empty_leaf", "good"}
    assert "no readable DICOM image" in cases["empty_series"].error and "1 empty" in cases["empty_series"].error
    assert "no readable DICOM image" in cases["extensionless"].error
    assert "empty folder" in cases["empty_leaf"].error
    assert cases["good"].error is None


def test_two_ct_series_in_one_folder_are_two_cases(tmp_path):
    write_ct_series(tmp_path / "mixed", np.zeros((8, 8, 5)), series_uid="1.2.3.4.1")
    for p in (tmp_path / "mixed").iterdir():
        p.rename(p.with_name("a_" + p.name))
    write_ct_series(tmp_path / "mixed", np.zeros((8, 8, 3)), series_uid="1.2.3.4.2")
    cases = discover(tmp_path)
    assert [c.case_id for c in cases] == ["mixed__series1", "mixed__series2"]
    assert [len(c.files) for c in cases] == [5, 3] and all(c.shared_folder for c in cases)


def test_output_folder_inside_input_is_not_searched(tmp_path):
    _nifti(tmp_path / "scan.nii.gz")
    out = tmp_path / "results"
    _nifti(out / "scan" / "scan_nodules.nii.gz")
    assert [c.case_id for c in discover(tmp_path, exclude=[out])] == ["scan"]


def test_manifest(tmp_path):
    _nifti(tmp_path / "data" / "x.nii.gz")
    write_ct_series(tmp_path / "data" / "dcm", np.zeros((8, 8, 3)))
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("path,case_id\ndata/x.nii.gz,subject 1\ndata/dcm,\ndata/missing.nii.gz,\n")
    cases = discover(manifest)
    assert [c.case_id for c in cases] == ["subject_1", "data__dcm", "data__missing"]
    assert [c.kind for c in cases] == ["file", "dicom", "file"]
    assert cases[2].error == "no such file or folder" and cases[0].error is None


@pytest.mark.parametrize("text,problem", [("file\nx.nii.gz\n", "'path' column"),
                                          ("path,case_id\na.nii,s1\nb.nii,s1\n", "duplicate case_id")])
def test_bad_manifest(tmp_path, text, problem):
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(InputError, match=problem):
        discover(manifest)


def test_missing_or_empty_input(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        discover(tmp_path / "nope")
    (tmp_path / "in").mkdir()
    with pytest.raises(InputError, match="no scans found"):
        discover(tmp_path / "in")


def test_repo_pipeline_file_is_valid_and_typos_are_rejected(tmp_path):
    plan = load_pipeline(REPO / "pipelines" / "lung_nodule_batch.yaml")
    assert plan["steps"] == ["discover", "segment", "summarise"]
    assert set(plan["inference"]) >= {"model", "device", "tta"}
    bad = tmp_path / "p.yaml"
    bad.write_text("inference:\n  modle: x.pt\n")
    with pytest.raises(InputError, match="modle"):
        load_pipeline(bad)
    bad.write_text("execution:\n  cluster: {type: kubernetes}\n")
    with pytest.raises(InputError, match="cluster"):
        load_pipeline(bad)
