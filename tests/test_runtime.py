"""Network runtimes: torch is the module itself; ONNX Runtime and OpenVINO reproduce its logits
(fp32), stay close in bf16/INT8, are converted once, and reach the Predictor, Segmenter and CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from model_factory import chest_hu, tiny_plan

import medseg.models.runtime as runtime
from medseg.errors import InputError, MissingExtraError
from medseg.io import Volume
from medseg.models import build_network, save_checkpoint
from medseg.models.runtime import make_runner, missing_reason, runtime_precision

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WINDOW = (16, 16, 16)
NEEDS = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
WHY = "optional runtime not installed (pip install 'medseg[onnx]' / 'medseg[openvino]')"


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    """Deep supervision on: in eval mode the network returns the main head only."""
    torch.manual_seed(0)
    return build_network(tiny_plan().network).eval()


def windows(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, *WINDOW), generator=gen)
    x[:, :, 4:10, 5:12, 3:9] += 3.0  # a bright blob the random net reacts to
    return x


def logits(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return net(x)


def test_torch_is_the_module_itself_and_precisions_are_checked(net) -> None:
    assert make_runner(net, "torch") is net
    assert runtime_precision("torch", "fp32") == "fp32" and runtime_precision("torch", "bf16") == "bf16"
    assert runtime_precision("onnxruntime", "auto") == "fp32", "ONNX Runtime has no CPU bf16"
    with pytest.raises(InputError, match="has no bf16 on CPU"):
        runtime_precision("onnxruntime", "bf16")
    with pytest.raises(InputError, match="INT8"):
        make_runner(net, "torch", "int8")
    with pytest.raises(InputError, match="runtime must be one of"):
        make_runner(net, "tensorrt")
    assert "no bf16" in missing_reason("onnxruntime", "bf16")


def test_a_missing_runtime_package_is_one_clear_line(net, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r'pip install "medseg\[onnx\]"'):
        make_runner(net, "onnxruntime")
    assert missing_reason("onnxruntime") == 'onnxruntime is not installed (pip install "medseg[onnx]")'


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_converted_fp32_reproduces_torch_and_is_converted_once(net, name) -> None:
    pytest.importorskip(NEEDS[name], reason=WHY)
    run = make_runner(net, name, "fp32", WINDOW)
    assert make_runner(net, name, None, WINDOW) is run, "cached: one conversion per model and settings"
    for n in (1, 3):  # dynamic batch (the last sliding-window batch is smaller)
        x = windows(n)
        with torch.inference_mode():
            out = run(x)
        assert out.shape == (n, 2, *WINDOW) and out.dtype == torch.float32
        assert float((out - logits(net, x)).abs().max()) < 1e-3
    with torch.no_grad():
        next(net.parameters()).mul_(1.0)  # weights changed in place: a new conversion
    assert make_runner(net, name, "fp32", WINDOW) is not run
    with pytest.raises(InputError, match="CPU"):
        make_runner(net, name, "fp32", WINDOW, device="cuda")


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a[:, 1] > a[:, 0]) == (b[:, 1] > b[:, 0])).float().mean())


@pytest.mark.parametrize(("name", "precision", "module"), [("openvino", "bf16", "openvino"),
                                                           ("onnxruntime", "int8", "onnxruntime"),
                                                           ("openvino", "int8", "nncf")])
def test_reduced_precision_stays_close(net, name, precision, module) -> None:
    pytest.importorskip(NEEDS[name], reason=WHY)
    pytest.importorskip(module, reason=f"{module} not installed (INT8/bf16 of {name})")
    calib = [w[None].numpy() for w in windows(6, seed=1)] if precision == "int8" else None
    run = make_runner(net, name, precision, WINDOW, calibration=calib)
    x = windows(2)
    ref = logits(net, x)
    with torch.inference_mode():
        out = run(x)
    assert run.precision == precision and run.convert_s > 0
    d_ref, d_out = (ref[:, 1] - ref[:, 0]).flatten(), (out[:, 1] - out[:, 0]).flatten()
    assert float(torch.corrcoef(torch.stack([d_ref, d_out]))[0, 1]) > 0.95
    assert agreement(out, ref) > 0.95


@pytest.mark.parametrize(("name", "module"), [("onnxruntime", "onnxruntime"), ("openvino", "nncf")])
def test_int8_needs_calibration_windows(net, name, module) -> None:
    pytest.importorskip(NEEDS[name], reason=WHY)
    pytest.importorskip(module, reason=f"{module} not installed (INT8 of {name})")
    with pytest.raises(ValueError, match="calibration"):
        make_runner(net, name, "int8", WINDOW)


def chest(shape=(32, 32, 16)) -> Volume:
    return Volume(chest_hu(0, shape), (4.0, 4.0, 4.0), modality="CT")


def test_predictor_with_onnxruntime_gives_torch_probabilities(net) -> None:
    pytest.importorskip("onnxruntime", reason=WHY)
    from medseg.inference.predictor import Predictor

    vol = chest()
    torch_p = Predictor(net, tiny_plan(), precision="fp32")
    ort_p = Predictor(net, tiny_plan(), precision="auto", runtime="onnxruntime")
    assert torch_p.network.runtime == "torch" and ort_p.network.runtime == "onnxruntime"
    assert ort_p.autocast_dtype is None and ort_p.network_precision == "fp32"
    a, b = torch_p.predict_roi(vol), ort_p.predict_roi(vol)
    assert a.box == b.box
    np.testing.assert_allclose(b.probability, a.probability, atol=1e-4)


def test_predict_roi_runs_the_predictors_network(net) -> None:
    from medseg.inference.predictor import Predictor

    pred, calls = Predictor(net, tiny_plan()), []

    def spy(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return net(x)

    pred.network = spy
    pred.predict_roi(chest())
    assert calls, "the sliding window runs Predictor.network (the converted runner), not Predictor.model"
    pred, calls = Predictor(net, tiny_plan()), []
    pred.model = spy  # torch: a model swapped in after construction is the one that runs
    pred.predict_roi(chest())
    assert calls


def test_calibration_windows_are_normalised_network_inputs_from_the_lung(net) -> None:
    from medseg.inference.lung_mask import compute_lung_mask
    from medseg.inference.predictor import Predictor
    from medseg.transforms import normalise_ct

    vol = chest()
    pred = Predictor(net, tiny_plan())
    lung = compute_lung_mask(vol)
    assert lung.found
    got = runtime.calibration_windows(pred, vol, n=3, seed=0)
    assert len(got) == 3 and all(w.shape == (1, 1, *WINDOW) and w.dtype == np.float32 for w in got)
    assert all(np.isfinite(w).all() for w in got)
    air = float(normalise_ct(np.array([-1000.0]), pred.plan.intensity)[0])
    assert min(float(w.min()) for w in got) == pytest.approx(air, abs=1e-4), "normalised HU: air is there"
    assert pred.network.runtime == "torch", "the predictor itself is untouched"
    again = runtime.calibration_windows(pred, vol, n=3, seed=0, lung_mask=lung.mask)
    assert all(np.array_equal(a, b) for a, b in zip(got, again)), "seeded: the same draw"


def test_runtime_option_reaches_the_segmenter_report(tmp_path) -> None:
    pytest.importorskip("onnxruntime", reason=WHY)
    from medseg.cli import build_parser
    from medseg.cli._common import inference_settings
    from medseg.inference.pipeline import Segmenter

    torch.manual_seed(0)
    ckpt = save_checkpoint(Path(tmp_path) / "tiny.pt", build_network(tiny_plan().network), tiny_plan())
    args = build_parser().parse_args(["infer", "a.nii.gz", "-o", "o", "--runtime", "onnxruntime"])
    assert inference_settings(args)["runtime"] == "onnxruntime"
    seg = Segmenter(model=str(ckpt), device="auto", quiet=True, crf=False, lung_mask=False, **inference_settings(args))
    info = seg.model_info()
    assert info["runtime"] == "onnxruntime" and info["precision"] == "fp32" and info["device"] == "cpu"
    result = seg.segment(chest())
    assert result.labels.shape == (32, 32, 16)


def test_batch_takes_the_runtime_and_a_pipeline_refuses_an_unknown_one(tmp_path) -> None:
    pytest.importorskip("onnxruntime", reason=WHY)
    import json

    import yaml

    from medseg.batch.pipeline import load_pipeline
    from medseg.cli import main
    from medseg.io import write_volume

    with pytest.raises(InputError, match="runtime"):
        load_pipeline({"inference": {"runtime": "tensorrt"}})
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_network(tiny_plan().network), tiny_plan())
    rng = np.random.default_rng(0)
    write_volume(Volume(rng.normal(-700, 100, (20, 20, 12)).astype(np.int16), (1.0, 1.0, 1.5), modality="CT"),
                 tmp_path / "in" / "c1.nii.gz")
    out = tmp_path / "out"
    assert main(["batch", str(tmp_path / "in"), "-o", str(out), "--workers", "0", "--model", str(ckpt), "--device",
                 "cpu", "--crop-mode", "--no-crf", "--no-preview", "--no-masses", "--runtime", "onnxruntime",
                 "--quiet"]) == 0
    assert yaml.safe_load((out / "pipeline.yaml").read_text())["inference"]["runtime"] == "onnxruntime"
    assert json.loads((out / "c1" / "c1_report.json").read_text())["model"]["runtime"] == "onnxruntime"
