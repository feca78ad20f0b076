"""The task as typed data: :class:`TaskConfig` and one dataclass per section of a task file.

The field defaults below are the one place a task default is defined (the bundled
``lung_nodule.yaml`` documents the same values; a test keeps the two equal). Values that the plan
also carries (inference settings, the network's block options) take their defaults from
:mod:`medseg.plan`. :meth:`TaskConfig.from_dict` checks a task mapping against these classes: an
unknown key or a value of the wrong type is an :class:`~medseg.errors.InputError` naming the file
and the dotted key path.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from medseg.errors import InputError
from medseg.plan import InferencePlan, NetworkPlan, plain_data

DEFAULT_TASK = "lung_nodule"

Source = str | os.PathLike[str] | None
_T = TypeVar("_T")


@dataclass(frozen=True)
class PerDevice:
    """An integer setting with one value per device type: ``{cpu: 50, cuda: 250}``.

    A task file may give one number for both (``steps_per_epoch: 100``).
    """

    cpu: int
    cuda: int

    def for_device(self, device_type: str) -> int:
        """The value for a torch device type (``"cuda"``; anything else counts as CPU)."""
        return self.cuda if device_type == "cuda" else self.cpu

    @classmethod
    def of(cls, value: int | Mapping[str, int] | PerDevice) -> PerDevice:
        """From a number (both devices) or a ``{cpu, cuda}`` mapping (a missing one takes the other's)."""
        return _coerce(cls, value, "value", None)


@dataclass(frozen=True)
class IntensityTask:
    """CT intensities: clip to the foreground HU percentiles widened to ``include``, standardise."""

    percentiles: tuple[float, float] = (0.5, 99.5)
    #: the clip window always covers this HU range (lung parenchyma to soft tissue/calcification)
    include: tuple[float, float] = (-1000.0, 400.0)
    #: foreground voxels sampled per case for the fingerprint
    samples_per_case: int = 10000


@dataclass(frozen=True)
class SpacingTask:
    """Target spacing = median spacing of the training data, clamped per axis to [min, max] (mm, RAS)."""

    policy: Literal["median"] = "median"
    min: tuple[float, float, float] = (0.6, 0.6, 1.0)
    max: tuple[float, float, float] = (1.0, 1.0, 2.5)


@dataclass(frozen=True)
class PatchTask:
    """Patch from the median resampled case shape clamped to [min, max]; batch size per device."""

    min: tuple[int, int, int] = (48, 48, 16)
    max: tuple[int, int, int] = (128, 128, 64)
    batch_size: PerDevice = PerDevice(cpu=4, cuda=8)
    #: GPU batches grow with free memory up to this (and 4x ``batch_size.cuda``)
    max_batch_size: int = 32
    #: share of the GPU's memory the planned batch may use
    gpu_memory_fraction: float = 0.6


@dataclass(frozen=True)
class HardNegativeTask:
    """Hard negatives: dense voxels in aerated surroundings (vessels, airway walls, fissures)."""

    #: share of patch centres relative to ``neg``/``pos``; 0 turns hard negatives off
    ratio: float = 1.0
    #: a voxel at least this dense ...
    min_hu: float = -500.0
    #: ... whose surroundings (a ``context_mm`` box) average at most this
    max_context_hu: float = -500.0
    context_mm: float = 6.0


@dataclass(frozen=True)
class SamplingTask:
    """Patch centres drawn in the ratio ``neg : pos : hard_negative.ratio``."""

    pos: float = 2.0
    neg: float = 1.0
    hard_negative: HardNegativeTask = field(default_factory=HardNegativeTask)


@dataclass(frozen=True)
class AugmentationTask:
    """Probabilities (and ranges) of the random training augmentations; 0 turns one off."""

    flip: float = 0.5  #: per axis
    rot90: float = 0.5  #: in-plane, only when the in-plane patch is square
    affine: float = 0.2  #: probability of a random scale/rotation
    rotate_deg: float = 15.0  #: in-plane rotation range
    scale: float = 0.15
    intensity_scale: float = 0.15
    intensity_shift: float = 0.15
    noise: float = 0.1
    contrast: float = 0.15
    #: nnU-Net's low-resolution simulation (off: it cost held-out Dice on the bundled model)
    low_resolution: float = 0.0
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)


