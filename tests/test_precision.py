"""bf16 autocast: chosen only where the hardware runs it natively; masks agree with fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medseg.models.precision as precision
from medseg.models.precision import precision_name, resolve_precision


def test_auto_is_bf16_only_on_cpus_with_native_bf16(monkeypatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) is None, "emulated bf16 is slower than fp32: stay in fp32"
    assert resolve_precision("bf16", cpu) is torch.bfloat16, "asked for explicitly, it is given"
    assert resolve_precision("fp16", cpu) is None, "no fp16 convolutions on CPU"
    assert resolve_precision("fp32", cpu) is None
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int4", cpu)
    assert precision_name(torch.bfloat16) == "bf16" and precision_name(None) == "fp32"


def test_bf16_sliding_window_agrees_with_fp32(one_torch_thread) -> None:
    from medseg.inference.sliding_window import sliding_window_probability
    from medseg.models import build_network
    from medseg.plan import NetworkPlan

    torch.manual_seed(0)
    net = build_network(NetworkPlan(filters=[8, 16, 32], kernel_size=[[3, 3, 3]] * 3,
                                    strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], deep_supervision=False)).eval()
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (40, 40, 24)).astype(np.float32)
    image[10:22, 12:24, 6:14] += 3.0  # a bright blob the random net reacts to
    p32, _ = sliding_window_probability(image, net, (16, 16, 8))
    p16, _ = sliding_window_probability(image, net, (16, 16, 8), autocast_dtype=torch.bfloat16)
    assert p16.dtype == np.float32
    assert np.abs(p16 - p32).max() < 0.05
    assert not np.array_equal(p16, p32), "bf16 really ran (rounding differs somewhere)"
    a, b = p32 >= 0.5, p16 >= 0.5
    if a.any() or b.any():
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.95


def test_autocast_context_runs_bf16_on_cpu_and_nothing_for_fp32() -> None:
    from medseg.models.precision import autocast

    lin = torch.nn.Linear(4, 4)
    with autocast(torch.device("cpu"), torch.bfloat16):
        y = lin(torch.ones(2, 4))
    assert y.dtype == torch.bfloat16
    with autocast(torch.device("cpu"), None):
        assert lin(torch.ones(2, 4)).dtype == torch.float32


def test_machine_description_names_what_speed_figures_depend_on(monkeypatch) -> None:
    from medseg.models.device import describe_machine

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    info = describe_machine()
    assert info.native_bf16 is False and "auto runs fp32" in info.line()
    assert info.cpu_capability == str(torch.backends.cpu.get_cpu_capability())
    assert info.torch_threads == torch.get_num_threads() and info.torch_version == torch.__version__
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with_bf16 = describe_machine()
    assert with_bf16.native_bf16 is True and "no native bf16" not in with_bf16.line()
    assert set(info.to_dict()) == {"cpu", "cpu_capability", "native_bf16", "torch_threads", "torch_version",
                                   "cuda_device"}
