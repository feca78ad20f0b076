"""The one preprocessing definition: how a scan becomes network input, and how output goes back.

A network sees a scan on its *plan grid*: the array reoriented to ``plan.orientation`` (nibabel
axcodes, RAS), sampled every ``plan.spacing`` mm from the reoriented voxel 0, with as many planes
per axis as fit inside the scan (:func:`model_grid_size`, floor + 1). CT intensities are
normalised with :func:`normalise_ct` and then interpolated trilinearly (separable,
:class:`ResampledImage`); labels and masks take the nearest voxel (:func:`resample_nearest`).
Network output returns to the input grid trilinearly (:meth:`GridBox.to_input`).

:class:`PlanGrid` is that geometry for one scan and :class:`GridBox` a box of it together with the
input ranges the box reads and writes back. Training and validation
(:class:`medseg.transforms.PlanResampled`) and inference (:class:`medseg.inference.predictor.Predictor`)
both build their arrays here, so a model is applied to exactly the input it was trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.plan import IntensityPlan

if TYPE_CHECKING:
    from medseg.io.volume import Volume
    from medseg.plan import Plan

#: slices of an array, one per axis
Box = tuple[slice, slice, slice]
#: ``(start, stop)`` index range per axis
Ranges = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

#: grid positions are products of float spacings: this absorbs their rounding at whole voxels
_EPS = 1e-6


# ----------------------------------------------------------------------------- intensities
def normalise_ct(array: np.ndarray, intensity: IntensityPlan) -> np.ndarray:
    """Clip HU to ``intensity.clip`` then standardise with the plan's mean/std (float32)."""
    lo, hi = intensity.clip
    out = np.clip(np.asarray(array, dtype=np.float32), lo, hi)
    out -= np.float32(intensity.mean)
    out /= np.float32(intensity.std)
    return out


def pad_value(intensity: IntensityPlan) -> float:
    """Normalised value of the lowest clipped HU (air): what patches and windows are padded with.

    Training pads small cases to the patch size with it and sliding-window inference pads windows
    with it. Computed by :func:`normalise_ct` itself so both pad with the very same float32 value.
    """
    return float(normalise_ct(np.array([intensity.clip[0]]), intensity)[0])


