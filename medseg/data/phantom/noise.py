"""CT noise: correlated Gaussian noise from a pool of smoothed slices, and the int16 HU image."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .canvas import Canvas

_SLAB = 16
#: At most this many independently drawn noise slices; longer scans reuse them, shifted and flipped.
_POOL = 32


def finish_ct(canvas: Canvas, rng: np.random.Generator, noise_hu: float, smoothing: float) -> np.ndarray:
    """Add correlated Gaussian noise and convert to int16 HU.

    Noise comes from a pool of at most 32 independently drawn, in-plane smoothed slices; each
    slice of the scan takes one of them with a random circular shift, flip and sign. This
    keeps a 512x512x300 phantom to seconds (drawing and filtering 79 M normal samples is
    most of the cost otherwise); scans with no more slices than the pool get fully
    independent noise. Frees ``canvas.ct`` (the float volume).
    """
    nx, ny, nz = canvas.shape
    out = np.empty(canvas.shape, dtype=np.int16)
    pool = noise_pool(rng, canvas.shape, noise_hu, smoothing) if noise_hu > 0 else None
    for k0 in range(0, nz, _SLAB):
        k1 = min(nz, k0 + _SLAB)
        part = canvas.ct[:, :, k0:k1]
        if pool is not None:
            noise = np.empty((nx, ny, k1 - k0), np.float32)
            for k in range(k0, k1):
                noise[:, :, k - k0] = _slice_noise(rng, pool, k, nz)
            part = part + noise
        out[:, :, k0:k1] = np.clip(np.rint(part), -1024, 3071)
    canvas.ct = None  # type: ignore[assignment]  # free the float volume early
    return out


def noise_pool(rng: np.random.Generator, shape: tuple[int, int, int], noise_hu: float,
               smoothing: float) -> np.ndarray:
    """``min(nz, 32)`` noise slices ``(n, nx, ny)``, in-plane smoothed with sigma ``smoothing``
    (voxels) and scaled so each voxel's standard deviation is ``noise_hu``."""
    nx, ny, nz = shape
    n_pool = min(nz, _POOL)
    pool = rng.standard_normal((n_pool, nx, ny), dtype=np.float32)
    gain = 1.0
    if smoothing > 0:
        pool = ndimage.gaussian_filter(pool, (0.0, smoothing, smoothing), mode="wrap")
        delta = np.zeros((1, 15, 15), np.float32)
        delta[0, 7, 7] = 1.0
        gain = 1.0 / float(np.sqrt((ndimage.gaussian_filter(delta, (0.0, smoothing, smoothing)) ** 2).sum()))
    pool *= np.float32(noise_hu * gain)
    return pool


def _slice_noise(rng: np.random.Generator, pool: np.ndarray, k: int, nz: int) -> np.ndarray:
    """Noise of slice ``k``: its own pool slice, or (long scans) a random one shifted, flipped
    and negated at random."""
    if nz <= len(pool):
        return pool[k]
    _, nx, ny = pool.shape
    src = np.roll(pool[int(rng.integers(len(pool)))],
                  (int(rng.integers(nx)), int(rng.integers(ny))), axis=(0, 1))
    if rng.random() < 0.5:
        src = src[::-1]
    if rng.random() < 0.5:
        src = src[:, ::-1]
    if rng.random() < 0.5:
        src = -src
    return src
