"""Model + plan -> nodule probability on a scan's own grid, restricted to the lung region.

The network was trained on the plan grid of :mod:`medseg.preprocess` (the plan's orientation,
RAS, at the plan's spacing, intensities from :func:`medseg.preprocess.normalise_ct`); this module
builds the same input for the lung bounding box only, runs the ROI sliding window and brings the
probability back onto the input grid with the same module's inverse, so nothing outside the box
is ever touched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medseg.io.volume import Volume
from medseg.models.device import resolve_device
from medseg.plan import Plan
from medseg.preprocess import (  # noqa: F401  (the resampling names stay importable from here)
    GridBox,
    PlanGrid,
    ResampledImage,
    _interp3_whole,
    interp3,
    interp_axis,
    model_grid_size,
    pad_value,
)

log = logging.getLogger(__name__)

#: Margin (mm) around the lung mask: windows within it are run and the ROI box is grown by it.
#: Every voxel inside the lung is covered only by windows that touch the lung, so any margin keeps
#: the result there equal to a whole-volume run; 2 mm absorbs the nearest-neighbour resampling of
#: the mask. (8 mm ran 37% more windows on a 512x512x300 scan for voxels outside the lung.)
LUNG_MARGIN_MM = 2.0


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


@dataclass
class GridPrediction:
    """Probability on the plan grid over ``geo`` (what :meth:`Predictor.predict_roi` resamples back)."""

    probability: np.ndarray  # float32, shape ``geo.shape``
    geo: GridBox
    stats: dict[str, Any] = field(default_factory=dict)

    def on_input(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """The probability brought back onto ``box`` (slices of the input grid) alone, as
        ``geo.to_input`` gives it there, without resampling the whole grid; zero outside ``geo``."""
        out = np.zeros([b.stop - b.start for b in box], np.float32)
        grid = self.geo.grid
        # covering() holds the plan voxels on both sides of every input voxel: what trilinear reads
        k = [(max(k0, g0), min(k1, g1)) for (k0, k1), (g0, g1) in zip(grid.covering(box), self.geo.k)]
        if any(k0 >= k1 for k0, k1 in k):
            return out
        sub = grid.box(k)
        local = tuple(slice(k0 - g0, k1 - g0) for (k0, k1), (g0, _) in zip(k, self.geo.k))
        values, where = sub.to_input(self.probability[local]), sub.dst_box
        # the part of the box that this sub-box fills (the whole box, unless it passes geo's edge)
        lo = [max(b.start, w.start) for b, w in zip(box, where)]
        hi = [min(b.stop, w.stop) for b, w in zip(box, where)]
        if any(a >= b for a, b in zip(lo, hi)):
            return out
        out[tuple(slice(a - b.start, z - b.start) for a, z, b in zip(lo, hi, box))] = \
            values[tuple(slice(a - w.start, z - w.start) for a, z, w in zip(lo, hi, where))]
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
        runtime: str = "torch",
    ) -> None:
        """``runtime``: what runs the network, ``torch`` | ``onnxruntime`` | ``openvino`` (the last two
        on the CPU, converted once here; see :mod:`medseg.models.runtime`)."""
        from medseg.models.precision import resolve_precision
        from medseg.models.runtime import ModelOf, make_runner, runtime_precision

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
        self.runtime = runtime
        #: the precision the network runs at: "fp32" | "bf16" | "fp16" (for reports)
        self.network_precision = runtime_precision(runtime, self.precision, self.device)
        #: what the sliding window runs: ``self.model`` (looked up at each call) for torch, else the
        #: network converted once, here
        runner = make_runner(self.model, runtime, self.network_precision, self.window, self.device)
        self.network = ModelOf(self) if runner is self.model else runner
        if runtime != "torch":
            self.autocast_dtype = None  # the converted runner applies its own precision

    def _check_window(self) -> None:
        strides = np.prod(np.asarray(self.plan.network.strides), axis=0)
        bad = [w % s for w, s in zip(self.window, strides)]
        if any(bad):
            raise ValueError(f"window {self.window} must be divisible by the network strides {tuple(strides)}")

    @classmethod
    def from_checkpoint(cls, path: str | None, device: str = "auto", **kwargs: Any) -> Predictor:
        """Load a checkpoint (``None`` = bundled model; :class:`InputError` when missing).

        ``device="auto"`` is the CPU for the CPU-only runtimes (``runtime="onnxruntime"``/``"openvino"``)."""
        from medseg.models import load_model

        dev = resolve_device("cpu" if device == "auto" and kwargs.get("runtime", "torch") != "torch" else device)
        model, plan, _ = load_model(path, device=dev)
        return cls(model, plan, device=dev, **kwargs)

    # ----------------------------------------------------------------- geometry
    def model_geometry(self, volume: Volume, lung_mask: np.ndarray | None) -> GridBox | None:
        """Where the network runs: the plan-grid box over the lung (``None`` when the mask is empty).

        The box covers the lung bounding box grown by :data:`LUNG_MARGIN_MM` (the whole volume
        without a mask), snapped to whole-volume windows (:func:`snap_roi`); see
        :class:`medseg.preprocess.GridBox` for its ``k``/``src``/``dst`` ranges.
        """
        from medseg.inference.lung_mask import bounding_box

        grid = PlanGrid.for_volume(volume, self.plan)
        if lung_mask is not None:
            margin = tuple(int(np.ceil(LUNG_MARGIN_MM / s)) for s in volume.spacing)
            box = bounding_box(lung_mask, margin)
            if box is None:
                return None
        else:
            box = tuple(slice(0, n) for n in volume.shape)
        k = [snap_roi(k0, k1, m, w, self.overlap) for (k0, k1), m, w in zip(grid.covering(box), grid.size, self.window)]
        return grid.box(k)

    def network_input(self, volume: Volume) -> np.ndarray:
        """The normalised plan-grid image the sliding window reads for the whole ``volume``, before
        window padding: what ``medseg.transforms.PlanResampled`` builds for training."""
        geo = self.model_geometry(volume, None)
        assert geo is not None  # only an empty lung mask has no box
        return geo.image(volume.array, self.plan.intensity).full()

    def window_mask(self, geo: GridBox, lung_mask: np.ndarray) -> np.ndarray:
        """The lung on the box, grown so that windows within LUNG_MARGIN_MM of it run too
        (nodules straddling the mask edge)."""
        from scipy import ndimage

        mask = geo.label(lung_mask) > 0
        grow = [2 * int(np.ceil(LUNG_MARGIN_MM / s)) + 1 for s in self.plan.spacing]
        return ndimage.maximum_filter(mask, size=grow) if mask.any() else mask

    # ----------------------------------------------------------------- prediction
    def predict_grid(
        self,
        volume: Volume,
        lung_mask: np.ndarray | None = None,
        progress: Any = None,
    ) -> GridPrediction | None:
        """Probability on the plan grid over the lung box (the whole volume when ``lung_mask`` is
        None); ``None`` when the mask is empty. Work at this grid's resolution (the mass pass) needs
        no input-grid array."""
        from medseg.inference.sliding_window import sliding_window_probability

        t0 = time.perf_counter()
        geo = self.model_geometry(volume, lung_mask)
        if geo is None:
            return None
        img = geo.image(volume.array, self.plan.intensity)
        mask = None if lung_mask is None else self.window_mask(geo, lung_mask)
        cval = pad_value(self.plan.intensity)  # what training pads small cases with
        t1 = time.perf_counter()
        prob, counts = sliding_window_probability(
            img,
            self.network,
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
        stats = {**counts, "roi_shape_model": list(geo.shape), "preprocess_s": t1 - t0,
                 "network_s": time.perf_counter() - t1}
        return GridPrediction(prob, geo, stats)

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
        grid = self.predict_grid(volume, lung_mask, progress)
        if grid is None:
            return RoiPrediction(np.zeros((0, 0, 0), np.float32), (slice(0, 0),) * 3, {"windows_run": 0})
        t = time.perf_counter()
        out = grid.geo.to_input(grid.probability)  # a flipped view, not a copy: one box-sized array less
        stats = {**grid.stats, "roi_shape_input": list(out.shape), "resample_back_s": time.perf_counter() - t}
        return RoiPrediction(out, grid.geo.dst_box, stats)

    def count_windows(self, volume: Volume, lung_mask: np.ndarray | None) -> int:
        """Windows of the ROI box (an upper bound of those run; for progress bars)."""
        from medseg.inference.sliding_window import window_grid

        geo = self.model_geometry(volume, lung_mask)
        if geo is None:
            return 0
        size = tuple(max(n, w) for n, w in zip(geo.shape, self.window))
        return len(window_grid(size, self.window, self.overlap))
