"""One preprocessing definition: training/validation transforms build the very network input that
inference builds, labels land where they were, and the plan grid -> input grid inverse holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.inference.predictor import Predictor
from medseg.io import read_volume, write_volume
from medseg.io.volume import Volume
from medseg.plan import IntensityPlan, Plan
from medseg.preprocess import PlanGrid, model_grid_size, reorient, resample_nearest
from medseg.transforms import LoadVolumed, PlanResampled, _preprocess, val_transforms

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: LPS world directions (columns) of the array axes
LPS = np.eye(3)
RAS = np.diag([-1.0, -1.0, 1.0])
#: axes permuted (i -> S, j -> L, k -> P) and j flipped: reorientation transposes and flips
PERMUTED = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])

#: name -> (direction, input spacing, shape, plan spacing); no plan spacing divides its extent
CASES = {
    "lps_anisotropic": (LPS, (0.7, 0.7, 2.5), (37, 31, 12), (0.9, 1.1, 1.6)),
    "ras_upsampled_z": (RAS, (0.85, 0.85, 2.5), (30, 33, 9), (1.3, 0.8, 1.25)),
    "permuted_flipped": (PERMUTED, (2.5, 0.7, 0.7), (10, 35, 29), (0.9, 0.9, 1.7)),
}


def _plan(spacing: tuple[float, float, float]) -> Plan:
    # a patch below the grid on every axis: validation pads nothing, the arrays compare whole
    return Plan(spacing=spacing, patch_size=(8, 8, 4), intensity=IntensityPlan(clip=(-1000.0, 500.0), mean=-400.0,
                                                                                std=350.0))


def _case(tmp_path: Path, name: str) -> tuple[Volume, Path, Path, Plan]:
    """A scan with HU beyond both clip bounds (clipping before interpolation matters) and a few
    spherical lesions placed in world coordinates."""
    direction, spacing, shape, target = CASES[name]
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    ct = rng.integers(-2048, 1800, size=shape).astype(np.int16)
    vol = Volume(ct, spacing=spacing, origin=(-12.0, 30.5, 7.25), direction=direction)
    world = vol.index_to_world(np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)
    centre = vol.index_to_world(np.array(shape) / 2.0)
    label = np.zeros(shape, np.uint8)
    for offset, r in (((0, 0, 0), 5.0), ((6.0, -4.0, 3.0), 2.6)):
        label[np.linalg.norm(world - (centre + offset), axis=-1) <= r] = 1
    image, mask = tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_label.nii.gz"
    write_volume(vol, image)
    write_volume(Volume(label, spacing, vol.origin, direction), mask)
    return read_volume(image), image, mask, _plan(target)


def _predictor(plan: Plan) -> Predictor:
    return Predictor(torch.nn.Identity(), plan)  # the network is not run: only its input is built


@pytest.mark.parametrize("name", list(CASES))
def test_validation_image_equals_inference_network_input(tmp_path, name) -> None:
    vol, image, mask, plan = _case(tmp_path, name)
    item = val_transforms(plan)({"image": str(image), "label": str(mask)})
    train_input = np.asarray(item["image"][0])
    infer_input = _predictor(plan).network_input(vol)
    grid = PlanGrid.for_volume(vol, plan)
    assert infer_input.shape == train_input.shape == grid.size
    # floor + 1 planes per axis (MONAI's Spacingd rounds the extent instead)
    assert grid.size == tuple(model_grid_size(n, s, t) for n, s, t in zip(grid.shape, grid.spacing, plan.spacing))
    assert np.abs(train_input - infer_input).max() <= 1e-5
    assert train_input.min() == pytest.approx((-1000 + 400) / 350) and train_input.max() == pytest.approx(900 / 350)


def test_hard_negative_pipeline_keeps_the_same_image_and_mines_in_hu(tmp_path) -> None:
    from monai.transforms import Compose

    vol, image, mask, plan = _case(tmp_path, "permuted_flipped")
    item = Compose(_preprocess(plan, hard_negatives={"context_mm": 3.0}))({"image": str(image), "label": str(mask)})
    assert "image_hu" not in item and "sampling_idx" in item
    np.testing.assert_allclose(np.asarray(item["image"][0]), _predictor(plan).network_input(vol), atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_label_voxels_map_back_to_where_they_were(tmp_path, name) -> None:
    vol, image, mask, plan = _case(tmp_path, name)
    d = PlanResampled(["image", "label"], plan)(LoadVolumed(["image", "label"])({"image": str(image), "label": str(mask)}))
    grid = PlanGrid.for_volume(vol, plan)
    np.testing.assert_allclose(np.asarray(d["label"].affine), grid.grid_affine, atol=1e-5)
    val = val_transforms(plan)({"image": str(image), "label": str(mask)})
    lab = np.asarray(val["label"][0])
    np.testing.assert_array_equal(lab, np.asarray(d["label"][0]))
    assert set(np.unique(lab)) == {0.0, 1.0}
    # every plan-grid label voxel, taken to world and back onto the input grid, lands on the label
    fg = np.argwhere(lab > 0)
    world_ras = grid.grid_affine @ np.c_[fg, np.ones(len(fg))].T
    ijk = np.rint(np.linalg.solve(vol.affine_ras, world_ras)[:3].T).astype(int)
    src = read_volume(mask).array
    assert src[tuple(ijk.T)].all()
    # and the lesion volume is kept (nearest neighbour, so to within a shell of plan voxels)
    plan_mm3, input_mm3 = lab.sum() * np.prod(plan.spacing), src.sum() * vol.voxel_volume_mm3
    assert plan_mm3 == pytest.approx(input_mm3, rel=0.3)


def test_label_round_trip_is_exact_on_a_finer_plan_grid() -> None:
    rng = np.random.default_rng(4)
    label = (rng.random((13, 11, 7)) > 0.6).astype(np.uint8)
    vol = Volume(label, spacing=(1.3, 1.1, 3.0), direction=PERMUTED)
    grid = PlanGrid.for_volume(vol, _plan((0.5, 0.45, 0.8)))
    box = grid.whole()
    on_plan = box.label(label)
    # a finer grid holds every input voxel: the nearest plan voxel of each input voxel takes it home
    back = resample_nearest(on_plan, box.back_positions())
    np.testing.assert_array_equal(reorient(back, grid.back), label)


@pytest.mark.parametrize("name", list(CASES))
def test_plan_grid_to_input_grid_inverse_reproduces_a_smooth_field(name) -> None:
    direction, spacing, shape, target = CASES[name]
    vol = Volume(np.zeros(shape, np.float32), spacing=spacing, direction=direction)
    world = vol.index_to_world(np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)
    linear = (world @ np.array([0.3, -0.2, 0.5])).astype(np.float32)
    centre = vol.index_to_world((np.array(shape) - 1) / 2.0)
    smooth = np.exp(-np.sum((world - centre) ** 2, axis=-1) / (2 * 12.0**2)).astype(np.float32)
    box = PlanGrid.for_volume(vol, _plan(target)).whole()
    assert box.dst_box == tuple(slice(0, n) for n in shape)  # the whole input grid comes back
    # trilinear is exact on a linear field wherever the plan grid reaches (beyond: edge held)
    inside = _reached(box, shape)
    lin_back = box.to_input(box.image(linear).full())
    np.testing.assert_allclose(lin_back[inside], linear[inside], atol=1e-4)
    gauss_back = box.to_input(box.image(smooth).full())
    assert np.abs(gauss_back - smooth)[inside].max() < 0.01  # plan voxels up to 1.7 mm, sigma 12 mm
    # past the last plan plane an axis holds its edge value: still a sample of the field
    assert smooth.min() <= gauss_back.min() and gauss_back.max() <= smooth.max()


def _reached(box, shape: tuple[int, int, int]) -> np.ndarray:
    """Input voxels within the plan grid's extent along every axis (not past its last plane)."""
    grid = box.grid
    ok = np.zeros(grid.shape, bool)
    last = [(m - 1) * sc for m, sc in zip(grid.size, grid.scale)]
    ok[np.ix_(*[np.arange(n) <= e + 1e-6 for n, e in zip(grid.shape, last)])] = True
    out = reorient(ok, grid.back)
    assert out.shape == shape
    return out


