"""Dataset fingerprint -> :class:`~medseg.plan.Plan`, in the spirit of nnU-Net's planner.

The fingerprint records, per case, the shape and spacing along RAS axes and a sample of the
foreground intensities. The plan derives from it: target spacing (median, clamped by the task),
CT clip window and normalisation (foreground percentiles and mean/std), a patch size from the
median resampled shape, the DynUNet depth/strides/kernels from the patch and the spacing, and a
batch size from the device memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.datasets import Case
from medseg.errors import InputError
from medseg.plan import InferencePlan, IntensityPlan, NetworkPlan, Plan
from medseg.tasks import IntensityTask, NetworkTask, PatchTask, SpacingTask, TaskConfig

#: bytes of activation memory per (feature x voxel) summed over levels, forward + backward with
#: AMP; calibrated so that nnU-Net's 128^3 / 32-filter / batch 2 patch needs about 10 GB.
_BYTES_PER_FEATURE_VOXEL = 60.0


def _ras_permutation(affine: np.ndarray) -> list[int]:
    """For each RAS axis, the array axis that maps onto it."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    perm = [0, 0, 0]
    for array_axis, (ras_axis, _flip) in enumerate(ornt):
        perm[int(ras_axis)] = array_axis
    return perm


def _case_fingerprint(case: Case, samples: int, seed: int) -> dict[str, Any]:
    from medseg.io import read_volume

    image = read_volume(case.image)
    label = read_volume(case.label, reference=image)  # a DICOM SEG is placed on the image's grid
    if image.shape != label.shape:
        raise InputError(case.label, f"label shape {label.shape} differs from image shape {image.shape}")
    perm = _ras_permutation(image.affine_ras)
    fg = np.asarray(image.array)[np.asarray(label.array) > 0]
    rng = np.random.default_rng(seed)
    if fg.size > samples:
        fg = rng.choice(fg, samples, replace=False)
    return {
        "shape": [int(image.shape[a]) for a in perm],
        "spacing": [float(image.spacing[a]) for a in perm],
        "foreground_voxels": int((np.asarray(label.array) > 0).sum()),
        "_fg": fg.astype(np.float32),
    }


def fingerprint_dataset(
    cases: Sequence[Case], samples_per_case: int, seed: int = 0, workers: int = 2, progress: bool = False,
    percentiles: tuple[float, float] = IntensityTask.percentiles,
) -> dict[str, Any]:
    """Shapes/spacings along RAS axes and foreground intensity statistics of ``cases``.

    ``samples_per_case`` foreground voxels per case feed the statistics (the task's
    ``intensity.samples_per_case``); ``percentiles`` (the task's ``intensity.percentiles``) are the
    foreground HU percentiles the clip window starts from.
    """
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max(1, workers)) as pool:  # nibabel's gzip decoding releases the GIL
        jobs = pool.map(lambda ic: _case_fingerprint(ic[1], samples_per_case, seed + ic[0]), enumerate(cases))
        per_case = list(tqdm(jobs, total=len(cases), desc="fingerprint", disable=not progress, leave=False))
    fg = np.concatenate([p.pop("_fg") for p in per_case]) if per_case else np.zeros(0, np.float32)
    if fg.size == 0:
        raise InputError(Path(cases[0].label).parent, "no foreground voxels in any training label")
    spacings = np.array([p["spacing"] for p in per_case])
    shapes = np.array([p["shape"] for p in per_case])
    return {
        "cases": len(per_case),
        "median_spacing": np.median(spacings, axis=0).tolist(),
        "median_shape": np.median(shapes, axis=0).tolist(),
        "median_extent_mm": np.median(shapes * spacings, axis=0).tolist(),
        "foreground": {
            "percentile_00_5": float(np.percentile(fg, 0.5)),
            "percentile_99_5": float(np.percentile(fg, 99.5)),
            "clip_percentiles": [float(p) for p in percentiles],
            "clip_values": [float(v) for v in np.percentile(fg, list(percentiles))],
            "mean": float(fg.mean()),
            "std": float(fg.std()),
            "min": float(fg.min()),
            "max": float(fg.max()),
            "samples": int(fg.size),
        },
        "per_case": {c.key: p for c, p in zip(cases, per_case)},
    }


