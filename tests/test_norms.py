"""Network normalisation: instance vs batch norm, moving weights between them, window independence."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from medseg.inference.sliding_window import sliding_window_probability
from medseg.models import build_network
from medseg.models.network import load_weights_across_norms
from medseg.plan import NetworkPlan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = NetworkPlan(filters=[4, 8, 16], kernel_size=[[3, 3, 3]] * 3, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                   deep_supr_num=1)


def _convs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".conv." in k}


def test_instance_norm_weights_load_into_a_batch_norm_network():
    torch.manual_seed(0)
    source = build_network(TINY)
    target = build_network(replace(TINY, norm_name="batch"))
    load_weights_across_norms(target, source.state_dict())
    for k, v in _convs(source).items():
        assert torch.equal(target.state_dict()[k], v), k
    bns = [m for m in target.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert bns and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)

    # and back: batch-norm weights (running statistics included) into an instance-norm network
    load_weights_across_norms(build_network(TINY), target.state_dict())


def test_weights_of_another_network_are_refused_not_half_loaded():
    source = build_network(TINY).state_dict()
    target = build_network(replace(TINY, norm_name="batch"))
    missing_conv = {k: v for k, v in source.items() if k != "input_block.conv1.conv.weight"}
    with pytest.raises(ValueError, match="conv1.conv.weight"):
        load_weights_across_norms(target, missing_conv)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_weights_across_norms(target, build_network(replace(TINY, filters=[8, 16, 32])).state_dict())


def test_unknown_normalisation_is_refused():
    with pytest.raises(ValueError, match="unknown normalisation 'group'"):
        build_network(replace(TINY, norm_name="group"))


def _probabilities(model: torch.nn.Module, image: np.ndarray, roi: tuple[int, int, int], overlap: float) -> np.ndarray:
    model.eval()
    prob, _ = sliding_window_probability(image, model, roi, overlap=overlap, sw_batch_size=4)
    return prob


def test_batch_norm_output_barely_depends_on_the_windows_and_instance_norm_does():
    """The property that lets a batch-norm model run big windows at low overlap: with fixed
    statistics, two window layouts differ only by zero padding at window edges; per-window
    instance statistics change the whole output."""
    torch.manual_seed(0)
    image = np.random.default_rng(0).normal(0, 1, (48, 48, 32)).astype(np.float32)
    image[10:20, 12:22, 8:16] += 3.0  # a bright block, so windows see different statistics
    spread = {}
    for norm in ("instance", "batch"):
        model = build_network(replace(TINY, norm_name=norm))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):  # a trained-looking fixed affine
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        small = _probabilities(model, image, (16, 16, 16), 0.5)
        large = _probabilities(model, image, (48, 48, 32), 0.25)
        inner = (slice(8, -8),) * 3
        spread[norm] = float(np.abs(small - large)[inner].mean())
    assert spread["batch"] < 0.25 * spread["instance"], spread


def test_recalibration_sets_running_statistics_to_the_mean_over_batches():
    from medseg.training.norm_stats import recalibrate_batch_norm

    model = torch.nn.Sequential(torch.nn.BatchNorm3d(1))
    model.eval()
    batches = [torch.full((2, 1, 4, 4, 4), v) + torch.randn(2, 1, 4, 4, 4) * 0.1 for v in (1.0, 3.0, 8.0)]
    assert recalibrate_batch_norm(model, batches) == 3
    expected = torch.stack([b.mean() for b in batches]).mean()
    assert torch.allclose(model[0].running_mean, expected.reshape(1), atol=1e-5)  # not the last batch's 8
    assert not model.training and model[0].momentum == 0.1
    assert recalibrate_batch_norm(build_network(TINY), batches) == 0  # instance norm: nothing to do


def test_receptive_field_of_known_networks():
    from medseg.models.network import receptive_field

    two_convs = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.Conv3d(2, 2, 3, padding=1))
    assert receptive_field(two_convs, (16, 16, 16)) == (5, 5, 5)
    assert all(p.grad is None for p in two_convs.parameters())  # a measurement leaves no gradients behind
    flat = torch.nn.Conv3d(1, 2, (3, 3, 1), padding=(1, 1, 0))
    assert receptive_field(flat, (9, 9, 9)) == (3, 3, 1)
    # a batch-norm U-Net sees far more than one kernel but not all of a large probe; a probe that
    # small caps the answer; instance norm makes every output depend on the whole window
    batch = build_network(replace(TINY, norm_name="batch"))
    rf = receptive_field(batch, (48, 48, 48))
    assert all(10 < r < 48 for r in rf), rf
    assert receptive_field(batch, (8, 8, 8)) == (8, 8, 8)
    assert receptive_field(build_network(TINY), (48, 48, 48)) == (48, 48, 48)
