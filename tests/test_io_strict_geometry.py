"""Strict headers: invalid voxel spacing and arrays too large for memory are refused by the header
alone, with one message naming the file; a DICOM series needing the GPL JPEG decoder names the
extra that installs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_factory import write_ct_series

from medseg.cli import main
from medseg.errors import InputError, MissingExtraError
from medseg.io import Volume, read_volume
from medseg.io.limits import available_memory_bytes

REPO = Path(__file__).resolve().parents[1]
BAD_SPACINGS = [0.0, -1.5, float("nan"), float("inf")]


def _nifti_without_affine(path: Path, first_pixdim: float) -> Path:
    """A NIfTI whose only geometry is pixdim (qform and sform codes 0), first pixdim as given."""
    img = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    img.header["pixdim"][1:4] = [first_pixdim, 0.8, 2.0]
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("bad", BAD_SPACINGS)
def test_nifti_pixdim_that_is_not_a_positive_number_is_refused(tmp_path, bad):
    path = _nifti_without_affine(tmp_path / "scan.nii.gz", bad)
    with pytest.raises(InputError, match="invalid voxel spacing") as err:
        read_volume(path)
    assert str(path) in str(err.value) and "pixdim" in str(err.value)


def test_nifti_valid_pixdim_without_affine_is_read_with_that_spacing(tmp_path):
    path = _nifti_without_affine(tmp_path / "scan.nii.gz", 0.7)
    assert read_volume(path).spacing == pytest.approx((0.7, 0.8, 2.0))


def test_nifti_sform_with_a_zero_axis_is_refused(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((6, 5, 4))
    hdr.set_data_dtype(np.int16)
    hdr["sform_code"], hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = 1, [0.7, 0, 0, 0], [0, 0, 0, 0], [0, 0, 2, 0]
    hdr["vox_offset"] = 352
    path = tmp_path / "s.nii"
    with open(path, "wb") as fh:
        hdr.write_to(fh)
        fh.write(b"\0" * 4 + np.zeros((6, 5, 4), np.int16).tobytes())
    with pytest.raises(InputError, match="invalid voxel spacing.*sform"):
        read_volume(path)


def _mha(path: Path, size: str, spacing: str = "1 1 1", element: str = "MET_SHORT", data: bytes = b"\0" * 64) -> Path:
    header = (f"ObjectType = Image\nNDims = 3\nDimSize = {size}\nElementType = {element}\n"
              f"ElementSpacing = {spacing}\nElementDataFile = LOCAL\n")
    path.write_bytes(header.encode() + data)
    return path


@pytest.mark.parametrize("spacing", ["0 1 1", "-1 1 1", "nan 1 1", "inf 1 1"])
def test_mha_spacing_that_is_not_a_positive_number_is_refused(tmp_path, spacing):
    # SimpleITK itself reads "-1" as 1 mm and "nan" as 0: the header is checked before that
    path = _mha(tmp_path / "scan.mha", "2 2 2", spacing)
    with pytest.raises(InputError, match="invalid voxel spacing") as err:
        read_volume(path)
    assert str(path) in str(err.value)


def test_nrrd_zero_space_direction_is_refused(tmp_path):
    header = ("NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 2 2 2\n"
              "space directions: (0,0,0) (0,1,0) (0,0,1)\nencoding: raw\nendian: little\nspace origin: (0,0,0)\n\n")
    path = tmp_path / "scan.nrrd"
    path.write_bytes(header.encode() + b"\0" * 16)
    with pytest.raises(InputError, match="invalid voxel spacing"):
        read_volume(path)


@pytest.mark.parametrize("bad", ["0", "-0.7", "nan"])
def test_dicom_pixel_spacing_that_is_not_a_positive_number_is_refused(tmp_path, bad):
    import pydicom

    files = write_ct_series(tmp_path / "ct", np.zeros((8, 8, 3), np.int16))
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PixelSpacing = [bad, "0.8"]
        ds.save_as(f)
    with pytest.raises(InputError, match="invalid voxel spacing") as err:
        read_volume(tmp_path / "ct")
    assert str(tmp_path / "ct") in str(err.value)


def test_volume_refuses_non_finite_geometry():
    with pytest.raises(ValueError, match="finite"):
        Volume(np.zeros((2, 2, 2)), spacing=(1.0, float("nan"), 1.0))
    with pytest.raises(ValueError, match="finite"):
        Volume(np.zeros((2, 2, 2)), spacing=(1.0, 1.0, 1.0), origin=(0.0, float("inf"), 0.0))


def _huge_nifti2(path: Path) -> Path:
    """A NIfTI-2 header claiming 100000 x 100000 x 1000 int16 (18 TiB) followed by 64 bytes."""
    hdr = nib.Nifti2Header()
    hdr.set_data_shape((100000, 100000, 1000))
    hdr.set_data_dtype(np.int16)
    hdr.set_zooms((0.7, 0.7, 1.0))
    hdr["vox_offset"] = 544
    with open(path, "wb") as fh:
        hdr.write_to(fh)
        fh.write(b"\0" * 4 + b"\0" * 64)  # no extensions, then a tiny data block
    return path


def test_header_claiming_more_than_memory_is_refused_by_the_header_alone(tmp_path, capsys):
    assert available_memory_bytes() is not None and available_memory_bytes() < 2 * 10**13
    for path in (_huge_nifti2(tmp_path / "huge.nii"), _mha(tmp_path / "huge.mha", "100000 100000 1000")):
        with pytest.raises(InputError, match="more than the .* of memory available") as err:
            read_volume(path)  # not "truncated": the data block is never read
        assert str(path) in str(err.value) and "100000 x 100000 x 1000" in str(err.value)
        assert main(["info", str(path)]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_small_image_with_the_same_kind_of_header_is_read(tmp_path):
    path = _mha(tmp_path / "small.mha", "4 4 4", data=np.arange(64, dtype=np.int16).tobytes())
    vol = read_volume(path)
    assert vol.shape == (4, 4, 4) and int(vol.array[3, 0, 0]) == 3


def _jpeg_lossless_series(folder: Path) -> Path:
    """A series whose files declare JPEG Lossless SV1 pixel data (only libjpeg or GDCM decode it)."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    for f in write_ct_series(folder, np.zeros((8, 8, 3), np.int16)):
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.save_as(f, enforce_file_format=True)
    return folder


def test_jpeg_series_without_the_gpl_decoder_names_the_jpeg_extra(tmp_path):
    folder = _jpeg_lossless_series(tmp_path / "jpeg")
    # a fresh interpreter as if pylibjpeg-libjpeg were not installed: its module "libjpeg" cannot
    # be imported and pylibjpeg finds no plugin entry point of it
    code = ("import sys, importlib.metadata as md\n"
            "sys.modules['libjpeg'] = None\n"
            "every = md.entry_points\n"
            "md.entry_points = lambda **kw: md.EntryPoints(e for e in every(**kw) if not e.value.startswith('libjpeg'))\n"
            "from medseg.cli import main\n"
            f"sys.exit(main(['info', {str(folder)!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and 'pip install "medseg[jpeg]"' in err[0] and "GPL" in err[0], proc.stderr
    assert "JPEG Lossless" in err[0] and str(folder) in err[0]


def test_missing_extra_error_is_an_input_error_naming_the_extra():
    exc = MissingExtraError("pixel data compressed as JPEG", "jpeg", "/x/IM1.dcm", why="a decoder")
    assert isinstance(exc, InputError) and exc.extra == "jpeg"
    assert str(exc) == '/x/IM1.dcm: pixel data compressed as JPEG needs a decoder: pip install "medseg[jpeg]"'
