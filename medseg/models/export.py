"""Export the network to ONNX or TorchScript for deployment outside medseg.

An exported file maps a normalised window ``[B, 1, X, Y, Z]`` (float32) to logits ``[B, 2, X, Y, Z]``
(channel 1 = nodule; probability = ``softmax(logits)[:, 1]``). It knows nothing of the plan, so the
plan a user needs to preprocess (spacing, orientation, intensity normalisation, window) is written
beside it as ``FILE.plan.json``, and inside it too: ONNX ``metadata_props["medseg_plan"]``, or the
TorchScript extra file ``medseg_plan.json``. Writes are atomic (temporary file, then rename) and the
temporary file is checked against torch on a random window before it is renamed into place.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``): it handles DynUNet in one pass and
needs neither ``onnxscript`` nor ``torch.export``. Batch and spatial axes are dynamic; spatial sizes
must be multiples of the network's total strides.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import InputError, MissingExtraError
from medseg.io.atomic import atomic_path, write_json_atomic
from medseg.plan import Plan

FORMATS = ("onnx", "torchscript")
EXPORT_FORMAT = "medseg-export/1"
#: ONNX opset: InstanceNormalization/ConvTranspose are old ops; 17 loads in every runtime since 2022
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "logits"
PLAN_KEY = "medseg_plan"
#: a verification difference above this (relative to the largest logit, at least 1) fails the export
TOLERANCE = 1e-3


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how close it is to torch."""

    path: Path
    plan_path: Path
    format: str
    window: tuple[int, int, int]
    max_abs_diff: float | None  # None: not verified (the runtime to load it is not installed)


def plan_record(plan: Plan, window: tuple[int, int, int]) -> dict[str, Any]:
    """What a user needs to feed an exported network: the preprocessing and the window."""
    return {
        "format": EXPORT_FORMAT,
        "input": f"{INPUT_NAME}: float32 [B, 1, X, Y, Z], CT in HU resampled to `spacing` (mm) along the axes "
                 "of `orientation`, clipped to intensity.clip, then (x - mean) / std",
        "output": f"{OUTPUT_NAME}: float32 [B, 2, X, Y, Z]; nodule probability = softmax over dim 1, channel 1",
        "spacing": list(plan.spacing),
        "orientation": plan.orientation,
        "intensity": {"clip": list(plan.intensity.clip), "mean": plan.intensity.mean, "std": plan.intensity.std},
        "window": list(window),
        "overlap": plan.inference.overlap,
        "blend_mode": plan.inference.blend_mode,
        "threshold": plan.inference.threshold,
        "network": {"filters": list(plan.network.filters), "strides": [list(s) for s in plan.network.strides]},
    }


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode (deep supervision off: the main head only), its mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def onnx_bytes(model: torch.nn.Module, window: tuple[int, int, int], dynamic_spatial: bool = True,
               opset: int = OPSET) -> bytes:
    """The network as an ONNX model (bytes), batch axis dynamic (and the spatial axes if asked)."""
    _require("onnx", "ONNX export", "onnx")  # torch's exporter writes through it
    axes = {0: "batch", 2: "x", 3: "y", 4: "z"} if dynamic_spatial else {0: "batch"}
    example = torch.zeros((1, 1, *window), dtype=torch.float32, device=_device_of(model))
    buf = io.BytesIO()
    with eval_mode(model), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation; instance_norm "train=True" (= no stats)
        torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})
    return buf.getvalue()


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _require(module: str, what: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(what, extra, why=module) from exc


def with_metadata(onnx_model: bytes, plan: dict[str, Any]) -> bytes:
    """``onnx_model`` with the plan in ``metadata_props[PLAN_KEY]`` (needs the ``onnx`` package)."""
    onnx = _require("onnx", "ONNX export", "onnx")
    proto = onnx.load_from_string(onnx_model)
    entry = proto.metadata_props.add()
    entry.key, entry.value = PLAN_KEY, json.dumps(plan)
    proto.producer_name = "medseg"
    return proto.SerializeToString()


def _write_onnx(model: torch.nn.Module, record: dict[str, Any], window: tuple[int, int, int], tmp: Path) -> None:
    tmp.write_bytes(with_metadata(onnx_bytes(model, window), record))


def _write_torchscript(model: torch.nn.Module, record: dict[str, Any], window: tuple[int, int, int],
                       tmp: Path) -> None:
    example = torch.zeros((1, 1, *window), dtype=torch.float32, device=_device_of(model))
    with eval_mode(model), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit deprecation notes
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(tmp), _extra_files={f"{PLAN_KEY}.json": json.dumps(record)})


