"""`medseg info` on real scans: right size and spacing for every shared file."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.cli import main


def _info(capsys, path) -> dict:
    assert main(["info", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_help_and_version():
    out = subprocess.run([sys.executable, "-m", "medseg", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("medseg ")
    out = subprocess.run([sys.executable, "-m", "medseg", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "info" in out.stdout


def test_info_json_keys(capsys, tmp_path):
    img = nib.Nifti1Image(np.zeros((5, 6, 7), np.int16), np.diag([-0.5, -0.6, 2.0, 1.0]))
    nib.save(img, str(tmp_path / "a.nii.gz"))
    facts = _info(capsys, tmp_path / "a.nii.gz")
    assert {"size", "spacing", "origin", "direction", "orientation", "modality"} <= set(facts)
    assert facts["size"] == [5, 6, 7]
    assert facts["spacing"] == pytest.approx([0.5, 0.6, 2.0])
    assert facts["orientation"] == "LPS"


@pytest.mark.parametrize(
    "rel",
    [
        "real_ct/torso_ct_3mm.nii.gz",
        "real_ct/torso_ct_3mm_30slices.nii.gz",
        "real_ct/torso_ct_3mm_30slices_totalseg_labels.nii.gz",
        "real_ct/abdomen_dicom_jpeg2000_totalseg_labels.nii.gz",
        "real_mr/abdomen_mr_3mm.nii.gz",
    ],
)
def test_info_matches_nifti_header(capsys, shared_data, rel):
    path = shared_data / rel
    hdr = nib.load(str(path)).header
    facts = _info(capsys, path)
    assert facts["size"] == list(hdr.get_data_shape()[:3])
    assert facts["spacing"] == pytest.approx([float(z) for z in hdr.get_zooms()[:3]], abs=1e-5)


def test_info_jpeg2000_dicom_series(capsys, shared_data):
    folder = shared_data / "real_ct" / "abdomen_dicom_jpeg2000"
    facts = _info(capsys, folder)
    assert facts["size"] == [512, 512, 20]
    assert facts["spacing"] == pytest.approx([0.976562, 0.976562, 2.0], abs=1e-5)
    assert facts["modality"] == "CT"
    # Same grid as its label map (which is stored flipped in j: compare in world space).
    labels = sitk.ReadImage(str(shared_data / "real_ct" / "abdomen_dicom_jpeg2000_totalseg_labels.nii.gz"))
    assert list(labels.GetSize()) == facts["size"]
    assert facts["spacing"] == pytest.approx(list(labels.GetSpacing()), abs=1e-4)
    # HU values decoded from JPEG 2000 look like CT (air around -1000, tissue above).
    lo, hi = facts["intensity_range"]
    assert -1100 <= lo <= -900 and hi > 500


def test_info_all_lidc_crops(shared_data):
    """Every LIDC crop: size and spacing equal the NIfTI header's."""
    from medseg.io import read_volume

    images = sorted((shared_data / "lidc_nodule_vois" / "image").glob("*.nii.gz"))
    assert len(images) == 736
    for path in images:
        hdr = nib.load(str(path)).header
        vol = read_volume(path)
        assert list(vol.shape) == list(hdr.get_data_shape()[:3]), path
        np.testing.assert_allclose(vol.spacing, hdr.get_zooms()[:3], atol=1e-5, err_msg=str(path))
