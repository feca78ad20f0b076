"""``medseg export``: ONNX and TorchScript files that reproduce torch's logits, carry the plan needed
to preprocess, are written atomically, and refuse a bad output path with one clear line."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from model_factory import tiny_plan

from medseg.cli import main
from medseg.errors import InputError, MissingExtraError
from medseg.models import build_network, save_checkpoint
from medseg.models.export import PLAN_KEY, export_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WINDOW = (16, 16, 16)


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(tiny_plan().network).eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, net):
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", net, tiny_plan())


def reference(net: torch.nn.Module, shape: tuple[int, ...]) -> tuple[torch.Tensor, np.ndarray]:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return x, net(x).numpy()


def check_plan(record: dict, window: tuple[int, int, int]) -> None:
    plan = tiny_plan()
    assert record["spacing"] == list(plan.spacing) and record["orientation"] == plan.orientation
    assert record["intensity"] == {"clip": list(plan.intensity.clip), "mean": plan.intensity.mean,
                                   "std": plan.intensity.std}
    assert record["window"] == list(window)


def test_onnx_export_reproduces_torch_with_the_plan_inside_and_beside(tmp_path, net) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'medseg[onnx]')")
    onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install 'medseg[onnx]')")
    res = export_model(net, tiny_plan(), tmp_path / "out" / "model.onnx")
    assert res.format == "onnx" and res.max_abs_diff is not None and res.max_abs_diff < 1e-3
    session = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    for shape in ((1, 1, *WINDOW), (3, 1, 24, 16, 32)):  # batch and spatial axes are dynamic
        x, ref = reference(net, shape)
        np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], ref, atol=1e-3)
    meta = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    check_plan(json.loads(meta[PLAN_KEY]), WINDOW)
    assert json.loads(res.plan_path.read_text()) == json.loads(meta[PLAN_KEY])
    assert res.plan_path.name == "model.onnx.plan.json"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "model.onnx.plan.json"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_export_reproduces_torch(tmp_path, net) -> None:
    res = export_model(net, tiny_plan(), tmp_path / "model.ts", window=(16, 16, 8))
    assert res.format == "torchscript" and res.max_abs_diff < 1e-4
    extra = {f"{PLAN_KEY}.json": ""}
    loaded = torch.jit.load(str(res.path), _extra_files=extra)
    x, ref = reference(net, (2, 1, 16, 16, 8))
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), ref, atol=1e-4)
    check_plan(json.loads(extra[f"{PLAN_KEY}.json"]), (16, 16, 8))


def test_bad_output_paths_and_windows_are_clear_errors(tmp_path, net) -> None:
    with pytest.raises(InputError, match="folder"):
        export_model(net, tiny_plan(), tmp_path, fmt="torchscript")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        export_model(net, tiny_plan(), blocker / "model.ts")
    with pytest.raises(InputError, match="divisible"):
        export_model(net, tiny_plan(), tmp_path / "model.ts", window=(10, 16, 16))
    with pytest.raises(InputError, match="format"):
        export_model(net, tiny_plan(), tmp_path / "model.ts", fmt="tflite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"], "nothing half-written"


def test_onnx_without_the_onnx_package_names_the_extra(tmp_path, net, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingExtraError, match=r'medseg\[onnx\]'):
        export_model(net, tiny_plan(), tmp_path / "model.onnx")
    assert not list(tmp_path.iterdir())


def test_cli_export_prints_the_difference_and_refuses_bad_paths(tmp_path, ckpt, capsys) -> None:
    out = tmp_path / "m.pt"
    assert main(["export", "-m", str(ckpt), "-o", str(out), "--window", "16,16,8"]) == 0
    printed = capsys.readouterr().out
    assert "torchscript" in printed and "max |logit difference| vs torch" in printed and "m.pt.plan.json" in printed
    assert json.loads((tmp_path / "m.pt.plan.json").read_text())["window"] == [16, 16, 8]
    assert main(["export", "-i", str(ckpt), "-o", str(tmp_path), "--format", "torchscript"]) == 2
    assert "folder" in capsys.readouterr().err
    assert main(["export", str(ckpt), "-m", str(ckpt), "-o", str(tmp_path / "x.ts")]) == 2
    assert "one checkpoint" in capsys.readouterr().err
    assert main(["export", "-m", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.ts")]) == 2
    with pytest.raises(SystemExit):
        main(["export", "-m", str(ckpt), "-o", str(tmp_path / "x.ts"), "--window", "16,16"])


def test_python_api_exports_a_checkpoint_and_loads_tasks(tmp_path, ckpt, net) -> None:
    """``medseg.export`` and ``medseg.load_task`` are the Python side of the CLI."""
    import medseg

    res = medseg.export(tmp_path / "tiny.ts", model=ckpt)
    assert res.format == "torchscript" and res.path.is_file() and res.max_abs_diff < 1e-4
    x, expected = reference(net, (1, 1, *WINDOW))
    with torch.no_grad():
        got = torch.jit.load(str(res.path))(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert medseg.load_task("lung_nodule").optimizer.lr > 0
