"""Model + plan -> nodule probability on a scan's own grid, restricted to the lung region.

The network was trained on arrays reoriented to the plan's orientation (RAS) at the plan's
spacing, normalised with :func:`medseg.transforms.normalise_ct`; this module applies the same
conventions to the lung bounding box only, runs the ROI sliding window and brings the
probability back onto the input grid (trilinear), so nothing outside the box is ever touched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medseg.io.volume import Volume
from medseg.models.device import resolve_device
from medseg.plan import Plan
from medseg.transforms import normalise_ct

log = logging.getLogger(__name__)

#: Margin (mm) around the lung mask: windows within it are run and the ROI box is grown by it.
#: Every voxel inside the lung is covered only by windows that touch the lung, so any margin keeps
#: the result there equal to a whole-volume run; 2 mm absorbs the nearest-neighbour resampling of
#: the mask. (8 mm ran 37% more windows on a 512x512x300 scan for voxels outside the lung.)
LUNG_MARGIN_MM = 2.0
#: HU used to pad outside the scan: air.
PAD_HU = -1000.0


def _ornt_to(volume: Volume, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """nibabel orientation transforms: input array -> ``axcodes`` array, and back."""
    import nibabel as nib

    src = nib.orientations.io_orientation(volume.affine_ras)
    dst = nib.orientations.axcodes2ornt(tuple(axcodes))
    return nib.orientations.ornt_transform(src, dst), nib.orientations.ornt_transform(dst, src)


def interp_axis(array: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``array`` along ``axis`` at fractional ``positions`` (clamped)."""
    n = array.shape[axis]
    if n == 1:
        return np.repeat(array, len(positions), axis=axis)
    pos = np.clip(np.asarray(positions, dtype=np.float64), 0, n - 1)
    i0 = np.minimum(np.floor(pos).astype(np.intp), n - 2)
    w = (pos - i0).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = len(pos)
    w = w.reshape(shape)
    a0 = np.take(array, i0, axis=axis).astype(np.float32, copy=False)
    a1 = np.take(array, i0 + 1, axis=axis).astype(np.float32, copy=False)
    a1 -= a0
    a1 *= w
    a0 += a1
    return a0


def _axis_order(shape: tuple[int, ...], positions: list[np.ndarray]) -> list[int]:
    """Shrinking axes first: later passes then work on less data."""
    return sorted(range(3), key=lambda a: len(positions[a]) / max(shape[a], 1))


def _interp3_whole(array: np.ndarray, positions: list[np.ndarray], order: list[int] | None = None) -> np.ndarray:
    order = order or _axis_order(array.shape, positions)
    out = array
    for a in order:
        out = interp_axis(out, positions[a], a)
    return np.asarray(out, dtype=np.float32)


