"""The chunked trilinear resampler used on the way into and out of the model grid."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.inference.predictor import _interp3_whole, interp3


@pytest.mark.parametrize("chunk", [1, 3, 8, 1000])
@pytest.mark.parametrize("scales", [(1.0, 1.0, 1.0), (0.7, 1.3, 0.45), (2.0, 0.5, 2.6)])
def test_chunked_resampling_equals_a_whole_pass_and_scipy(chunk, scales):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(9, 11, 13)).astype(np.float32)
    pos = [np.arange(int((n - 1) / s) + 1) * s for n, s in zip(arr.shape, scales)]
    pos[2] = np.append(pos[2], [arr.shape[2] - 1, arr.shape[2] + 3])  # the end and beyond (clamped)
    out = interp3(arr, pos, chunk=chunk)
    np.testing.assert_array_equal(out, _interp3_whole(arr, pos))
    grid = np.meshgrid(*[np.clip(p, 0, n - 1) for p, n in zip(pos, arr.shape)], indexing="ij")
    np.testing.assert_allclose(out, ndimage.map_coordinates(arr, grid, order=1), atol=1e-5)


def test_transform_is_applied_per_chunk_without_changing_the_result():
    arr = np.arange(4 * 5 * 20, dtype=np.int16).reshape(4, 5, 20)
    pos = [np.arange(4) * 1.0, np.arange(5) * 1.0, np.arange(0, 19, 0.6)]
    seen = []

    def norm(a):
        seen.append(a.shape[2])
        return (a.astype(np.float32) - 100.0) / 7.0

    out = interp3(arr, pos, transform=norm, chunk=4)
    np.testing.assert_allclose(out, _interp3_whole(norm(arr), pos), rtol=1e-6, atol=1e-5)
    assert max(seen[:-1]) < arr.shape[2]  # chunks, not the whole input, went through the transform


def test_single_plane_axis_is_repeated():
    arr = np.ones((3, 3, 1), np.float32) * 5
    out = interp3(arr, [np.arange(3.0), np.arange(3.0), np.array([0.0, 0.5, 2.0])])
    assert out.shape == (3, 3, 3) and np.all(out == 5)


def test_resampled_image_windows_equal_the_whole_resampled_image():
    from medseg.inference.predictor import ResampledImage

    rng = np.random.default_rng(2)
    arr = rng.integers(-1000, 400, size=(30, 26, 17)).astype(np.int16)[::-1, :, ::-1]  # a flipped view
    pos = [np.arange(40) * 0.72, np.arange(20) * 1.31, np.arange(25) * 0.68]

    def norm(a):
        return (a.astype(np.float32) + 200.0) / 300.0

    img = ResampledImage(arr, pos, norm)
    full = img.full()
    assert img.shape == full.shape == (40, 20, 25)
    for _ in range(20):
        lo = [int(rng.integers(0, n - 4)) for n in full.shape]
        box = tuple(slice(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(lo, full.shape))
        np.testing.assert_array_equal(img[box], full[box])