def test_a_sub_box_reads_the_values_of_the_whole_grid() -> None:
    rng = np.random.default_rng(7)
    ct = rng.integers(-1500, 1500, size=(40, 33, 14)).astype(np.int16)
    vol = Volume(ct, spacing=(0.7, 0.7, 2.5), direction=PERMUTED)
    plan = _plan((0.9, 1.1, 1.6))
    grid = PlanGrid.for_volume(vol, plan)
    whole = grid.whole().image(ct, plan.intensity).full()
    k = [(3, grid.size[0] - 2), (1, 9), (5, grid.size[2])]
    sub = grid.box(k)
    np.testing.assert_allclose(sub.image(ct, plan.intensity).full(), whole[tuple(slice(*r) for r in k)], atol=1e-5)
    # the inverse of the sub-box writes into its dst_box only, and agrees with the whole inverse there
    back_whole = grid.whole().to_input(whole)
    back_sub = sub.to_input(whole[tuple(slice(*r) for r in k)])
    np.testing.assert_allclose(back_sub, back_whole[sub.dst_box], atol=1e-5)


def test_plan_resampled_pickles_for_dataloader_workers(tmp_path) -> None:
    import pickle

    vol, image, mask, plan = _case(tmp_path, "lps_anisotropic")
    tf = pickle.loads(pickle.dumps(val_transforms(plan)))
    np.testing.assert_array_equal(np.asarray(tf({"image": str(image), "label": str(mask)})["image"][0]),
                                  _predictor(plan).network_input(vol))
