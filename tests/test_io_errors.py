"""Bad input: one clear error naming the file and the problem, exit code 2, nothing left behind."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from dicom_factory import write_ct_series

from medseg.cli import main
from medseg.errors import InputError
from medseg.io import Volume, atomic_path, read_volume, write_volume


def _nifti(path, shape=(16, 16, 8)):
    img = nib.Nifti1Image(np.random.default_rng(0).integers(-1000, 400, shape).astype(np.int16), np.eye(4))
    nib.save(img, str(path))
    return path


def _truncated(tmp_path):
    good = _nifti(tmp_path / "good.nii.gz", (40, 40, 20))
    data = good.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    return bad


def _corrupt(tmp_path):
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    return bad


def _random_bytes_mha(tmp_path):
    bad = tmp_path / "garbage.mha"
    bad.write_bytes(np.random.default_rng(0).bytes(500))
    return bad


def _two_d(tmp_path):
    return _nifti(tmp_path / "slice.nii.gz", (32, 32))


def _two_d_singleton(tmp_path):
    return _nifti(tmp_path / "slice1.nii.gz", (32, 32, 1))


def _empty_dicom_folder(tmp_path):
    folder = tmp_path / "empty_series"
    folder.mkdir()
    (folder / "IM0001.dcm").write_bytes(b"")
    (folder / "notes.txt").write_text("no images here")
    return folder


def _unsupported(tmp_path):
    p = tmp_path / "scan.txt"
    p.write_text("hello")
    return p


CASES = {
    "missing": (lambda t: t / "nope.nii.gz", "no such file"),
    "truncated": (_truncated, "truncated or corrupt"),
    "corrupt": (_corrupt, "truncated or corrupt"),
    "garbage_mha": (_random_bytes_mha, "truncated or corrupt"),
    "2d": (_two_d, "2D"),
    "2d_singleton": (_two_d_singleton, "2D"),
    "empty_dicom": (_empty_dicom_folder, "no DICOM images"),
    "unsupported": (_unsupported, "unsupported format"),
}


def _digest(path):
    if path.is_dir():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@pytest.mark.parametrize("case", CASES)
def test_read_volume_raises_input_error(tmp_path, case):
    make, fragment = CASES[case]
    path = make(tmp_path)
    before = _digest(path)
    with pytest.raises(InputError) as err:
        read_volume(path)
    assert str(path) in str(err.value)
    assert fragment.lower() in str(err.value).lower()
    assert _digest(path) == before  # the input is never modified


@pytest.mark.parametrize("case", CASES)
def test_cli_reports_one_line_and_exit_code_2(tmp_path, case, capsys):
    make, fragment = CASES[case]
    path = make(tmp_path)
    listing = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("medseg: error: ") and str(path) in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == listing  # nothing written


def test_cli_debug_shows_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "medseg", "--debug", "info", str(tmp_path / "missing.nii.gz")],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "InputError" in proc.stderr


def _tilted(tmp_path):
    hu = np.zeros((8, 8, 4), np.int16)
    pos = [np.array([0.0, 0.5 * k, 2.0 * k]) for k in range(4)]  # drifts along y per slice
    write_ct_series(tmp_path / "tilt", hu, positions=pos, shuffle_names=False)
    return tmp_path / "tilt"


def _gap(tmp_path):
    hu = np.zeros((8, 8, 5), np.int16)
    pos = [np.array([0.0, 0.0, z]) for z in (0.0, 2.0, 4.0, 8.0, 10.0)]  # slice at 6 mm missing
    write_ct_series(tmp_path / "gap", hu, positions=pos, shuffle_names=False)
    return tmp_path / "gap"


def _single(tmp_path):
    write_ct_series(tmp_path / "one", np.zeros((8, 8, 1), np.int16))
    return tmp_path / "one"


@pytest.mark.parametrize(
    "make, fragment",
    [(_tilted, "gantry"), (_gap, "inconsistent slice spacing"), (_single, "3D volume")],
)
def test_bad_dicom_series_rejected_with_reason(tmp_path, make, fragment):
    folder = make(tmp_path)
    with pytest.raises(InputError, match=fragment) as err:
        read_volume(folder)
    assert str(folder) in str(err.value)


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_atomically_and_cleans_temp(tmp_path):
    vol = Volume(np.zeros((4, 4, 4), np.int16), spacing=(1, 1, 1))
    target = tmp_path / "out.nii.gz"
    write_volume(vol, target)
    write_volume(vol.with_array(np.ones((4, 4, 4), np.int16)), target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]
    assert read_volume(target).array.sum() == 64