def network_topology(
    patch: Sequence[int], spacing: Sequence[float], net: NetworkTask | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net style strides and kernel sizes for a patch (``net``: the task's network rules).

    An axis is downsampled at a level only while its feature map stays >= ``net.min_feature_size``
    voxels and its current spacing is at most ``net.anisotropy_ratio`` times the finest one (so a
    thick-slice axis waits until the in-plane resolution has caught up), for at most
    ``net.max_levels`` levels. Kernels are 1 along axes still much coarser than the finest, like
    nnU-Net's in-plane-only convolutions.
    """
    net = net if net is not None else NetworkTask()
    size = [int(s) for s in patch]
    sp = [float(s) for s in spacing]
    strides: list[list[int]] = [[1, 1, 1]]
    kernels: list[list[int]] = []
    for _level in range(net.max_levels):
        finest = min(sp)
        kernels.append([1 if s > net.anisotropy_ratio * finest else 3 for s in sp])
        if len(strides) == net.max_levels:
            break
        step = [2 if (size[a] // 2 >= net.min_feature_size and sp[a] <= net.anisotropy_ratio * finest) else 1
                for a in range(3)]
        if step == [1, 1, 1]:
            break
        strides.append(step)
        size = [size[a] // step[a] for a in range(3)]
        sp = [sp[a] * step[a] for a in range(3)]
    return strides, kernels


def total_strides(strides: Sequence[Sequence[int]]) -> list[int]:
    """The network's total downsampling per axis: every patch or window size must be a multiple."""
    return [int(np.prod([s[a] for s in strides])) for a in range(3)]


def fit_patch(
    wanted: Sequence[float], spacing: Sequence[float], lo: Sequence[int], hi: Sequence[int], net: NetworkTask
) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """Clamp ``wanted`` to [lo, hi] and make it divisible by the network's total stride per axis."""
    patch = [int(math.ceil(min(max(w, a), b))) for w, a, b in zip(wanted, lo, hi)]
    for _ in range(6):
        strides, kernels = network_topology(patch, spacing, net)
        div = total_strides(strides)
        new = []
        for p, d, b in zip(patch, div, hi):
            up = int(math.ceil(p / d) * d)
            new.append(up if up <= max(b, d) else max(d, (p // d) * d))
        if new == patch:
            break
        patch = new
    return patch, strides, kernels


def _filters(levels: int, net: NetworkTask) -> list[int]:
    return [min(net.filters_base * 2**i, net.filters_max) for i in range(levels)]


def activation_bytes(patch: Sequence[int], strides: Sequence[Sequence[int]], filters: Sequence[int]) -> float:
    """Rough training memory per sample (forward + backward activations)."""
    size = np.array(patch, dtype=float)
    total = 0.0
    for s, f in zip(strides, filters):
        size = size / np.array(s)
        total += f * float(np.prod(size))
    return total * _BYTES_PER_FEATURE_VOXEL


@dataclass
class _Layout:
    """Patch size and the network topology planned for it."""

    patch: list[int]
    strides: list[list[int]]
    kernels: list[list[int]]
    filters: list[int]


def make_plan(
    fingerprint: dict[str, Any],
    task: TaskConfig,
    device_type: str = "cpu",
    device_memory_bytes: float | None = None,
    overrides: dict[str, Any] | None = None,
) -> Plan:
    """The plan for ``task`` on data with ``fingerprint`` for a device type ("cpu"/"cuda").

    ``overrides`` may set ``spacing``, ``patch_size``, ``batch_size``, ``res_block``, ``norm_name`` and
    ``filters`` (a list, or an int as the first level's count) explicitly; the rest still follows
    the rules.
    """
    ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    spacing = _target_spacing(fingerprint, task.spacing, ov)
    median_resampled = _median_resampled_shape(fingerprint, spacing)
    net = replace(task.network, filters_base=ov["filters"]) if isinstance(ov.get("filters"), int) else task.network
    layout = _layout(median_resampled, spacing, task.patch, net, ov)
    batch = _batch_size(layout, spacing, task.patch, device_type, device_memory_bytes, ov)
    summary = {k: v for k, v in fingerprint.items() if k != "per_case"}
    summary["median_resampled_shape"] = [float(s) for s in median_resampled]
    return Plan(
        task=task.name,
        labels=dict(task.labels),
        spacing=tuple(spacing),
        orientation="RAS",
        patch_size=tuple(int(p) for p in layout.patch),
        batch_size=batch,
        intensity=_intensity_plan(fingerprint["foreground"], task.intensity),
        network=_network_plan(layout, net, len(task.labels), ov),
        inference=InferencePlan(**task.inference.plan_settings()),
        fingerprint=summary,
    )


def _target_spacing(fingerprint: dict[str, Any], cfg: SpacingTask, ov: dict[str, Any]) -> list[float]:
    """The median spacing clamped to the task's [min, max], unless overridden; rounded to 0.1 um."""
    if "spacing" in ov:
        spacing = np.array(ov["spacing"], dtype=float)
    else:
        spacing = np.clip(np.array(fingerprint["median_spacing"], dtype=float), cfg.min, cfg.max)
    return [round(float(s), 4) for s in spacing]


def _median_resampled_shape(fingerprint: dict[str, Any], spacing: Sequence[float]) -> np.ndarray:
    shapes = np.array([p["shape"] for p in fingerprint["per_case"].values()], dtype=float)
    spacings = np.array([p["spacing"] for p in fingerprint["per_case"].values()], dtype=float)
    return np.median(shapes * spacings / np.array(spacing), axis=0)


def _layout(median_resampled: np.ndarray, spacing: Sequence[float], cfg: PatchTask, net: NetworkTask,
            ov: dict[str, Any]) -> _Layout:
    """Patch size, strides, kernels and filters; an explicit filter list fixes the depth."""
    if "patch_size" in ov:
        wanted, lo, hi = ov["patch_size"], [1, 1, 1], ov["patch_size"]
    else:
        wanted, lo, hi = median_resampled, cfg.min, cfg.max
    patch, strides, kernels = fit_patch(wanted, spacing, lo, hi, net)
    filters = list(ov["filters"]) if isinstance(ov.get("filters"), (list, tuple)) else _filters(len(strides), net)
    if len(filters) != len(strides):
        # an explicit filter list fixes the depth: cut or extend the stride list to match
        strides = (strides + [[1, 1, 1]] * len(filters))[: len(filters)]
        kernels = (kernels + [[3, 3, 3]] * len(filters))[: len(filters)]
    return _Layout(patch, strides, kernels, filters)


def _batch_size(layout: _Layout, spacing: Sequence[float], cfg: PatchTask, device_type: str,
                device_memory_bytes: float | None, ov: dict[str, Any]) -> int:
    """The override, else the task's per-device batch; on a GPU as many as its memory holds.

    A GPU batch below 2 shrinks ``layout.patch`` (in place) unless the patch size was given.
    """
    if "batch_size" in ov:
        return int(ov["batch_size"])
    if device_type != "cuda" or not device_memory_bytes:
        return cfg.batch_size.for_device(device_type)
    budget = device_memory_bytes * cfg.gpu_memory_fraction
    patch = layout.patch
    while True:
        batch = int(budget // activation_bytes(patch, layout.strides, layout.filters))
        if batch >= 2 or "patch_size" in ov:
            break
        # too big for the GPU: shrink the physically longest axis by one stride step
        div = total_strides(layout.strides)
        ax = int(np.argmax(np.array(patch) * np.array(spacing)))
        if patch[ax] - div[ax] < max(div[ax], 8):
            break
        patch[ax] -= div[ax]
    return int(min(max(batch, 2), cfg.max_batch_size, cfg.batch_size.for_device("cuda") * 4))


def _network_plan(layout: _Layout, net: NetworkTask, out_channels: int, ov: dict[str, Any]) -> NetworkPlan:
    levels = len(layout.strides)
    deep_supr = max(0, min(net.deep_supr_num, levels - 2))
    return NetworkPlan(
        filters=layout.filters,
        kernel_size=layout.kernels,
        strides=layout.strides,
        deep_supervision=deep_supr > 0,
        deep_supr_num=max(deep_supr, 1),
        res_block=bool(ov.get("res_block", net.res_block)),
        norm_name=str(ov.get("norm_name", net.norm_name)),
        in_channels=1,
        out_channels=out_channels,
    )


def _intensity_plan(fg: dict[str, Any], cfg: IntensityTask) -> IntensityPlan:
    """Clip to the foreground percentiles widened to cover ``cfg.include``; foreground mean/std."""
    lo, hi = fg.get("clip_values") or (fg["percentile_00_5"], fg["percentile_99_5"])  # older fingerprints
    clip = (min(lo, cfg.include[0]), max(hi, cfg.include[1]))
    return IntensityPlan(clip=clip, mean=float(fg["mean"]), std=max(float(fg["std"]), 1e-3))
