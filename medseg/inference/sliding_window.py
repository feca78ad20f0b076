"""ROI-restricted sliding-window inference with Gaussian blending and slab-wise accumulation.

It reproduces MONAI's ``sliding_window_inference`` (same window grid, same Gaussian importance
map, same blending of logits) with three differences that make whole-scan CPU inference cheap:

* windows that do not touch ``mask`` (the dilated lung) are never run;
* only the nodule evidence is kept: with two softmax channels the nodule probability is
  ``sigmoid(l1 - l0)`` and blending is linear, so blending the logit *difference* and applying a
  sigmoid gives exactly MONAI's ``softmax(blended logits)[1]`` - one channel instead of two;
* the blending buffers cover one slab (one window height along the last axis), not the volume;
  a slab is finished, divided and written out as soon as no later window can reach it.

Inside ``mask`` the result equals MONAI's to float rounding (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from medseg.models.precision import autocast


def scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> tuple[int, ...]:
    """Window step per axis, as MONAI's ``sliding_window_inference`` computes it.

    ``int(roi * (1 - overlap))``, at least 1; an axis whose image size equals the window's gets a
    step of the whole window (one window, whatever the overlap).
    """
    if len(image_size) != len(roi_size):
        raise ValueError(f"image size {tuple(image_size)} and window {tuple(roi_size)} differ in dimensions")
    steps = []
    for n, r in zip(image_size, roi_size):
        if int(r) == int(n):
            steps.append(int(r))
        else:
            steps.append(max(int(int(r) * (1.0 - float(overlap))), 1))
    return tuple(steps)


def window_grid(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: float
) -> list[tuple[slice, slice, slice]]:
    """The windows MONAI would visit for this image/window/overlap (image at least ``roi_size``)."""
    from monai.data.utils import dense_patch_slices

    scan = scan_interval(image_size, roi_size, overlap)
    return [tuple(s) for s in dense_patch_slices(tuple(image_size), tuple(roi_size), scan)]  # type: ignore[misc]


def gaussian_importance(roi_size: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """MONAI's Gaussian importance map (sigma = 0.125 x window size)."""
    from monai.data.utils import compute_importance_map

    return compute_importance_map(tuple(roi_size), mode="gaussian", sigma_scale=0.125, device=device)


def monai_pad(image_size: Sequence[int], roi_size: Sequence[int]) -> list[tuple[int, int]]:
    """Symmetric padding MONAI applies when the image is smaller than the window."""
    out = []
    for n, r in zip(image_size, roi_size):
        diff = max(int(r) - int(n), 0)
        out.append((diff // 2, diff - diff // 2))
    return out


def sliding_window_probability(
    image: np.ndarray | Any,
    network: Callable[[torch.Tensor], torch.Tensor],
    roi_size: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    mask: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    cval: float = 0.0,
    tta: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Nodule probability (float32, shape of ``image``) from a 2-channel segmentation network.

    ``image``: normalised intensities ``[X, Y, Z]``, or an object with ``shape``, ``full()`` and
    ``__getitem__(window slices)`` that computes windows on demand (so the image is never held
    whole; see :class:`medseg.inference.predictor.ResampledImage`). ``network`` maps ``[B, 1, *roi]`` to logits
    ``[B, 2, *roi]``. Windows not touching ``mask`` are skipped and voxels no window covers get
    probability 0. ``autocast_dtype`` runs the network under autocast (bf16/fp16; blending stays
    fp32). ``tta`` averages the logit difference over the 8 axis flips. ``progress`` is
    called with the number of windows just finished. Returns the probability and window counts.
    """
    device = torch.device(device)
    roi = tuple(int(r) for r in roi_size)
    orig_shape = tuple(image.shape)
    pad = monai_pad(orig_shape, roi)
    if not isinstance(image, np.ndarray) and any(p != (0, 0) for p in pad):
        image = image.full()  # smaller than one window: cheap to hold
    if any(p != (0, 0) for p in pad):
        image = np.pad(image, pad, mode="constant", constant_values=cval)
        if mask is not None:
            mask = np.pad(mask, pad, mode="constant")
    shape = image.shape
    windows = window_grid(shape, roi, overlap)
    n_total = len(windows)
    if mask is not None:
        windows = [w for w in windows if mask[w].any()]
    # slab order: by the window's start along the last axis
    windows.sort(key=lambda w: (w[2].start, w[0].start, w[1].start))

    out = np.zeros(shape, dtype=np.float32)
    weight = gaussian_importance(roi, device=device)
    rz = roi[2]
    num = torch.zeros((shape[0], shape[1], rz), dtype=torch.float32, device=device)
    den = torch.zeros_like(num)
    slab_z0 = 0  # world z (array index along the last axis) of the slab's first plane

    def finish(upto: int) -> None:
        """Write out planes [slab_z0, upto): no window still to come reaches them."""
        nonlocal slab_z0
        n = min(upto - slab_z0, rz)
        if n <= 0:
            return
        d = den[:, :, :n]
        prob = torch.where(d > 0, torch.sigmoid(num[:, :, :n] / d.clamp_min(1e-12)), torch.zeros_like(d))
        out[:, :, slab_z0 : slab_z0 + n] = prob.cpu().numpy()
        if n < rz:  # shift the rest of the slab down
            num[:, :, : rz - n] = num[:, :, n:].clone()
            den[:, :, : rz - n] = den[:, :, n:].clone()
        num[:, :, rz - n :] = 0
        den[:, :, rz - n :] = 0
        slab_z0 = upto

    if isinstance(image, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))

        def window_input(w: tuple[slice, slice, slice]) -> torch.Tensor:
            return tensor[w]
    else:

        def window_input(w: tuple[slice, slice, slice]) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(image[w], dtype=np.float32))
    flips: list[tuple[int, ...]] = [()]
    if tta:
        flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]

    with torch.inference_mode():
        for b0 in range(0, len(windows), sw_batch_size):
            batch = windows[b0 : b0 + sw_batch_size]
            # a batch may straddle two slab positions: run it, then accumulate window by window
            x = torch.stack([window_input(w) for w in batch])[:, None].to(device)
            diff = None
            for axes in flips:
                xi = torch.flip(x, axes) if axes else x
                with autocast(device, autocast_dtype):
                    logits = network(xi)
                d = (logits[:, 1] - logits[:, 0]).float()
                d = torch.flip(d, [a - 1 for a in axes]) if axes else d
                diff = d if diff is None else diff + d
            diff = diff / len(flips)
            for w, dw in zip(batch, diff):
                if w[2].start > slab_z0:
                    finish(w[2].start)
                z0 = w[2].start - slab_z0
                num[w[0], w[1], z0 : z0 + rz] += dw * weight
                den[w[0], w[1], z0 : z0 + rz] += weight
            if progress is not None:
                progress(len(batch))
    finish(shape[2])
    if any(p != (0, 0) for p in pad):
        out = out[tuple(slice(p[0], p[0] + n) for p, n in zip(pad, orig_shape))]
    return np.ascontiguousarray(out), {"windows_total": n_total, "windows_run": len(windows)}