class ResampledImage:
    """Separable trilinear resampling of ``array`` at per-axis ``positions``, computed box by box.

    ``image[box]`` (slices of the output grid) reads only the input planes the box needs and
    equals ``full()[box]`` exactly: same clamping, same axis order. ``transform`` (elementwise,
    e.g. intensity normalisation) is applied to each input piece, never to a whole float32 copy.
    Sliding-window inference reads each window this way, so the resampled lung box (the largest
    array of the network stage) is never allocated.
    """

    def __init__(
        self,
        array: np.ndarray,
        positions: list[np.ndarray],
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.array = array
        self.pos = [np.clip(np.asarray(p, dtype=np.float64), 0, max(n - 1, 0)) for p, n in zip(positions, array.shape)]
        self.shape = tuple(len(p) for p in self.pos)
        self.transform = transform
        self.order = _axis_order(array.shape, self.pos)  # the whole pass's order: pieces round identically

    def __getitem__(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        src, pos = [], []
        for a, s in enumerate(box):
            p = self.pos[a][s]
            n = self.array.shape[a]
            lo = max(0, min(int(np.floor(p.min())), n - 2))  # two planes when there are two: same clamping
            hi = min(n, int(np.floor(p.max())) + 2)
            src.append(slice(lo, hi))
            pos.append(p - lo)
        sub = self.array[tuple(src)]
        if self.transform is not None:
            sub = self.transform(sub)
        return _interp3_whole(sub, pos, self.order)

    def full(self, chunk: int = 8) -> np.ndarray:
        """The whole result, built ``chunk`` planes at a time along the last axis: peak memory is
        the input plus the output, with no volume-sized temporaries."""
        out = np.empty(self.shape, dtype=np.float32)
        step = max(1, int(chunk))
        for c0 in range(0, self.shape[2], step):
            c1 = min(self.shape[2], c0 + step)
            out[:, :, c0:c1] = self[(slice(None), slice(None), slice(c0, c1))]
        return out


def interp3(
    array: np.ndarray,
    positions: list[np.ndarray],
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    chunk: int = 8,
) -> np.ndarray:
    """Separable trilinear resampling at per-axis positions (float32; positions clamped to the
    array), in chunks: see :class:`ResampledImage`. Equals a whole-array pass."""
    return ResampledImage(array, positions, transform).full(chunk)


def model_grid_size(n: int, spacing: float, target: float) -> int:
    """Voxels of the plan-spacing grid anchored at voxel 0 that fit inside ``n`` input voxels."""
    return int(np.floor((n - 1) * spacing / target + 1e-6)) + 1


def snap_roi(k0: int, k1: int, m: int, window: int, overlap: float) -> tuple[int, int]:
    """The span of the whole-axis windows that overlap ``[k0, k1)``.

    MONAI places windows at multiples of the scan interval from 0 plus one last window flush with
    the axis end. Running the window grid on this span visits exactly those windows, so every
    voxel whose windows are all run gets the same blended value as a whole-volume run.
    """
    from medseg.inference.sliding_window import window_grid

    if m <= window:
        return 0, m
    starts = [w[0].start for w in window_grid((m, window, window), (window, window, window), overlap)]
    hit = [s for s in starts if s < k1 and s + window > k0]
    if not hit:  # empty request: the window nearest to it
        hit = [min(starts, key=lambda s: abs(s - k0))]
    return min(hit), max(hit) + window


@dataclass
class RoiPrediction:
    """Probability inside ``box`` (slices of the input grid); zero elsewhere."""

    probability: np.ndarray  # float32, shape of the box
    box: tuple[slice, slice, slice]
    stats: dict[str, Any] = field(default_factory=dict)

    def full(self, shape: tuple[int, int, int]) -> np.ndarray:
        out = np.zeros(shape, np.float32)
        out[self.box] = self.probability
        return out


class Predictor:
    """A loaded network and its plan; turns volumes into nodule probabilities."""

    def __init__(
        self,
        model: torch.nn.Module,
        plan: Plan,
        device: torch.device | str = "cpu",
        window: tuple[int, int, int] | None = None,
        overlap: float | None = None,
        sw_batch_size: int | None = None,
        tta: bool = False,
        precision: str | None = None,
    ) -> None:
        from medseg.models.precision import resolve_precision

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.plan = plan
        self.window = tuple(int(w) for w in (window or plan.inference.window or plan.patch_size))
        self.overlap = plan.inference.overlap if overlap is None else float(overlap)
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"sliding-window overlap must be in [0, 1), got {self.overlap}")
        self.sw_batch_size = int(sw_batch_size or plan.inference.sw_batch_size)
        self.tta = tta
        #: "auto" | "fp32" | "bf16" | "fp16"; None = the plan's
        self.precision = precision or plan.inference.precision
        self.autocast_dtype = resolve_precision(self.precision, self.device)
        self._check_window()

    def _check_window(self) -> None:
        strides = np.prod(np.asarray(self.plan.network.strides), axis=0)
        bad = [w % s for w, s in zip(self.window, strides)]
        if any(bad):
            raise ValueError(f"window {self.window} must be divisible by the network strides {tuple(strides)}")

    @classmethod
    def from_checkpoint(cls, path: str | None, device: str = "auto", **kwargs: Any) -> Predictor:
        """Load a checkpoint (``None`` = bundled model; :class:`InputError` when missing)."""
        from medseg.models import load_model

        dev = resolve_device(device)
        model, plan, _ = load_model(path, device=dev)
        return cls(model, plan, device=dev, **kwargs)

    # ----------------------------------------------------------------- geometry
    def model_geometry(self, volume: Volume, lung_mask: np.ndarray | None) -> dict[str, Any] | None:
        """Where the network runs, in three index spaces (``None`` when the mask is empty).

        ``fwd``/``back``: nibabel orientation transforms input <-> plan orientation; ``scale``:
        input voxels per model voxel along the reoriented axes; ``k``: model-grid ranges (plan
        spacing, anchored at the reoriented volume's voxel 0); ``src``: reoriented input ranges
        read to fill them; ``dst``: reoriented input ranges that receive probabilities.
        """
        from medseg.inference.lung_mask import bounding_box

        fwd, back = _ornt_to(volume, self.plan.orientation)
        perm = fwd[:, 0].argsort()  # reoriented axis j comes from input axis perm[j]
        shape = [volume.shape[int(a)] for a in perm]
        spacing = [volume.spacing[int(a)] for a in perm]
        if lung_mask is not None:
            margin = tuple(int(np.ceil(LUNG_MARGIN_MM / s)) for s in volume.spacing)
            box = bounding_box(lung_mask, margin)
            if box is None:
                return None
        else:
            box = tuple(slice(0, n) for n in volume.shape)
        k, src, dst = [], [], []
        scale = [t / s for s, t in zip(spacing, self.plan.spacing)]
        for j in range(3):
            a = int(perm[j])
            lo, hi = box[a].start, box[a].stop
            if fwd[a, 1] < 0:
                lo, hi = shape[j] - hi, shape[j] - lo
            m = model_grid_size(shape[j], spacing[j], self.plan.spacing[j])
            k0 = int(np.floor(lo / scale[j] + 1e-6))
            k1 = min(m, int(np.ceil((hi - 1) / scale[j] - 1e-6)) + 1)
            k0, k1 = snap_roi(k0, k1, m, self.window[j], self.overlap)
            k.append((k0, k1))
            src.append((int(np.floor(k0 * scale[j] + 1e-6)), min(shape[j], int(np.floor((k1 - 1) * scale[j] + 1e-6)) + 2)))
            d1 = shape[j] if k1 == m else min(shape[j], int(np.floor((k1 - 1) * scale[j] + 1e-6)) + 1)
            dst.append((int(np.ceil(k0 * scale[j] - 1e-6)), d1))  # the axis end: edge values held
        return {"fwd": fwd, "back": back, "perm": perm, "shape": shape, "scale": scale, "k": k, "src": src, "dst": dst}

    @staticmethod
    def _input_box(geo: dict[str, Any], ranges: list[tuple[int, int]]) -> tuple[slice, slice, slice]:
        """Reoriented-index ranges -> slices of the input array."""
        out: list[slice] = [slice(0, 0)] * 3
        for j, (lo, hi) in enumerate(ranges):
            a = int(geo["perm"][j])
            if geo["fwd"][a, 1] < 0:
                lo, hi = geo["shape"][j] - hi, geo["shape"][j] - lo
            out[a] = slice(lo, hi)
        return tuple(out)  # type: ignore[return-value]

    # ----------------------------------------------------------------- prediction
    def predict_roi(
        self,
        volume: Volume,
        lung_mask: np.ndarray | None = None,
        progress: Any = None,
    ) -> RoiPrediction:
        """Probability in the lung bounding box (or the whole volume when ``lung_mask`` is None).

        Inside the lung the values equal a whole-volume MONAI sliding window on the same
        plan-spacing grid (same windows, same blending); see :func:`snap_roi`.
        """
        import nibabel as nib
        from scipy import ndimage

        from medseg.inference.sliding_window import sliding_window_probability

        t0 = time.perf_counter()
        geo = self.model_geometry(volume, lung_mask)
        if geo is None:
            return RoiPrediction(np.zeros((0, 0, 0), np.float32), (slice(0, 0),) * 3, {"windows_run": 0})
        src_box = self._input_box(geo, geo["src"])
        crop = nib.orientations.apply_orientation(np.asarray(volume.array[src_box]), geo["fwd"])
        positions = [np.arange(k0, k1) * sc - s0 for (k0, k1), sc, (s0, _) in zip(geo["k"], geo["scale"], geo["src"])]
        img = ResampledImage(crop, positions, transform=lambda a: normalise_ct(a, self.plan.intensity))
        mask = None
        if lung_mask is not None:
            m = nib.orientations.apply_orientation(np.asarray(lung_mask[src_box]), geo["fwd"]) > 0
            idx = [np.clip(np.rint(p).astype(int), 0, n - 1) for p, n in zip(positions, m.shape)]
            mask = m[np.ix_(*idx)]
            # windows within LUNG_MARGIN_MM of the lung run too (nodules straddling the mask edge)
            grow = [2 * int(np.ceil(LUNG_MARGIN_MM / s)) + 1 for s in self.plan.spacing]
            mask = ndimage.maximum_filter(mask, size=grow) if mask.any() else mask
        t1 = time.perf_counter()
        cval = float(normalise_ct(np.array([PAD_HU]), self.plan.intensity)[0])
        prob, counts = sliding_window_probability(
            img,
            self.model,
            self.window,
            overlap=self.overlap,
            sw_batch_size=self.sw_batch_size,
            mask=mask,
            device=self.device,
            autocast_dtype=self.autocast_dtype,
            cval=cval,
            tta=self.tta,
            progress=progress,
        )
        del img, mask
        t2 = time.perf_counter()
        back_pos = [np.arange(d0, d1) / sc - k0 for (d0, d1), sc, (k0, _) in zip(geo["dst"], geo["scale"], geo["k"])]
        out = nib.orientations.apply_orientation(interp3(prob, back_pos), geo["back"])
        del prob
        t3 = time.perf_counter()
        stats = {
            **counts,
            "roi_shape_input": list(out.shape),
            "roi_shape_model": [k1 - k0 for k0, k1 in geo["k"]],
            "preprocess_s": t1 - t0,
            "network_s": t2 - t1,
            "resample_back_s": t3 - t2,
        }
        # a flipped view, not a copy: one ROI-sized float32 array less at the peak
        return RoiPrediction(out, self._input_box(geo, geo["dst"]), stats)

    def count_windows(self, volume: Volume, lung_mask: np.ndarray | None) -> int:
        """Windows of the ROI box (an upper bound of those run; for progress bars)."""
        from medseg.inference.sliding_window import window_grid

        geo = self.model_geometry(volume, lung_mask)
        if geo is None:
            return 0
        size = tuple(max(k1 - k0, w) for (k0, k1), w in zip(geo["k"], self.window))
        return len(window_grid(size, self.window, self.overlap))
