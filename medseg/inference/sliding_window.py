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

#: a window: slices of the (padded) image
Box = tuple[slice, slice, slice]


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


#: the 8 axis flips of test-time augmentation, as dimensions of a ``[B, 1, X, Y, Z]`` batch
_TTA_FLIPS: list[tuple[int, ...]] = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]


class SlabAccumulator:
    """Gaussian-weighted blending of window logit differences, one slab at a time.

    The buffers span one window height along the last axis (``num``: weighted sum, ``den``: sum of
    weights), starting at plane ``z0`` of the image. Windows must arrive sorted by their start
    along that axis: a window starting beyond ``z0`` proves that no later window reaches the planes
    before it, so those are finished (divided, passed through the sigmoid, written to ``out``) and
    the slab slides on.
    """

    def __init__(self, shape: Sequence[int], roi: Sequence[int], device: torch.device) -> None:
        self.out = np.zeros(tuple(shape), dtype=np.float32)
        self.weight = gaussian_importance(roi, device=device)
        self.rz = int(roi[2])
        self.num = torch.zeros((shape[0], shape[1], self.rz), dtype=torch.float32, device=device)
        self.den = torch.zeros_like(self.num)
        self.z0 = 0  # image plane (index along the last axis) of the slab's first plane

    def add(self, window: Box, diff: torch.Tensor) -> None:
        """Blend one window's logit difference (``roi``-shaped) into the slab."""
        if window[2].start > self.z0:
            self.finish(window[2].start)
        z = window[2].start - self.z0
        self.num[window[0], window[1], z : z + self.rz] += diff * self.weight
        self.den[window[0], window[1], z : z + self.rz] += self.weight

    def finish(self, upto: int) -> None:
        """Write out planes ``[z0, upto)``: no window still to come reaches them."""
        n = min(upto - self.z0, self.rz)
        if n <= 0:
            return
        num, den, rz = self.num, self.den, self.rz
        d = den[:, :, :n]
        # voxels no run window covered have no weight: probability 0, not 0/0
        prob = torch.where(d > 0, torch.sigmoid(num[:, :, :n] / d.clamp_min(1e-12)), torch.zeros_like(d))
        self.out[:, :, self.z0 : self.z0 + n] = prob.cpu().numpy()
        if n < rz:  # shift the rest of the slab down
            num[:, :, : rz - n] = num[:, :, n:].clone()
            den[:, :, : rz - n] = den[:, :, n:].clone()
        num[:, :, rz - n :] = 0
        den[:, :, rz - n :] = 0
        self.z0 = upto


def window_reader(image: np.ndarray | Any) -> Callable[[Box], torch.Tensor]:
    """``window -> float32 tensor`` for an array (read in place) or a lazy image (computed per window)."""
    if isinstance(image, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        return lambda w: tensor[w]
    return lambda w: torch.from_numpy(np.ascontiguousarray(image[w], dtype=np.float32))


def logit_difference(
    network: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    flips: Sequence[tuple[int, ...]],
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> torch.Tensor:
    """Nodule minus background logit of a ``[B, 1, *roi]`` batch, averaged over ``flips`` (fp32)."""
    diff = None
    for axes in flips:
        xi = torch.flip(x, axes) if axes else x
        with autocast(device, autocast_dtype):
            logits = network(xi)
        d = (logits[:, 1] - logits[:, 0]).float()
        d = torch.flip(d, [a - 1 for a in axes]) if axes else d  # the channel dimension is gone
        diff = d if diff is None else diff + d
    return diff / len(flips)


def pad_to_window(
    image: np.ndarray | Any, mask: np.ndarray | None, roi: Sequence[int], cval: float
) -> tuple[np.ndarray | Any, np.ndarray | None, list[tuple[int, int]]]:
    """Pad ``image`` (with ``cval``) and ``mask`` as MONAI does where an axis is shorter than the window."""
    pad = monai_pad(tuple(image.shape), roi)
    if all(p == (0, 0) for p in pad):
        return image, mask, pad
    if not isinstance(image, np.ndarray):
        image = image.full()  # smaller than one window: cheap to hold
    image = np.pad(image, pad, mode="constant", constant_values=cval)
    if mask is not None:
        mask = np.pad(mask, pad, mode="constant")
    return image, mask, pad


def windows_to_run(
    shape: Sequence[int], roi: Sequence[int], overlap: float, mask: np.ndarray | None
) -> tuple[list[Box], int]:
    """MONAI's windows that touch ``mask`` (all without one) in slab order, and how many there are in all."""
    windows = window_grid(shape, roi, overlap)
    n_total = len(windows)
    if mask is not None:
        windows = [w for w in windows if mask[w].any()]
    # slab order: by the window's start along the last axis
    windows.sort(key=lambda w: (w[2].start, w[0].start, w[1].start))
    return windows, n_total


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
    whole; see :class:`medseg.preprocess.ResampledImage`). ``network`` maps ``[B, 1, *roi]`` to logits
    ``[B, 2, *roi]``. Windows not touching ``mask`` are skipped and voxels no window covers get
    probability 0. ``autocast_dtype`` runs the network under autocast (bf16/fp16; blending stays
    fp32). ``tta`` averages the logit difference over the 8 axis flips. ``progress`` is
    called with the number of windows just finished. Returns the probability and window counts.
    """
    device = torch.device(device)
    roi = tuple(int(r) for r in roi_size)
    orig_shape = tuple(image.shape)
    image, mask, pad = pad_to_window(image, mask, roi, cval)
    windows, n_total = windows_to_run(image.shape, roi, overlap, mask)
    slab = SlabAccumulator(image.shape, roi, device)
    read = window_reader(image)
    flips = _TTA_FLIPS if tta else [()]
    with torch.inference_mode():
        for b0 in range(0, len(windows), sw_batch_size):
            batch = windows[b0 : b0 + sw_batch_size]
            # a batch may straddle two slab positions: run it, then accumulate window by window
            x = torch.stack([read(w) for w in batch])[:, None].to(device)
            diff = logit_difference(network, x, flips, device, autocast_dtype)
            for w, dw in zip(batch, diff):
                slab.add(w, dw)
            if progress is not None:
                progress(len(batch))
    slab.finish(image.shape[2])
    out = slab.out[tuple(slice(p[0], p[0] + n) for p, n in zip(pad, orig_shape))]
    return np.ascontiguousarray(out), {"windows_total": n_total, "windows_run": len(windows)}
