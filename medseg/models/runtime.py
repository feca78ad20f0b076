"""What runs the network: torch itself, ONNX Runtime or OpenVINO, in fp32, bf16 or INT8.

:func:`make_runner` turns an eval-mode network into the ``network`` callable of
:func:`medseg.inference.sliding_window.sliding_window_probability`: ``[B, 1, X, Y, Z]`` float32 in,
logits ``[B, 2, X, Y, Z]`` out. ``torch`` returns the module itself (its precision is the caller's
autocast); the other runtimes convert the module once, in memory (ONNX bytes, see
:mod:`medseg.models.export`), run on the CPU and apply their own precision, so callers pass
``autocast_dtype=None`` for them. Converted runners are cached per module and settings.

Precisions (CPU): torch fp32/bf16 (autocast); onnxruntime fp32/int8 (ONNX Runtime has no bf16
convolution kernels on CPU); openvino fp32/bf16/int8. INT8 is post-training static quantisation on
calibration windows (:func:`calibration_windows`): ``quantize_static`` (QDQ, uint8 activations,
per-channel int8 weights) for ONNX Runtime, ``nncf.quantize`` for OpenVINO.

Measured (``benchmarks/infer_speed.py``, idle 2-core CPU with AVX512_BF16, real 5 mm chest): per
48x48x16 window torch fp32 18.3 ms, torch bf16 11.7, ONNX Runtime fp32 36.9, OpenVINO fp32 14.1,
OpenVINO bf16 8.8; but on whole scans OpenVINO bf16 took 64 s of network time against 56 s for
torch bf16 (the sliding window's torch blending shares the cores with OpenVINO's thread pool).
INT8 stayed below the Dice 0.99 bar (0.89-0.90 per window), so no INT8 path is exposed on the
command line, and torch stays the default.
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import InputError, MissingExtraError

RUNTIMES = ("torch", "onnxruntime", "openvino")
#: the precisions each runtime runs on CPU
RUNTIME_PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "onnxruntime": ("fp32", "int8"),
                      "openvino": ("fp32", "bf16", "int8")}
#: runtime -> (module it imports, medseg extra that installs it); both convert through torch's ONNX exporter
_PACKAGES = {"onnxruntime": (("onnxruntime", "onnx"), ("onnx", "onnx")),
             "openvino": (("openvino", "openvino"), ("onnx", "openvino"))}
#: OpenVINO's INT8 needs NNCF
_INT8_PACKAGES = {"openvino": (("nncf", "int8"),)}

Runner = Callable[[torch.Tensor], torch.Tensor]
_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, Runner]] = weakref.WeakKeyDictionary()


class ConvertedRunner:
    """A network converted to another runtime: call it with ``[B, 1, X, Y, Z]`` float32 (CPU)."""

    runtime = ""

    def __init__(self, precision: str, convert_s: float) -> None:
        self.precision = precision
        self.convert_s = convert_s  # seconds spent converting (and calibrating) the network

    def run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(np.asarray(self.run(array), dtype=np.float32))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(precision={self.precision!r}, convert_s={self.convert_s:.1f})"


class OnnxRuntimeRunner(ConvertedRunner):
    """An ONNX Runtime CPU session."""

    runtime = "onnxruntime"

    def __init__(self, model_bytes: bytes, precision: str, convert_s: float, threads: int) -> None:
        import onnxruntime as ort

        super().__init__(precision, convert_s)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


class OpenVinoRunner(ConvertedRunner):
    """An OpenVINO model compiled for the CPU (``INFERENCE_PRECISION_HINT`` f32 or bf16)."""

    runtime = "openvino"

    def __init__(self, ov_model: Any, precision: str, convert_s: float, threads: int) -> None:
        import openvino as ov

        super().__init__(precision, convert_s)
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = ov.Core().compile_model(ov_model, "CPU", config)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.compiled(x)[0]  # outputs are copied (share_outputs=False)


class ModelOf:
    """``owner.model``, looked up at each call: a :class:`~medseg.inference.predictor.Predictor`'s torch
    network, so that a model assigned to ``predictor.model`` after construction is the one that runs."""

    runtime = "torch"

    def __init__(self, owner: Any) -> None:
        self._owner = weakref.ref(owner)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        owner = self._owner()
        if owner is None:
            raise RuntimeError("the predictor this network belongs to no longer exists")
        return owner.model(x)


# ----------------------------------------------------------------------------- choosing
def check_runtime(runtime: str) -> str:
    """``runtime`` when it is one of :data:`RUNTIMES`, else an :class:`InputError`."""
    if runtime not in RUNTIMES:
        raise InputError(None, f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return runtime


def missing_reason(runtime: str, precision: str = "fp32") -> str | None:
    """Why ``runtime`` cannot run ``precision`` here (a package missing, a precision it lacks), or None."""
    check_runtime(runtime)
    if precision not in RUNTIME_PRECISIONS[runtime]:
        return f"{runtime} has no {precision} on CPU (it runs {', '.join(RUNTIME_PRECISIONS[runtime])})"
    missing = _missing_package(runtime, precision)
    return None if missing is None else f'{missing[0]} is not installed (pip install "medseg[{missing[1]}]")'


def _missing_package(runtime: str, precision: str) -> tuple[str, str] | None:
    """(module, extra) of the first package ``runtime`` at ``precision`` needs that is not installed."""
    needed = [*_PACKAGES.get(runtime, ()), *(_INT8_PACKAGES.get(runtime, ()) if precision == "int8" else ())]
    return next(((m, e) for m, e in needed if importlib.util.find_spec(m) is None), None)


def runtime_precision(runtime: str, precision: str, device: torch.device | str = "cpu") -> str:
    """The precision ``runtime`` runs for a requested ``auto``/``fp32``/``bf16``/``fp16``/``int8``.

    torch follows :func:`medseg.models.precision.resolve_precision`; ``auto`` is bf16 for OpenVINO on
    CPUs with native bf16, else fp32. A precision the runtime lacks is an :class:`InputError`."""
    from medseg.models.precision import cpu_has_native_bf16, precision_name, resolve_precision

    check_runtime(runtime)
    if runtime == "torch":
        if precision == "int8":
            raise InputError(None, "INT8 runs with --runtime onnxruntime or openvino, not torch")
        return precision_name(resolve_precision(precision, torch.device(device)))
    if precision == "auto":
        return "bf16" if runtime == "openvino" and cpu_has_native_bf16() else "fp32"
    if precision not in RUNTIME_PRECISIONS[runtime]:
        raise InputError(None, f"--runtime {runtime} has no {precision} on CPU (it runs "
                               f"{', '.join(RUNTIME_PRECISIONS[runtime])}): use --precision auto or fp32")
    return precision


def _precision_label(precision: str | torch.dtype | None) -> str:
    if precision is None or precision == torch.float32:
        return "fp32"
    if isinstance(precision, torch.dtype):
        from medseg.models.precision import precision_name

        return precision_name(precision)
    return str(precision)


def _require(runtime: str, precision: str) -> None:
    if precision not in RUNTIME_PRECISIONS[runtime]:
        raise InputError(None, str(missing_reason(runtime, precision)))
    missing = _missing_package(runtime, precision)
    if missing is not None:
        what = f"--runtime {runtime}" + (" INT8" if precision == "int8" else "")
        raise MissingExtraError(what, missing[1], why=missing[0])


def _check_cpu(runtime: str, device: torch.device | str, model: torch.nn.Module) -> None:
    on = {torch.device(device).type} | {p.device.type for p in model.parameters()}
    if on != {"cpu"}:
        raise InputError(None, f"--runtime {runtime} runs on the CPU: use --device cpu (or --runtime torch)")


# ----------------------------------------------------------------------------- make_runner
def make_runner(
    model: torch.nn.Module,
    runtime: str = "torch",
    precision: str | torch.dtype | None = None,
    window: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    calibration: Sequence[np.ndarray] | None = None,
    threads: int | None = None,
) -> Runner:
    """The network callable for ``runtime`` (``[B, 1, *window]`` float32 -> logits ``[B, 2, *window]``).

    ``precision``: ``fp32`` (or None), ``bf16``, ``int8`` (or a torch dtype). For ``torch`` the
    module itself is returned and precision is the caller's autocast. Other runtimes need a CPU
    ``device``; ``window`` fixes their spatial input shape (None: dynamic). ``int8`` needs
    ``calibration``: normalised windows ``[1, 1, *window]`` (see :func:`calibration_windows`).
    ``threads`` defaults to ``torch.get_num_threads()``. Conversions without calibration data are
    cached per module (and weights version), so predictors sharing a model convert it once.
    """
    name = _precision_label(precision)
    check_runtime(runtime)
    if runtime == "torch":
        runtime_precision("torch", name, device)  # int8 is refused
        return model
    _require(runtime, name)
    _check_cpu(runtime, device, model)
    if name == "int8" and not calibration:
        raise ValueError("INT8 needs calibration windows (see medseg.models.runtime.calibration_windows)")
    threads = int(threads or torch.get_num_threads())
    win = tuple(int(w) for w in window) if window is not None else None
    key = (runtime, name, win, threads, _weights_version(model))
    cached = _CACHE.setdefault(model, {})
    if calibration is None and key in cached:
        return cached[key]
    runner = _BUILDERS[runtime](model, name, win, threads, calibration)
    if calibration is None:
        cached[key] = runner
    return runner


def _weights_version(model: torch.nn.Module) -> tuple[int, ...]:
    """Changes when any parameter or buffer is modified in place (optimizer step, load_state_dict)."""
    return tuple(t._version for t in (*model.parameters(), *model.buffers()))


def _export(model: torch.nn.Module, window: tuple[int, ...] | None) -> bytes:
    from medseg.models.export import onnx_bytes

    probe = window or _min_window(model)
    return onnx_bytes(model, probe, dynamic_spatial=window is None)  # type: ignore[arg-type]


def _min_window(model: torch.nn.Module) -> tuple[int, int, int]:
    strides = np.prod(np.asarray(getattr(model, "strides", [[1, 1, 1]])), axis=0)
    return tuple(int(s) * 2 for s in strides)  # type: ignore[return-value]


def _build_onnxruntime(model: torch.nn.Module, precision: str, window: tuple[int, ...] | None, threads: int,
                       calibration: Sequence[np.ndarray] | None) -> OnnxRuntimeRunner:
    t = time.perf_counter()
    data = _export(model, window)
    if precision == "int8":
        data = quantize_onnx(data, calibration or [])
    return OnnxRuntimeRunner(data, precision, time.perf_counter() - t, threads)


def _build_openvino(model: torch.nn.Module, precision: str, window: tuple[int, ...] | None, threads: int,
                    calibration: Sequence[np.ndarray] | None) -> OpenVinoRunner:
    import io

    import openvino as ov

    t = time.perf_counter()
    ov_model = ov.convert_model(io.BytesIO(_export(model, window)))
    if precision == "int8":
        ov_model = quantize_openvino(ov_model, calibration or [])
    return OpenVinoRunner(ov_model, precision, time.perf_counter() - t, threads)


def quantize_openvino(ov_model: Any, calibration: Sequence[np.ndarray]) -> Any:
    """NNCF post-training quantisation: asymmetric activations (``MIXED``), transposed convolutions
    (the upsampling) kept in float - the best Dice of the variants tried. Its progress bars go to stderr."""
    import contextlib
    import logging
    import sys

    import nncf

    nncf.set_log_level(logging.WARNING)
    with contextlib.redirect_stdout(sys.stderr):
        return nncf.quantize(ov_model, nncf.Dataset(list(calibration)), subset_size=len(calibration),
                             preset=nncf.QuantizationPreset.MIXED,
                             ignored_scope=nncf.IgnoredScope(types=["ConvolutionBackpropData"]))


_BUILDERS: dict[str, Callable[..., ConvertedRunner]] = {"onnxruntime": _build_onnxruntime,
                                                         "openvino": _build_openvino}


# ----------------------------------------------------------------------------- INT8
def quantize_onnx(model_bytes: bytes, calibration: Sequence[np.ndarray]) -> bytes:
    """ONNX Runtime post-training static quantisation (QDQ; uint8 activations, per-channel int8
    weights, MinMax ranges; ``reduce_range`` off: VNNI CPUs do not saturate) on ``calibration``.

    Calibration holds every intermediate tensor of every window (about 100 MB per 48x48x16 window for
    the bundled network; ONNX Runtime 1.32's ``CalibMaxIntermediateOutputs`` drops data, so it is off)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            return None if item is None else {"image": np.ascontiguousarray(item, dtype=np.float32)}

    with tempfile.TemporaryDirectory(prefix="medseg-int8-") as work:
        src, dst = Path(work) / "fp32.onnx", Path(work) / "int8.onnx"
        src.write_bytes(model_bytes)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=False)
        return dst.read_bytes()


