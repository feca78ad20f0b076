"""The ROI / slab-wise sliding window reproduces MONAI's sliding_window_inference inside the mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from medseg.inference.sliding_window import sliding_window_probability, window_grid
from medseg.models import build_network
from medseg.plan import NetworkPlan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    plan = NetworkPlan(filters=[8, 16, 32], kernel_size=[[3, 3, 3]] * 3,
                       strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], deep_supr_num=1)
    return build_network(plan).eval()


def monai_probability(image: np.ndarray, net, roi, overlap, batch) -> np.ndarray:
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(image)[None, None], roi, batch, net,
                                          overlap=overlap, mode="gaussian")
    return torch.softmax(logits, 1)[0, 1].numpy()


@pytest.mark.parametrize("batch,overlap", [(1, 0.5), (3, 0.25)])
def test_masked_slab_path_equals_monai_inside_mask(net, batch, overlap) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(40, 34, 30)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[6:12, 5:10, 18:24] = True  # a "lung" well inside: many windows never touch it
    mask[33:36, 25:30, 2:5] = True
    roi = (16, 16, 8)
    prob, counts = sliding_window_probability(image, net, roi, overlap=overlap, sw_batch_size=batch, mask=mask)
    ref = monai_probability(image, net, roi, overlap, batch)
    assert prob.shape == image.shape and prob.dtype == np.float32
    np.testing.assert_allclose(prob[mask], ref[mask], atol=1e-5)
    assert counts["windows_run"] < counts["windows_total"]
    assert counts["windows_total"] == len(window_grid(image.shape, roi, overlap))
    covered = np.zeros(image.shape, bool)
    skipped = np.zeros(image.shape, bool)
    for w in window_grid(image.shape, roi, overlap):
        if mask[w].any():
            covered[w] = True
        else:
            skipped[w] = True
    assert np.all(prob[~covered] == 0)  # nothing ran there: zero, not garbage
    exact = covered & ~skipped  # every window reaching these voxels was run
    np.testing.assert_allclose(prob[exact], ref[exact], atol=1e-5)


def test_unmasked_equals_monai_everywhere_and_pads_like_monai(net) -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(size=(26, 12, 10)).astype(np.float32)  # smaller than the window on two axes
    roi = (16, 16, 16)
    prob, counts = sliding_window_probability(image, net, roi, overlap=0.5, sw_batch_size=2)
    np.testing.assert_allclose(prob, monai_probability(image, net, roi, 0.5, 2), atol=1e-5)
    assert counts["windows_run"] == counts["windows_total"]


def test_empty_mask_runs_nothing(net) -> None:
    image = np.zeros((24, 24, 16), np.float32)
    prob, counts = sliding_window_probability(image, net, (24, 24, 16), mask=np.zeros(image.shape, bool))
    assert counts["windows_run"] == 0 and not prob.any()


def test_tta_is_flip_average_of_logit_differences(net) -> None:
    rng = np.random.default_rng(2)
    image = rng.normal(size=(16, 16, 8)).astype(np.float32)  # one window: flips map it onto itself
    prob, _ = sliding_window_probability(image, net, (16, 16, 8), tta=True)
    x = torch.from_numpy(image)[None, None]
    diffs = []
    with torch.inference_mode():
        for axes in [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]:
            lo = net(torch.flip(x, axes) if axes else x)
            lo = torch.flip(lo, axes) if axes else lo
            diffs.append((lo[0, 1] - lo[0, 0]).numpy())
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-np.mean(diffs, axis=0))), atol=1e-5)


def test_plan_inference_window_is_data_not_code():
    """plan.inference.window (JSON in the checkpoint) sets the sliding window; None = training patch."""
    from medseg.inference.predictor import Predictor
    from medseg.models import build_network
    from medseg.plan import NetworkPlan, Plan

    net_plan = NetworkPlan(filters=[4, 8, 8], kernel_size=[[3, 3, 3]] * 3,
                           strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], deep_supervision=False)
    plan = Plan(patch_size=(16, 16, 8), network=net_plan)
    model = build_network(net_plan)
    assert Predictor(model, plan).window == (16, 16, 8)
    data = plan.to_dict()
    data["inference"]["window"] = [32, 32, 16]
    windowed = Plan.from_dict(data)
    assert Predictor(model, windowed).window == (32, 32, 16)
    data["inference"]["window"] = [34, 32, 16]  # not divisible by the network's total stride (4)
    with pytest.raises(ValueError, match="divisible"):
        Predictor(model, Plan.from_dict(data))


def monai_window_starts(image_size, roi, overlap) -> set[tuple[int, int, int]]:
    """Where MONAI's sliding_window_inference puts its windows, read off the windows themselves: the
    image holds each voxel's linear index, so a window's first voxel names its start."""
    n = int(np.prod(image_size))
    image = torch.arange(n, dtype=torch.float64).reshape(1, 1, *image_size)
    starts: set[tuple[int, int, int]] = set()

    def record(x: torch.Tensor) -> torch.Tensor:
        for w in x[:, 0]:
            starts.add(tuple(int(v) for v in np.unravel_index(int(w[0, 0, 0]), image_size)))
        return x

    sliding_window_inference(image, roi, 1, record, overlap=overlap, mode="constant")
    return starts


@pytest.mark.parametrize("image_size, roi, overlap", [
    ((40, 34, 30), (16, 16, 8), 0.5),
    ((40, 34, 30), (16, 16, 8), 0.25),
    ((37, 16, 23), (16, 16, 8), 0.0),  # one axis exactly one window
    ((20, 21, 9), (16, 16, 8), 0.9),  # steps of int(16 * 0.1) = 1 and int(8 * 0.1) = 0 -> 1
    ((16, 16, 8), (16, 16, 8), 0.5),  # the image is the window
])
def test_window_grid_places_windows_where_monai_does(image_size, roi, overlap) -> None:
    from medseg.inference.sliding_window import scan_interval

    ours = {tuple(s.start for s in w) for w in window_grid(image_size, roi, overlap)}
    assert ours == monai_window_starts(image_size, roi, overlap)
    steps = scan_interval(image_size, roi, overlap)
    assert all(s >= 1 for s in steps)
    assert [s for s, n, r in zip(steps, image_size, roi) if n == r] == [r for n, r in zip(image_size, roi) if n == r]


def test_no_private_monai_import_is_left() -> None:
    import medseg

    root = Path(medseg.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if "_get_scan_interval" in p.read_text()]
    assert offenders == []