@dataclass(frozen=True)
class NetworkTask:
    """How the planner sizes the DynUNet (depth and strides follow from the patch and spacing)."""

    filters_base: int = 16
    filters_max: int = 256
    max_levels: int = 5  #: including the full-resolution level
    min_feature_size: int = 4  #: never downsample an axis below this many voxels
    anisotropy_ratio: float = 2.0  #: an axis this much coarser than the finest is not downsampled yet
    res_block: bool = NetworkPlan.res_block
    deep_supr_num: int = NetworkPlan.deep_supr_num
    norm_name: str = NetworkPlan.norm_name


@dataclass(frozen=True)
class LossTask:
    """Dice + focal loss; deep-supervision head weights (full resolution first) sum to 1."""

    name: Literal["dice_focal"] = "dice_focal"
    lambda_dice: float = 1.0
    lambda_focal: float = 1.0
    deep_supervision_weights: tuple[float, ...] = (1.0, 0.5, 0.25)


@dataclass(frozen=True)
class OptimizerTask:
    """Optimizer and the warm-up + cosine schedule (sgd: use lr ~0.01, as nnU-Net)."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 0.001
    weight_decay: float = 0.00003
    momentum: float = 0.99  #: sgd only
    warmup_steps: int = 50
    min_lr_fraction: float = 0.01
    grad_clip: float = 12.0  #: gradient norm clip (0 = off)


@dataclass(frozen=True)
class TrainingTask:
    """Epoch length, budget, data loading and precision."""

    steps_per_epoch: PerDevice = PerDevice(cpu=50, cuda=250)
    max_epochs: int = 1000
    num_workers: PerDevice = PerDevice(cpu=1, cuda=6)
    cache_rate: float = 1.0
    folds: int = 5
    seed: int = 12345
    #: auto = bf16 on GPUs and CPUs with native bf16, else fp32
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"


@dataclass(frozen=True)
class ValidationTask:
    """Per-epoch validation: mean Dice over (a fixed subset of) the validation cases."""

    max_cases: PerDevice = PerDevice(cpu=40, cuda=0)  #: 0 = all
    max_voxels: PerDevice = PerDevice(cpu=3_000_000, cuda=0)  #: skip bigger cases per epoch (0 = no limit)


@dataclass(frozen=True)
class InferenceTask:
    """How a model trained for this task runs: copied into its plan (defaults: the plan's)."""

    overlap: float = InferencePlan.overlap
    blend_mode: Literal["gaussian", "constant"] = InferencePlan.blend_mode  # type: ignore[assignment]
    sw_batch_size: int = InferencePlan.sw_batch_size
    threshold: float = InferencePlan.threshold
    #: whole scans: components below this confidence are dropped (0 = keep all)
    min_confidence: float = InferencePlan.min_confidence

    def plan_settings(self) -> dict[str, Any]:
        """These settings as :class:`~medseg.plan.InferencePlan` keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class TaskConfig:
    """A task: labels, intensity handling and every training default (see ``lung_nodule.yaml``)."""

    name: str = DEFAULT_TASK
    description: str = ""
    modality: str = "CT"
    labels: dict[str, int] = field(default_factory=lambda: {"background": 0, "nodule": 1})
    #: any label value > 0 is foreground: instance label maps train as binary
    foreground: Literal["any_positive"] = "any_positive"
    intensity: IntensityTask = field(default_factory=IntensityTask)
    spacing: SpacingTask = field(default_factory=SpacingTask)
    patch: PatchTask = field(default_factory=PatchTask)
    sampling: SamplingTask = field(default_factory=SamplingTask)
    augmentation: AugmentationTask = field(default_factory=AugmentationTask)
    network: NetworkTask = field(default_factory=NetworkTask)
    loss: LossTask = field(default_factory=LossTask)
    optimizer: OptimizerTask = field(default_factory=OptimizerTask)
    training: TrainingTask = field(default_factory=TrainingTask)
    validation: ValidationTask = field(default_factory=ValidationTask)
    inference: InferenceTask = field(default_factory=InferenceTask)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict (lists, no tuples); :meth:`from_dict` reads it back."""
        return plain_data(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Source = None) -> TaskConfig:
        """A task from a (possibly partial) mapping; missing settings take the field defaults.

        Unknown keys and wrongly typed values raise :class:`~medseg.errors.InputError` naming
        ``source`` (the file the mapping came from) and the dotted key path.
        """
        task = _build(cls, data, "", source)
        if not task.labels or 0 not in task.labels.values():
            raise InputError(source, "task 'labels' must map names to integers and include background 0")
        return task


def setting_choices(section: type, name: str) -> tuple[str, ...]:
    """The allowed values of a choice setting, e.g. ``setting_choices(OptimizerTask, "name")``."""
    return tuple(get_args(_hints(section)[name]))


# --- checking a mapping against the dataclasses ------------------------------------------------


@functools.cache
def _hints(kind: type) -> dict[str, Any]:
    return get_type_hints(kind)


def _key(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def _build(kind: type[_T], data: Any, where: str, source: Source) -> _T:
    if not isinstance(data, Mapping):
        what = f"task setting '{where}'" if where else "a task"
        raise InputError(source, f"{what} must be a mapping of settings, got {reprlib.repr(data)}")
    known = [f.name for f in fields(kind)]  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise InputError(source, f"unknown task setting '{_key(where, key)}' ({hint}known: {', '.join(known)})")
    hints = _hints(kind)
    return kind(**{k: _coerce(hints[k], v, _key(where, k), source) for k, v in data.items()})


def _wrong(where: str, expected: str, value: Any, source: Source) -> InputError:
    return InputError(source, f"task setting '{where}' must be {expected}, got {reprlib.repr(value)}")


def _coerce(tp: Any, value: Any, where: str, source: Source) -> Any:
    """``value`` checked (and converted: lists to tuples, ints to floats) against the type ``tp``."""
    origin = get_origin(tp)
    if tp is PerDevice:
        return _per_device(value, where, source)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, source)
    if origin is Literal:
        if value not in get_args(tp):
            raise _wrong(where, "one of " + ", ".join(map(str, get_args(tp))), value, source)
        return value
    if origin is tuple:
        return _sequence(get_args(tp), value, where, source)
    if origin is dict:
        return _mapping(get_args(tp), value, where, source)
    return _scalar(tp, value, where, source)


def _scalar(tp: type, value: Any, where: str, source: Source) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise _wrong(where, "true or false", value, source)
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(where, "an integer", value, source)
        return value
    if tp is float:
        return _float(value, where, source)
    if tp is str:
        if not isinstance(value, str):
            raise _wrong(where, "a string", value, source)
        return value
    raise TypeError(f"task setting {where}: unsupported type {tp!r}")  # a bug in the dataclasses


def _float(value: Any, where: str, source: Source) -> float:
    if isinstance(value, str):  # YAML 1.1 (PyYAML) reads 3e-5 as a string: accept a number written so
        try:
            return float(value)
        except ValueError:
            raise _wrong(where, "a number", value, source) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong(where, "a number", value, source)
    return float(value)


def _sequence(args: tuple[Any, ...], value: Any, where: str, source: Source) -> tuple[Any, ...]:
    item = args[0]
    name = {int: "integers", float: "numbers"}.get(item, "values")
    if args[-1] is Ellipsis:
        if not isinstance(value, (list, tuple)) or not value:
            raise _wrong(where, f"a non-empty list of {name}", value, source)
    elif not isinstance(value, (list, tuple)) or len(value) != len(args):
        raise _wrong(where, f"a list of {len(args)} {name}", value, source)
    return tuple(_coerce(item, v, f"{where}[{i}]", source) for i, v in enumerate(value))


def _mapping(args: tuple[Any, ...], value: Any, where: str, source: Source) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise _wrong(where, "a mapping", value, source)
    key_type, value_type = args
    return {_coerce(key_type, k, f"{where} key", source): _coerce(value_type, v, _key(where, k), source)
            for k, v in value.items()}


def _per_device(value: Any, where: str, source: Source) -> PerDevice:
    if isinstance(value, PerDevice):
        return value
    if isinstance(value, Mapping):
        if not value or set(value) - {"cpu", "cuda"}:
            raise _wrong(where, "a number or a {cpu: N, cuda: N} mapping", value, source)
        cpu = value.get("cpu", value.get("cuda"))
        cuda = value.get("cuda", cpu)
        return PerDevice(_scalar(int, cpu, _key(where, "cpu"), source), _scalar(int, cuda, _key(where, "cuda"), source))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong(where, "a number or a {cpu: N, cuda: N} mapping", value, source)
    number = _scalar(int, value, where, source)
    return PerDevice(number, number)