# ----------------------------------------------------------------------------- orientation
def orientation_transforms(affine_ras: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """nibabel orientation transforms: input array -> ``axcodes`` array, and back."""
    import nibabel as nib

    src = nib.orientations.io_orientation(affine_ras)
    dst = nib.orientations.axcodes2ornt(tuple(axcodes))
    return nib.orientations.ornt_transform(src, dst), nib.orientations.ornt_transform(dst, src)


def reorient(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """``array`` transposed/flipped by a nibabel orientation transform (a view where possible)."""
    import nibabel as nib

    return nib.orientations.apply_orientation(array, ornt)


# ----------------------------------------------------------------------------- resampling
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

    def __getitem__(self, box: Box) -> np.ndarray:
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


def nearest_indices(positions: Sequence[np.ndarray], shape: Sequence[int]) -> list[np.ndarray]:
    """Per-axis index of the input voxel nearest to each position (clamped to the array)."""
    return [np.clip(np.rint(p).astype(int), 0, n - 1) for p, n in zip(positions, shape)]


def resample_nearest(array: np.ndarray, positions: Sequence[np.ndarray]) -> np.ndarray:
    """Nearest-neighbour resampling at per-axis positions: labels and masks keep their values."""
    return array[np.ix_(*nearest_indices(positions, array.shape))]


# ----------------------------------------------------------------------------- the plan grid
def model_grid_size(n: int, spacing: float, target: float) -> int:
    """Voxels of the plan-spacing grid anchored at voxel 0 that fit inside ``n`` input voxels."""
    return int(np.floor((n - 1) * spacing / target + _EPS)) + 1


@dataclass(frozen=True, eq=False)
class PlanGrid:
    """One scan's plan grid: reorientation to the plan axcodes and plan-spacing sampling.

    Plan-grid axis ``j`` is input axis ``perm[j]`` (flipped where the orientation says so); its
    voxel ``k`` lies at reoriented input voxel ``k * scale[j]``. ``shape`` and ``spacing`` are the
    reoriented input's, ``target`` the plan spacing, ``affine`` the reoriented input's RAS affine.
    """

    fwd: np.ndarray
    back: np.ndarray
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    target: tuple[float, float, float]
    affine: np.ndarray

    @classmethod
    def from_affine(
        cls,
        shape: Sequence[int],
        affine_ras: np.ndarray,
        target: Sequence[float],
        axcodes: str = "RAS",
        spacing: Sequence[float] | None = None,
    ) -> PlanGrid:
        """The grid of an array of ``shape`` with RAS affine ``affine_ras`` (voxel size ``spacing``,
        default the affine's column norms) at plan spacing ``target`` in ``axcodes``."""
        import nibabel as nib

        affine_ras = np.asarray(affine_ras, dtype=np.float64)
        fwd, back = orientation_transforms(affine_ras, axcodes)
        if spacing is None:
            spacing = np.linalg.norm(affine_ras[:3, :3], axis=0)
        perm = fwd[:, 0].argsort()
        return cls(
            fwd=fwd,
            back=back,
            shape=tuple(int(shape[int(a)]) for a in perm),  # type: ignore[arg-type]
            spacing=tuple(float(spacing[int(a)]) for a in perm),  # type: ignore[arg-type]
            target=tuple(float(t) for t in target),  # type: ignore[arg-type]
            affine=affine_ras @ nib.orientations.inv_ornt_aff(fwd, tuple(int(n) for n in shape)),
        )

    @classmethod
    def for_volume(cls, volume: Volume, plan: Plan) -> PlanGrid:
        """The plan grid of ``volume`` (its own voxel size, not one recomputed from the affine)."""
        return cls.from_affine(volume.shape, volume.affine_ras, plan.spacing, plan.orientation, volume.spacing)

    @property
    def perm(self) -> np.ndarray:
        """``perm[j]``: the input axis that plan-grid axis ``j`` comes from."""
        return self.fwd[:, 0].argsort()

    @property
    def scale(self) -> tuple[float, float, float]:
        """Input voxels per plan-grid voxel along each plan-grid axis."""
        return tuple(t / s for s, t in zip(self.spacing, self.target))  # type: ignore[return-value]

    @property
    def size(self) -> tuple[int, int, int]:
        """Plan-grid shape of the whole scan."""
        return tuple(model_grid_size(n, s, t) for n, s, t in zip(self.shape, self.spacing, self.target))  # type: ignore[return-value]

    @property
    def grid_affine(self) -> np.ndarray:
        """4x4 plan-grid voxel -> RAS world (mm) matrix."""
        return self.affine @ np.diag([*self.scale, 1.0])

    def _flipped(self, j: int) -> bool:
        return bool(self.fwd[int(self.perm[j]), 1] < 0)

    def input_box(self, ranges: Sequence[tuple[int, int]]) -> Box:
        """Ranges of the reoriented input -> slices of the input array."""
        out: list[slice] = [slice(0, 0)] * 3
        for j, (lo, hi) in enumerate(ranges):
            if self._flipped(j):
                lo, hi = self.shape[j] - hi, self.shape[j] - lo
            out[int(self.perm[j])] = slice(lo, hi)
        return tuple(out)  # type: ignore[return-value]

    def covering(self, box: Box) -> list[tuple[int, int]]:
        """Plan-grid ranges whose voxels cover ``box`` (slices of the input array)."""
        k = []
        for j in range(3):
            s = box[int(self.perm[j])]
            lo, hi = (self.shape[j] - s.stop, self.shape[j] - s.start) if self._flipped(j) else (s.start, s.stop)
            sc = self.scale[j]
            k0 = int(np.floor(lo / sc + _EPS))
            k1 = min(self.size[j], int(np.ceil((hi - 1) / sc - _EPS)) + 1)
            k.append((k0, k1))
        return k

    def box(self, k: Sequence[tuple[int, int]]) -> GridBox:
        """The plan-grid box ``k`` with the input ranges that fill it and that it fills back."""
        src, dst = [], []
        for j, (k0, k1) in enumerate(k):
            sc, n = self.scale[j], self.shape[j]
            last = int(np.floor((k1 - 1) * sc + _EPS))  # input plane at or before the box's last voxel
            src.append((int(np.floor(k0 * sc + _EPS)), min(n, last + 2)))
            d1 = n if k1 == self.size[j] else min(n, last + 1)  # at the axis end: edge values held
            dst.append((int(np.ceil(k0 * sc - _EPS)), d1))
        return GridBox(self, tuple(k), tuple(src), tuple(dst))  # type: ignore[arg-type]

    def whole(self) -> GridBox:
        """The whole scan's plan grid as a box."""
        return self.box([(0, m) for m in self.size])


@dataclass(frozen=True, eq=False)
class GridBox:
    """A box of a :class:`PlanGrid` and the reoriented-input ranges it reads and writes.

    ``k``: plan-grid ranges; ``src``: reoriented input ranges read to fill them (two planes
    around every sample); ``dst``: reoriented input ranges that receive values on the way back.
    """

    grid: PlanGrid
    k: Ranges
    src: Ranges
    dst: Ranges

    @property
    def shape(self) -> tuple[int, int, int]:
        """Plan-grid shape of the box."""
        return tuple(k1 - k0 for k0, k1 in self.k)  # type: ignore[return-value]

    @property
    def src_box(self) -> Box:
        """Slices of the input array that the box reads."""
        return self.grid.input_box(self.src)

    @property
    def dst_box(self) -> Box:
        """Slices of the input array that :meth:`to_input` covers."""
        return self.grid.input_box(self.dst)

    def positions(self) -> list[np.ndarray]:
        """Sample positions of the box's voxels, in voxels of the reoriented ``src`` crop."""
        return [np.arange(k0, k1) * sc - s0 for (k0, k1), sc, (s0, _) in zip(self.k, self.grid.scale, self.src)]

    def back_positions(self) -> list[np.ndarray]:
        """Positions of the ``dst`` input voxels, in voxels of the box (the inverse mapping)."""
        return [np.arange(d0, d1) / sc - k0 for (d0, d1), sc, (k0, _) in zip(self.dst, self.grid.scale, self.k)]

    def read(self, array: np.ndarray) -> np.ndarray:
        """The ``src`` crop of an input-grid ``array``, reoriented to the plan axcodes."""
        return reorient(np.asarray(array[self.src_box]), self.grid.fwd)

    def image(self, array: np.ndarray, intensity: IntensityPlan | None = None) -> ResampledImage:
        """``array`` (HU, input grid) on the box, normalised with ``intensity`` before the trilinear
        interpolation (none when ``None``); lazy: index it or call ``full()``."""
        norm = None if intensity is None else partial(normalise_ct, intensity=intensity)
        return ResampledImage(self.read(array), self.positions(), transform=norm)

    def label(self, array: np.ndarray) -> np.ndarray:
        """A label or mask on the input grid -> the box, nearest voxel."""
        return resample_nearest(self.read(array), self.positions())

    def to_input(self, values: np.ndarray) -> np.ndarray:
        """The inverse: box-shaped ``values`` -> the ``dst_box`` of the input grid (trilinear, input
        orientation; beyond the box's last voxel along an axis its edge value is held)."""
        return reorient(interp3(values, self.back_positions()), self.grid.back)

    def __getitem__(self, key: str) -> Any:
        """``geo["scale"]`` etc.: the keys of the dict ``Predictor.model_geometry`` used to return
        (``fwd``, ``back``, ``perm``, ``shape``, ``scale``, ``k``, ``src``, ``dst``); use attributes."""
        if key in ("k", "src", "dst"):
            return list(getattr(self, key))
        if key in ("fwd", "back", "perm", "shape", "scale"):
            value = getattr(self.grid, key)
            return list(value) if isinstance(value, tuple) else value
        raise KeyError(key)
