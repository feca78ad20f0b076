"""Model + plan -> nodule probability on a scan's own grid, restricted to the lung region.

The network was trained on arrays reoriented to the plan's orientation (RAS) at the plan's
spacing, normalised with :func:`medseg.transforms.normalise_ct`; this module applies the same
conventions to the lung bounding box only, runs the ROI sliding window and brings the
probability back onto the input grid (trilinear), so nothing outside the box is ever touched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medseg.io.volume import Volume
from medseg.plan import Plan
from medseg.transforms import normalise_ct

log = logging.getLogger(__name__)

#: Margin (mm) around the lung mask: windows within it are run and the ROI box is grown by it.
LUNG_MARGIN_MM = 8.0
#: HU used to pad outside the scan: air.
PAD_HU = -1000.0


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from medseg.errors import InputError

        raise InputError(None, "--device cuda requested but no CUDA device is available")
    return torch.device(device)


def _ornt_to(volume: Volume, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """nibabel orientation transforms: input array -> ``axcodes`` array, and back."""
    import nibabel as nib

    src = nib.orientations.io_orientation(volume.affine_ras)
    dst = nib.orientations.axcodes2ornt(tuple(axcodes))
    return nib.orientations.ornt_transform(src, dst), nib.orientations.ornt_transform(dst, src)


def _resample(t: torch.Tensor, size: tuple[int, ...], mode: str = "trilinear") -> torch.Tensor:
    """Corner-aligned resampling of a [X, Y, Z] tensor (first/last voxel centres stay put)."""
    if tuple(t.shape) == tuple(size):
        return t
    kw = {"align_corners": True} if mode == "trilinear" else {}
    return torch.nn.functional.interpolate(t[None, None], size=size, mode=mode, **kw)[0, 0]


def _target_size(shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]) -> tuple[int, ...]:
    return tuple(max(1, int(round((n - 1) * s / t)) + 1) for n, s, t in zip(shape, spacing, target))


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
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.plan = plan
        self.window = tuple(int(w) for w in (window or plan.patch_size))
        self.overlap = plan.inference.overlap if overlap is None else float(overlap)
        self.sw_batch_size = int(sw_batch_size or plan.inference.sw_batch_size)
        self.tta = tta
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

    # ----------------------------------------------------------------- prediction
    def predict_roi(
        self,
        volume: Volume,
        lung_mask: np.ndarray | None = None,
        progress: Any = None,
    ) -> RoiPrediction:
        """Probability in the lung bounding box (or the whole volume when ``lung_mask`` is None)."""
        from medseg.inference.lung_mask import bounding_box
        from medseg.inference.sliding_window import sliding_window_probability

        t0 = time.perf_counter()
        margin = tuple(int(np.ceil(LUNG_MARGIN_MM / s)) for s in volume.spacing)
        if lung_mask is not None:
            box = bounding_box(lung_mask, margin)
            if box is None:
                return RoiPrediction(np.zeros((0, 0, 0), np.float32), (slice(0, 0),) * 3, {"windows_run": 0})
        else:
            box = tuple(slice(0, n) for n in volume.shape)
        fwd, back = _ornt_to(volume, self.plan.orientation)
        import nibabel as nib

        crop = nib.orientations.apply_orientation(np.asarray(volume.array[box]), fwd)
        spacing = tuple(float(volume.spacing[int(a)]) for a in fwd[:, 0].argsort())
        # nibabel: fwd[i] = (new axis of input axis i, flip); spacing of new axis j = input axis with fwd[:,0]==j
        size = _target_size(crop.shape, spacing, self.plan.spacing)
        img = torch.from_numpy(normalise_ct(crop, self.plan.intensity))
        img = _resample(img, size).numpy()
        mask = None
        if lung_mask is not None:
            m = nib.orientations.apply_orientation(np.asarray(lung_mask[box]), fwd)
            idx = [np.rint(np.linspace(0, n - 1, k)).astype(int) for n, k in zip(m.shape, size)]
            mask = m[np.ix_(*idx)] > 0
            # grow by the margin (box dilation on the coarse grid is cheap and generous)
            from scipy import ndimage

            grow = [max(1, int(np.ceil(LUNG_MARGIN_MM / s))) * 2 + 1 for s in self.plan.spacing]
            mask = ndimage.maximum_filter(mask[::2, ::2, ::2], size=[max(1, g // 2) for g in grow])
            mask = np.repeat(np.repeat(np.repeat(mask, 2, 0), 2, 1), 2, 2)[: size[0], : size[1], : size[2]]
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
            amp=self.device.type == "cuda",
            cval=cval,
            tta=self.tta,
            progress=progress,
        )
        del img, mask
        t2 = time.perf_counter()
        back_t = _resample(torch.from_numpy(prob), tuple(crop.shape)).numpy()
        del prob
        back_t = nib.orientations.apply_orientation(back_t, back)
        t3 = time.perf_counter()
        stats = {
            **counts,
            "roi_shape_input": list(back_t.shape),
            "roi_shape_model": list(size),
            "preprocess_s": t1 - t0,
            "network_s": t2 - t1,
            "resample_back_s": t3 - t2,
        }
        return RoiPrediction(np.ascontiguousarray(back_t, dtype=np.float32), box, stats)

    def count_windows(self, volume: Volume, lung_mask: np.ndarray | None) -> int:
        """Upper bound of windows (for progress bars): all windows of the box."""
        from medseg.inference.lung_mask import bounding_box
        from medseg.inference.sliding_window import window_grid

        box = bounding_box(lung_mask, (0, 0, 0)) if lung_mask is not None else tuple(slice(0, n) for n in volume.shape)
        if box is None:
            return 0
        fwd, _ = _ornt_to(volume, self.plan.orientation)
        shape = [box[a].stop - box[a].start for a in range(3)]
        shape = [shape[int(a)] for a in fwd[:, 0].argsort()]
        spacing = [volume.spacing[int(a)] for a in fwd[:, 0].argsort()]
        size = _target_size(tuple(shape), tuple(spacing), self.plan.spacing)
        size = tuple(max(s, w) for s, w in zip(size, self.window))
        return len(window_grid(size, self.window, self.overlap))