def _load_and_run(path: Path, fmt: str, x: torch.Tensor) -> np.ndarray | None:
    """The exported file's logits for ``x`` (None when onnxruntime is not installed)."""
    if fmt == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path), map_location=x.device)(x).cpu().numpy()
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: x.cpu().numpy()})[0]


def verify(model: torch.nn.Module, path: Path, fmt: str, window: tuple[int, int, int], seed: int = 0) -> float | None:
    """Max abs logit difference between ``path`` and ``model`` on two random windows (None: not run).

    Raises :class:`RuntimeError` when it exceeds :data:`TOLERANCE` (relative to the largest logit)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((2, 1, *window), generator=gen).to(_device_of(model))
    with eval_mode(model), torch.no_grad():
        ref = model(x).float().cpu().numpy()
    got = _load_and_run(path, fmt, x)
    if got is None:
        return None
    diff = float(np.abs(got - ref).max())
    if not diff <= TOLERANCE * max(1.0, float(np.abs(ref).max())):
        raise RuntimeError(f"the exported {fmt} model differs from torch by {diff:.3g} (max abs logit)")
    return diff


def format_for(path: str | os.PathLike[str], fmt: str | None) -> str:
    """``fmt``, or the format the file name implies (``.onnx``; ``.pt``/``.ts``/``.torchscript``)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise InputError(None, f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    suffix = Path(path).suffix.lower()
    return "torchscript" if suffix in (".pt", ".ts", ".torchscript", ".jit") else "onnx"


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a file to write, or an :class:`InputError` saying why it cannot be one."""
    p = Path(path)
    if p.is_dir():
        raise InputError(p, "export output is a folder: name a file, e.g. model.onnx")
    parent = next((a for a in p.parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputError(p, f"cannot write here: {parent} is a file, not a folder")
    if parent is not None and not os.access(parent, os.W_OK):
        raise InputError(p, f"cannot write here: no write permission in {parent}")
    return p


def export_window(plan: Plan, window: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """``window`` (default: the plan's inference window), checked against the network strides."""
    strides = tuple(int(s) for s in np.prod(np.asarray(plan.network.strides), axis=0))
    win = tuple(int(w) for w in (window or plan.inference.window or plan.patch_size))
    if len(win) != 3 or any(w < 1 or w % s for w, s in zip(win, strides)):
        raise InputError(None, f"window {win} must be three sizes divisible by the network strides {strides}")
    return win  # type: ignore[return-value]


def export_model(model: torch.nn.Module, plan: Plan, path: str | os.PathLike[str], fmt: str | None = None,
                 window: tuple[int, int, int] | None = None) -> ExportResult:
    """Write ``model`` as ``fmt`` (default: from the suffix, else ONNX) to ``path`` and its plan to
    ``path.plan.json``; the file is checked against torch before it is renamed into place.

    ``window`` (default: the plan's inference window) is the verification and example shape; it must
    be divisible by the network strides (:class:`InputError` otherwise)."""
    fmt = format_for(path, fmt)
    target = check_output_path(path)
    win = export_window(plan, window)
    record = plan_record(plan, win)
    writer = _write_onnx if fmt == "onnx" else _write_torchscript
    try:
        with atomic_path(target) as tmp:
            writer(model, record, win, tmp)
            diff = verify(model, tmp, fmt, win)
        plan_path = write_json_atomic(f"{target}.plan.json", record)
    except OSError as exc:
        raise InputError(target, f"cannot write the exported model ({exc.strerror or exc})") from exc
    return ExportResult(target, plan_path, fmt, win, diff)


def export_checkpoint(path: str | os.PathLike[str], model: str | os.PathLike[str] | None = None,
                      fmt: str | None = None, window: tuple[int, int, int] | None = None) -> ExportResult:
    """``medseg.export``: load a checkpoint (``None`` = the bundled model) and :func:`export_model` it."""
    from medseg.models import load_model

    network, plan, _ = load_model(None if model is None else str(model), device="cpu")
    return export_model(network, plan, path, fmt=fmt, window=window)