class _Reservoir:
    """A stand-in network that keeps a uniform random sample of the windows it is given."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seen = int(n), 0
        self.rng = np.random.default_rng(seed)
        self.windows: list[np.ndarray] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for w in x.detach().cpu().numpy():
            self._offer(w[None].astype(np.float32, copy=True))
        return torch.zeros((x.shape[0], 2, *x.shape[2:]), dtype=torch.float32)

    def _offer(self, window: np.ndarray) -> None:
        self.seen += 1
        if len(self.windows) < self.n:
            self.windows.append(window)
            return
        j = int(self.rng.integers(self.seen))
        if j < self.n:
            self.windows[j] = window


def calibration_windows(predictor: Any, volume: Any, n: int = 16, seed: int = 0,
                        lung_mask: np.ndarray | None = None) -> list[np.ndarray]:
    """Up to ``n`` network inputs (``[1, 1, *window]`` float32, normalised) drawn at random from the
    windows ``predictor`` runs on ``volume``: those touching the lung (``lung_mask``, default: the
    computed one; the whole scan when none is found). No network runs: a stand-in records them."""
    if lung_mask is None:
        from medseg.inference.lung_mask import compute_lung_mask

        found = compute_lung_mask(volume)
        lung_mask = found.mask if found.found else None
    probe = copy.copy(predictor)
    probe.network = recorder = _Reservoir(n, seed)
    probe.autocast_dtype, probe.tta = None, False
    probe.predict_roi(volume, lung_mask)
    return recorder.windows
