"""The plan: everything a trained model needs to be applied again, as plain data.

Produced by the fingerprint/planning step of training (``medseg.data.planning``), stored inside
every checkpoint and read by inference. It is the one contract between training and inference,
so it lives here rather than in either of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class IntensityPlan:
    """CT intensity handling: clip to ``clip`` (HU), then ``(x - mean) / std``."""

    clip: tuple[float, float] = (-1000.0, 500.0)
    mean: float = -500.0
    std: float = 400.0


#: normalisations a plan may name. ``instance`` normalises each window by its own statistics, so
#: every output voxel depends on the whole window; ``batch`` is a fixed affine map at inference
#: (running statistics), so an output depends only on the convolutions' receptive field.
NORMS = ("instance", "batch")


@dataclass
class NetworkPlan:
    """Arguments for MONAI ``DynUNet`` (see :func:`medseg.models.network.build_network`)."""

    filters: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    kernel_size: list[list[int]] = field(default_factory=lambda: [[3, 3, 3]] * 4)
    strides: list[list[int]] = field(default_factory=lambda: [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]])
    deep_supervision: bool = True
    deep_supr_num: int = 2
    res_block: bool = False
    norm_name: str = "instance"
    in_channels: int = 1
    out_channels: int = 2


@dataclass
class InferencePlan:
    """Sliding-window settings used at inference time."""

    #: 0.5 as in MONAI/nnU-Net: with per-window instance normalisation the blended output depends on
    #: where windows fall. On the real 5 mm chest (benchmarks/window_overlap.py) 0.25 ran 5x fewer
    #: network seconds but its masks had Dice 0.54 against 0.5's, and moving the windows by half a
    #: stride kept Dice 0.61 at 0.5 against 0.24 at 0.25; larger windows did not settle it. Nor
    #: did batch norm (0.62 at 0.5): the cause is the training patch (48x48x16) being smaller than
    #: the network's receptive field (71x71x67), so every output sees window padding. Lower overlap
    #: needs a model trained on patches at least that large; ``medseg train-fp --window --overlap``
    #: then records the setting its classifier was fitted with.
    overlap: float = 0.5
    #: sliding-window size (voxels at plan spacing); None = the training patch size. DynUNet is
    #: fully convolutional, but at equal overlap a larger window costs as much per voxel (96x96x32
    #: at 0.5: 0.75x the speed of 48x48x16 on the real chest) and its instance-norm statistics
    #: differ from training's (Dice 0.56 against the training patch's masks).
    window: tuple[int, int, int] | None = None
    blend_mode: str = "gaussian"
    #: network precision: auto (bf16 where the CPU or GPU runs it natively) | fp32 | bf16 | fp16.
    #: bf16 and fp32 candidate masks agree (Dice 0.996 on the real 5 mm chest CT, every candidate)
    precision: str = "auto"
    sw_batch_size: int = 2
    threshold: float = 0.5
    #: whole-scan mode drops components whose mean probability is below this (0 = off); tied to
    #: the weights' calibration, so it is chosen per model on tuning scans and kept in its plan
    min_confidence: float = 0.0
    #: the candidate classifier fitted for these weights (``medseg train-fp``; a dict of
    #: :class:`medseg.postprocess.CandidateClassifier`), or None: confidence = mean probability
    candidate_classifier: dict | None = None
    #: masses (30-100 mm): the network run again on a grid this many times coarser over the lung
    #: field (0 = off); see :mod:`medseg.inference.masses`
    mass_scale: float = 2.0
    #: a coarse component is a mass from this equivalent diameter (mm) ...
    mass_min_diameter_mm: float = 30.0
    #: ... when this share of its outer shell lies in the lung (the heart and aorta border less)
    mass_min_lung_contact: float = 0.6
    #: ... and it is compact: this share of its convex hull filled (a vessel tree is not)
    mass_min_solidity: float = 0.5
    #: its edge is refined by growing it this far (mm) into tissue above ``mass_grow_hu``
    mass_grow_mm: float = 4.0
    mass_grow_hu: float = -300.0


@dataclass
class Plan:
    """All settings that tie a trained network to its preprocessing."""

    task: str = "lung_nodule"
    labels: dict[str, int] = field(default_factory=lambda: {"background": 0, "nodule": 1})
    #: Target voxel spacing (mm) along the array axes after reorientation to ``orientation``.
    spacing: tuple[float, float, float] = (0.8, 0.8, 1.25)
    orientation: str = "RAS"
    patch_size: tuple[int, int, int] = (64, 64, 32)
    batch_size: int = 2
    intensity: IntensityPlan = field(default_factory=IntensityPlan)
    network: NetworkPlan = field(default_factory=NetworkPlan)
    inference: InferencePlan = field(default_factory=InferencePlan)
    #: Dataset fingerprint the plan was derived from (median spacing, percentiles, counts).
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict (lists, no tuples)."""
        return plain_data(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`; unknown keys are rejected so typos do not pass silently."""
        data = dict(data)
        intensity = IntensityPlan(**_known(IntensityPlan, data.pop("intensity", {})))
        network = NetworkPlan(**_known(NetworkPlan, data.pop("network", {})))
        inference = InferencePlan(**_known(InferencePlan, data.pop("inference", {})))
        plan = cls(intensity=intensity, network=network, inference=inference, **_known(cls, data))
        plan.spacing = tuple(float(s) for s in plan.spacing)  # type: ignore[assignment]
        plan.patch_size = tuple(int(s) for s in plan.patch_size)  # type: ignore[assignment]
        plan.intensity.clip = tuple(float(c) for c in plan.intensity.clip)  # type: ignore[assignment]
        if plan.inference.window is not None:
            plan.inference.window = tuple(int(w) for w in plan.inference.window)  # type: ignore[assignment]
        return plan


def _known(kind: type, data: dict[str, Any]) -> dict[str, Any]:
    names = set(kind.__dataclass_fields__)
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {kind.__name__} keys: {sorted(unknown)}")
    return data


def plain_data(obj: Any) -> Any:
    """Nested dicts/lists/tuples as JSON-ready dicts and lists (tuples become lists)."""
    if isinstance(obj, dict):
        return {k: plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_data(v) for v in obj]
    return obj
