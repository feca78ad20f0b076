"""Dataset detection, patient-wise splits, planning and the MONAI preprocessing (helper B)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.datasets import detect_layout, read_dataset, read_datasets
from medseg.data.planning import fingerprint_dataset, make_plan, network_topology
from medseg.data.splits import fold_cases, load_splits, make_splits, save_splits
from medseg.errors import InputError
from medseg.tasks import NetworkTask, TaskConfig, load_task

#: every random augmentation off, so a transform test sees the crop alone
NO_AUGMENTATION = {k: 0.0 for k in ("flip", "rot90", "affine", "intensity_scale", "intensity_shift", "noise",
                                    "contrast", "low_resolution")}


def _task(sampling: dict, **augmentation) -> TaskConfig:
    return TaskConfig.from_dict({"sampling": sampling, "augmentation": {**NO_AUGMENTATION, **augmentation}})


def _sphere(shape=(32, 32, 32), centre=(16, 16, 16), r=5, value=1):
    g = np.indices(shape)
    d2 = sum((g[i] - centre[i]) ** 2 for i in range(3))
    return (d2 <= r * r).astype(np.uint8) * value


def _write(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0), lps: bool = False) -> None:
    aff = np.diag([*spacing, 1.0])
    if lps:  # LPS-ordered array: x and y axes point the other way in RAS
        aff[0, 0], aff[1, 1] = -spacing[0], -spacing[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, aff), str(path))


def make_pairs(root: Path, names, spacing=(1.0, 1.0, 1.0)) -> Path:
    for i, n in enumerate(names):
        m = _sphere(centre=(14 + i % 4, 16, 16))
        img = np.where(m > 0, 40, -800).astype(np.int16)
        _write(root / "image" / f"{n}.nii.gz", img, spacing, lps=True)
        _write(root / "mask" / f"{n}.nii.gz", m, spacing, lps=True)
    return root


def test_pairs_layout_groups_lidc_patients(tmp_path):
    root = make_pairs(tmp_path / "vois", ["LIDC-IDRI-0001_R_1", "LIDC-IDRI-0001_R_2", "LIDC-IDRI-0002_R_1", "other"])
    assert detect_layout(root) == "pairs"
    cases = {c.key: c for c in read_dataset(root)}
    assert cases["vois/LIDC-IDRI-0001_R_2"].group == "LIDC-IDRI-0001"
    assert cases["vois/LIDC-IDRI-0002_R_1"].group == "LIDC-IDRI-0002"
    assert cases["vois/other"].group == "vois/other"  # no patient id: its own group


def test_msd_layouts(tmp_path):
    root = tmp_path / "Task01"
    for n in ("a_001", "a_002"):
        _write(root / "imagesTr" / f"{n}_0000.nii.gz", np.zeros((8, 8, 8), np.int16))
        _write(root / "labelsTr" / f"{n}.nii.gz", _sphere((8, 8, 8), (4, 4, 4), 2))
    (root / "dataset.json").write_text(json.dumps({"name": "x"}))
    assert detect_layout(root) == "msd"
    cases = read_dataset(root)
    assert [Path(c.image).name for c in cases] == ["a_001_0000.nii.gz", "a_002_0000.nii.gz"]
    # MSD's explicit training list
    (root / "dataset.json").write_text(json.dumps({"training": [
        {"image": "./imagesTr/a_002_0000.nii.gz", "label": "./labelsTr/a_002.nii.gz"}]}))
    assert [c.key for c in read_dataset(root)] == ["Task01/a_002"]


def test_phantom_set_and_combined_datasets(tmp_path):
    ph = tmp_path / "phantoms"
    inst = _sphere(r=3) + _sphere(centre=(8, 8, 8), r=3, value=2)  # instance labels 1 and 2
    _write(ph / "p0.nii.gz", np.where(inst > 0, 30, -900).astype(np.int16))
    _write(ph / "p0_nodules.nii.gz", inst.astype(np.uint16))
    _write(ph / "p0_lungs.nii.gz", np.ones((32, 32, 32), np.uint8))
    assert detect_layout(ph) == "phantoms"
    pairs = make_pairs(tmp_path / "vois", ["LIDC-IDRI-0003_R_1"])
    cases = read_datasets([ph, pairs])
    assert sorted(c.key for c in cases) == ["phantoms/p0", "vois/LIDC-IDRI-0003_R_1"]
    assert {c.layout for c in cases} == {"phantoms", "pairs"}
    with pytest.raises(InputError):
        detect_layout(tmp_path / "vois" / "image" / ".." / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="layout"):
        read_dataset(tmp_path / "empty")


def test_instance_labels_become_foreground_and_ras_orientation(tmp_path):
    from medseg.plan import IntensityPlan, Plan
    from medseg.transforms import val_transforms

    ph = tmp_path / "ph"
    inst = np.zeros((32, 32, 32), np.uint16)
    inst[1:4, 1:4, 10:13] = 7  # near array index 0 along i/j
    ct = np.full((32, 32, 32), -900, np.int16)
    ct[0, 0, 0] = 1000
    _write(ph / "s.nii.gz", ct, lps=True)
    _write(ph / "s_nodules.nii.gz", inst, lps=True)
    plan = Plan(spacing=(1.0, 1.0, 1.0), patch_size=(16, 16, 16),
                intensity=IntensityPlan(clip=(-1000.0, 1000.0), mean=0.0, std=1000.0))
    item = val_transforms(plan)({"image": str(ph / "s.nii.gz"), "label": str(ph / "s_nodules.nii.gz")})
    label, image = np.asarray(item["label"][0]), np.asarray(item["image"][0])
    assert set(np.unique(label)) == {0.0, 1.0}
    # LPS -> RAS flips i and j: the marker at [0, 0, 0] moves to [31, 31, 0]
    assert image[31, 31, 0] == pytest.approx(1.0)
    assert label[28:31, 28:31, 10:13].all() and label.sum() == 27


def test_patient_wise_split_is_disjoint_and_reproducible(tmp_path):
    names = [f"LIDC-IDRI-{p:04d}_R_{k}" for p in range(1, 9) for k in range(1, 1 + p % 3 + 1)]
    root = make_pairs(tmp_path / "vois", names)
    cases = read_dataset(root)
    splits = make_splits(cases, folds=3, seed=7)
    seen_val = []
    for k in range(3):
        train, val = fold_cases(cases, splits, k)
        assert not {c.group for c in train} & {c.group for c in val}
        assert len(train) + len(val) == len(cases)
        seen_val += [c.key for c in val]
    assert sorted(seen_val) == sorted(c.key for c in cases)
    save_splits(splits, tmp_path / "splits.json")
    again = load_splits(tmp_path / "splits.json")
    assert [c.key for c in fold_cases(cases, again, 1)[1]] == [c.key for c in fold_cases(cases, splits, 1)[1]]
    assert make_splits(cases, folds=3, seed=7) == splits
    assert make_splits(cases, folds=3, seed=8)["folds"] != splits["folds"]


def test_stride_rule_keeps_thin_axis_at_least_4_voxels():
    strides, kernels = network_topology([64, 64, 8], [0.7, 0.7, 2.5], NetworkTask(max_levels=6, min_feature_size=4))
    z = int(np.prod([s[2] for s in strides]))
    assert 8 // z >= 4
    assert strides[1] == [2, 2, 1]  # coarse z is not downsampled before in-plane catches up
    assert kernels[0] == [3, 3, 1]
    xy = int(np.prod([s[0] for s in strides]))
    assert 64 // xy >= 4 and 64 // (xy * 2) < 4 or len(strides) == 6


def test_plan_from_fingerprint(tmp_path):
    root = tmp_path / "vois"
    for i, sp in enumerate([(0.7, 0.7, 2.0), (0.8, 0.8, 1.5), (0.75, 0.75, 1.8)]):
        m = _sphere(r=4)
        _write(root / "image" / f"LIDC-IDRI-000{i}_R_1.nii.gz", np.where(m > 0, 100 + 10 * i, -850).astype(np.int16), sp)
        _write(root / "mask" / f"LIDC-IDRI-000{i}_R_1.nii.gz", m, sp)
    cases = read_dataset(root)
    fp = fingerprint_dataset(cases, samples_per_case=1000)
    assert fp["median_spacing"] == pytest.approx([0.75, 0.75, 1.8])
    assert 100 <= fp["foreground"]["mean"] <= 120
    task = load_task("lung_nodule")
    plan = make_plan(fp, task, "cpu")
    assert plan.spacing == pytest.approx((0.75, 0.75, 1.8))
    assert plan.intensity.clip[0] <= -1000 and plan.intensity.clip[1] >= 400
    div = [int(np.prod([s[a] for s in plan.network.strides])) for a in range(3)]
    assert all(p % d == 0 for p, d in zip(plan.patch_size, div))
    assert all(p >= lo for p, lo in zip(plan.patch_size, task.patch.min))
    assert len(plan.network.filters) == len(plan.network.strides)
    gpu = make_plan(fp, task, "cuda", device_memory_bytes=80e9)
    small = make_plan(fp, task, "cuda", device_memory_bytes=0.5e9)
    assert gpu.batch_size >= small.batch_size >= 2
    over = make_plan(fp, task, "cpu", overrides={"patch_size": [32, 32, 16], "filters": [8, 16, 32], "batch_size": 3})
    assert over.patch_size == (32, 32, 16) and over.network.filters == [8, 16, 32] and over.batch_size == 3


def test_user_task_file_overrides_bundled_defaults(tmp_path):
    p = tmp_path / "my.yaml"
    p.write_text("name: liver\nlabels: {background: 0, tumour: 1}\nsampling: {pos: 1}\n")
    t = load_task(p)
    assert t.name == "liver" and t.labels == {"background": 0, "tumour": 1}
    assert t.sampling.pos == 1 and t.sampling.neg == 1 and t.optimizer == load_task("lung_nodule").optimizer
    with pytest.raises(InputError):
        load_task(tmp_path / "nope.yaml")


def test_dataset_weights_set_each_datasets_share_of_patches():
    """--dataset-weights 3,1: 75% of patches from the first dataset whatever the case counts."""
    from types import SimpleNamespace

    import torch

    from medseg.training.run import case_weights
    from medseg.training.trainer import EpochSampler

    cases = [SimpleNamespace(dataset="crops")] * 90 + [SimpleNamespace(dataset="phantoms")] * 10
    assert case_weights(cases, None) is None
    weights = case_weights(cases, [3.0, 1.0])
    sampler = EpochSampler(len(cases), 8000, seed=1, weights=weights)
    drawn = torch.tensor(list(sampler))
    phantom_share = float((drawn >= 90).double().mean())
    assert abs(phantom_share - 0.25) < 0.03  # uniform sampling would give 0.10
    with pytest.raises(InputError):
        case_weights(cases, [1.0])


def test_hard_negative_sampling_centres_patches_on_vessels_not_nodules_or_air(tmp_path):
    """Hard-negative crops land on dense structures in aerated lung, never on the nodule."""
    from medseg.plan import IntensityPlan, Plan
    from medseg.transforms import train_transforms

    shape = (48, 48, 32)
    ct = np.full(shape, -850, np.int16)  # aerated lung
    ct[:, 10:12, 10:12] = 40  # a thin vessel along i
    ct[:, :, 28:] = 40  # a slab of soft tissue (chest wall): dense but not in aerated surroundings
    nodule = _sphere(shape, centre=(30, 34, 14), r=4)
    ct[nodule > 0] = 30
    _write(tmp_path / "image" / "c.nii.gz", ct)
    _write(tmp_path / "mask" / "c.nii.gz", nodule)
    plan = Plan(spacing=(1.0, 1.0, 1.0), patch_size=(8, 8, 8),
                intensity=IntensityPlan(clip=(-1000.0, 1000.0), mean=0.0, std=1000.0))
    item = {"image": str(tmp_path / "image" / "c.nii.gz"), "label": str(tmp_path / "mask" / "c.nii.gz")}

    def centres(neg, pos, hard, n=30):
        tf = train_transforms(plan, _task({"neg": neg, "pos": pos, "hard_negative": {"ratio": hard, "context_mm": 7.0}}))
        tf.set_random_state(seed=3)
        out = []
        for _ in range(n):
            (patch,) = tf(item)
            assert set(patch) == {"image", "label"}  # the sampling map and indices are dropped
            img = np.asarray(patch["image"][0]) * 1000.0
            out.append((img[4, 4, 4], float(np.asarray(patch["label"][0])[4, 4, 4])))
        return out

    hard = centres(0, 0, 1)
    assert all(hu >= -500 and lab == 0 for hu, lab in hard)  # dense, not nodule
    assert all(hu == pytest.approx(40, abs=1) for hu, _ in hard)  # the vessel (chest wall excluded)
    mixed = centres(0, 1, 1)  # half nodule, half vessel, never air
    n_nodule = sum(lab == 1 for _, lab in mixed)
    assert 5 <= n_nodule <= 25 and all(lab == 1 or hu == pytest.approx(40, abs=1) for hu, lab in mixed)
    # ratio 0 keeps the plain positive/negative crop (the behaviour of older task files)
    assert all(lab == 1 for _, lab in centres(0, 1, 0, n=5))


def test_foreground_crops_are_shared_equally_between_lesions_of_any_size(tmp_path):
    """A 1.5 mm and a 6 mm nodule in one scan: each is the crop centre about half the time, not in
    proportion to its volume (1 in 50 for the small one), so small nodules get trained on."""
    from medseg.plan import IntensityPlan, Plan
    from medseg.transforms import train_transforms

    shape = (48, 48, 32)
    big, small = _sphere(shape, centre=(14, 14, 14), r=6), _sphere(shape, centre=(34, 34, 16), r=1.5)
    assert big.sum() > 40 * small.sum()
    ct = np.full(shape, -850, np.int16)
    ct[big > 0], ct[small > 0] = 60, 30  # tell the two apart by HU at the crop centre
    _write(tmp_path / "image" / "c.nii.gz", ct)
    _write(tmp_path / "mask" / "c.nii.gz", (big + small).astype(np.uint8))
    plan = Plan(spacing=(1.0, 1.0, 1.0), patch_size=(8, 8, 8),
                intensity=IntensityPlan(clip=(-1000.0, 1000.0), mean=0.0, std=1000.0))
    tf = train_transforms(plan, _task({"neg": 0, "pos": 1, "hard_negative": {"ratio": 1}}))  # no hard negatives in this image: every crop is on a nodule
    tf.set_random_state(seed=5)
    hits = []
    for _ in range(40):
        (patch,) = tf({"image": str(tmp_path / "image" / "c.nii.gz"), "label": str(tmp_path / "mask" / "c.nii.gz")})
        hits.append(round(float(np.asarray(patch["image"][0])[4, 4, 4]) * 1000.0))
    assert set(hits) <= {30, 60}
    assert 10 <= hits.count(30) <= 30


def test_lesion_balanced_indices_leave_one_lesion_and_empty_lists_alone():
    import torch

    from medseg.transforms import LesionBalancedIndicesd

    label = torch.from_numpy(_sphere((16, 16, 16), r=3))[None]
    fg = np.flatnonzero(np.asarray(label[0]))
    tf = LesionBalancedIndicesd("label", "idx")
    out = tf({"label": label, "idx": [np.array([0, 1]), fg]})
    assert np.array_equal(out["idx"][1], fg)
    empty = tf({"label": torch.zeros_like(label), "idx": [np.array([0, 1]), np.array([], dtype=np.int64)]})
    assert empty["idx"][1].size == 0


def test_low_resolution_augmentation_blurs_the_image_and_leaves_the_label(tmp_path):
    """`augmentation.low_resolution`: the image is shrunk and blown back up (a coarser scan's blur),
    the mask stays exact; off (the default for older task files) the patch is untouched."""
    from medseg.plan import IntensityPlan, Plan
    from medseg.transforms import train_transforms

    shape = (16, 16, 16)
    ct = np.where(np.indices(shape).sum(0) % 2 == 0, 200, -800).astype(np.int16)  # finest detail
    label = _sphere(shape, centre=(8, 8, 8), r=4)
    _write(tmp_path / "image" / "c.nii.gz", ct)
    _write(tmp_path / "mask" / "c.nii.gz", label)
    plan = Plan(spacing=(1.0, 1.0, 1.0), patch_size=shape,
                intensity=IntensityPlan(clip=(-1000.0, 1000.0), mean=0.0, std=1000.0))
    item = {"image": str(tmp_path / "image" / "c.nii.gz"), "label": str(tmp_path / "mask" / "c.nii.gz")}
    sampling = {"neg": 0, "pos": 1, "hard_negative": {"ratio": 0}}
    plain_task = _task(sampling)
    low_task = _task(sampling, low_resolution=1.0, low_resolution_zoom=[0.5, 0.5])

    (plain,) = train_transforms(plan, plain_task)(item)
    (low,) = train_transforms(plan, low_task)(item)
    sharp, blurred = np.asarray(plain["image"][0]), np.asarray(low["image"][0])
    assert blurred.shape == sharp.shape
    # a voxel checkerboard: full contrast when sharp, all but gone once halved and restored
    assert np.std(sharp) == pytest.approx(0.5, abs=0.01)
    assert np.std(np.diff(blurred, axis=0)) < 0.5 * np.std(np.diff(sharp, axis=0))
    assert np.array_equal(np.asarray(low["label"][0]), np.asarray(plain["label"][0]))
    assert np.asarray(low["label"][0]).sum() == label.sum()


def test_the_tasks_clip_percentiles_set_the_clip_window(tmp_path):
    """``intensity.percentiles`` reaches the plan: the fingerprint takes those foreground
    percentiles and the clip window starts from them (widened to ``include``)."""
    import dataclasses

    root = tmp_path / "vois"
    rng = np.random.default_rng(0)
    for i in range(2):
        m = _sphere(r=6)
        hu = np.where(m > 0, rng.normal(700, 250, m.shape), -850).astype(np.int16)  # dense: above include
        _write(root / "image" / f"LIDC-IDRI-000{i}_R_1.nii.gz", hu, (0.8, 0.8, 1.5))
        _write(root / "mask" / f"LIDC-IDRI-000{i}_R_1.nii.gz", m, (0.8, 0.8, 1.5))
    cases = read_dataset(root)
    task = load_task("lung_nodule")
    narrow_task = dataclasses.replace(task, intensity=dataclasses.replace(task.intensity, percentiles=(5.0, 95.0)))
    wide_fp = fingerprint_dataset(cases, samples_per_case=2000)
    narrow_fp = fingerprint_dataset(cases, samples_per_case=2000, percentiles=narrow_task.intensity.percentiles)
    assert narrow_fp["foreground"]["clip_percentiles"] == [5.0, 95.0]
    wide, narrow = make_plan(wide_fp, task, "cpu"), make_plan(narrow_fp, narrow_task, "cpu")
    assert narrow.intensity.clip[1] == pytest.approx(narrow_fp["foreground"]["clip_values"][1])
    assert 400 < narrow.intensity.clip[1] < wide.intensity.clip[1] - 100


@pytest.mark.parametrize("hard_ratio", [1, 0])
def test_training_dataset_reads_the_cache_without_copying_it_and_never_writes_into_it(tmp_path, hard_ratio):
    """Draws read the cached case (no per-draw deep copy of a whole scan), the label is cached as uint8
    and drawn as float32, and a patch owns its memory: writing into it in place, as an in-place
    augmentation would, leaves the cache as it was."""
    import torch

    from medseg.data.datasets import Case
    from medseg.plan import IntensityPlan, Plan
    from medseg.training.run import training_dataset

    shape = (40, 40, 24)
    ct = np.full(shape, -850, np.int16)
    ct[:, 10:12, 10:12] = 40  # a vessel: hard negatives exist
    nodule = _sphere(shape, centre=(24, 26, 12), r=4)
    ct[nodule > 0] = 30
    _write(tmp_path / "image" / "c.nii.gz", ct)
    _write(tmp_path / "mask" / "c.nii.gz", nodule)
    case = Case("d/c", str(tmp_path / "image" / "c.nii.gz"), str(tmp_path / "mask" / "c.nii.gz"), "c", "d", "pairs")
    plan = Plan(spacing=(1.0, 1.0, 1.0), patch_size=(8, 8, 8),
                intensity=IntensityPlan(clip=(-1000.0, 1000.0), mean=0.0, std=1000.0))
    ds = training_dataset([case], plan, _task({"neg": 1, "pos": 1, "hard_negative": {"ratio": hard_ratio}}))
    assert ds.copy_cache is False
    cached = ds._cache[0]
    assert cached["label"].dtype == torch.uint8 and cached["image"].dtype == torch.float32  # a quarter of float32
    before = {k: cached[k].clone() for k in ("image", "label")}
    storage = {k: cached[k].untyped_storage().data_ptr() for k in ("image", "label")}
    for _ in range(20):
        (patch,) = ds[0]
        assert patch["label"].dtype == torch.float32 and set(torch.unique(patch["label"]).tolist()) <= {0.0, 1.0}
        for k in ("image", "label"):
            assert patch[k].untyped_storage().data_ptr() != storage[k]
            patch[k].add_(7.0)  # an in-place write into the patch
    for k in ("image", "label"):
        assert torch.equal(cached[k], before[k]), f"the cached {k} changed"
