"""The task as typed data: loading, merging, strict checking, device values, round trips, old files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from medseg.errors import InputError
from medseg.tasks import (
    AugmentationTask,
    LossTask,
    OptimizerTask,
    PerDevice,
    TaskConfig,
    TrainingTask,
    ValidationTask,
    as_task,
    load_task,
)


def _yaml(tmp_path: Path, text: str, name: str = "my_task.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _fingerprint() -> dict:
    per_case = {f"c{i}": {"shape": [200, 200, 100], "spacing": [0.7, 0.7, 2.0], "foreground_voxels": 50}
                for i in range(3)}
    fg = {"percentile_00_5": -800.0, "percentile_99_5": 200.0, "mean": -100.0, "std": 300.0}
    return {"cases": 3, "median_spacing": [0.7, 0.7, 2.0], "median_shape": [200, 200, 100],
            "foreground": fg, "per_case": per_case}


# --- loading and round trips ----------------------------------------------------------------------


def test_bundled_task_is_typed_and_round_trips_through_a_plain_dict():
    task = load_task("lung_nodule")
    assert isinstance(task, TaskConfig) and task.name == "lung_nodule"
    assert task.training.steps_per_epoch == PerDevice(cpu=50, cuda=250)
    assert task.patch.min == (48, 48, 16) and task.labels == {"background": 0, "nodule": 1}
    data = task.to_dict()
    assert data["patch"]["min"] == [48, 48, 16] and data["training"]["steps_per_epoch"] == {"cpu": 50, "cuda": 250}
    again = TaskConfig.from_dict(json.loads(json.dumps(data)))  # as a run folder's task.json stores it
    assert again == task


def test_bundled_yaml_documents_exactly_the_dataclass_defaults():
    """The YAML repeats the defaults for the reader; the dataclasses are their one definition."""
    task = load_task("lung_nodule")
    assert task == TaskConfig(description=task.description)
    assert TaskConfig.from_dict({}) == TaskConfig()


def test_a_user_file_overriding_one_value_keeps_the_rest_of_the_bundled_task(tmp_path):
    bundled = load_task("lung_nodule")
    task = load_task(_yaml(tmp_path, "augmentation:\n  flip: 0.1\ntraining:\n  steps_per_epoch: {cuda: 400}\n"))
    assert task.augmentation.flip == 0.1 and task.augmentation.rot90 == bundled.augmentation.rot90
    # a per-device value is merged key by key: cpu stays the bundled one
    assert task.training.steps_per_epoch == PerDevice(cpu=50, cuda=400)
    expected = replace(bundled, augmentation=replace(bundled.augmentation, flip=0.1),
                       training=replace(bundled.training, steps_per_epoch=PerDevice(50, 400)))
    assert task == expected


def test_base_key_and_label_rules(tmp_path):
    task = load_task(_yaml(tmp_path, "base: lung_nodule\nlabels: {background: 0, tumour: 1, cyst: 2}\n"))
    assert task.labels == {"background": 0, "tumour": 1, "cyst": 2}  # replaced, not merged with nodule
    with pytest.raises(InputError, match="unknown base task 'nope'"):
        load_task(_yaml(tmp_path, "base: nope\n", "b.yaml"))
    with pytest.raises(InputError, match="include background 0"):
        load_task(_yaml(tmp_path, "labels: {tumour: 1}\n", "c.yaml"))
    with pytest.raises(InputError, match=r"'labels\.tumour' must be an integer"):
        load_task(_yaml(tmp_path, "labels: {background: 0, tumour: one}\n", "d.yaml"))


# --- strict checking ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "key", "known"), [
    ("epochs: 3\n", "epochs", "name, description, modality, labels"),
    ("augmentation:\n  flp: 0.5\n", "augmentation.flp", "flip, rot90, affine"),
    ("sampling:\n  hard_negative:\n    ratoi: 2\n", "sampling.hard_negative.ratoi", "ratio, min_hu"),
])
def test_unknown_keys_fail_naming_the_file_and_the_key_path(tmp_path, text, key, known):
    path = _yaml(tmp_path, text)
    with pytest.raises(InputError) as err:
        load_task(path)
    message = str(err.value)
    assert err.value.path == str(path) and message.startswith(str(path))
    assert f"unknown task setting '{key}'" in message and f"known: {known}" in message
    assert "\n" not in message


def test_a_typo_gets_a_suggestion(tmp_path):
    with pytest.raises(InputError, match="did you mean 'flip'"):
        load_task(_yaml(tmp_path, "augmentation:\n  flp: 0.5\n"))


@pytest.mark.parametrize(("text", "problem"), [
    ("optimizer:\n  lr: fast\n", "'optimizer.lr' must be a number, got 'fast'"),
    ("training:\n  folds: 2.5\n", "'training.folds' must be an integer, got 2.5"),
    ("training:\n  amp: fp8\n", "'training.amp' must be one of auto, bf16, fp16, none, got 'fp8'"),
    ("network:\n  res_block: 'yes'\n", "'network.res_block' must be true or false"),
    ("patch:\n  min: [48, 48]\n", "'patch.min' must be a list of 3 integers"),
    ("patch:\n  min: [48, 48, x]\n", "'patch.min[2]' must be an integer"),
    ("augmentation: 0.5\n", "'augmentation' must be a mapping of settings"),
    ("training:\n  steps_per_epoch: {cpu: 10, tpu: 5}\n", "'training.steps_per_epoch' must be a number or a"),
    ("training:\n  steps_per_epoch: lots\n", "'training.steps_per_epoch' must be a number or a"),
    ("loss:\n  deep_supervision_weights: []\n", "'loss.deep_supervision_weights' must be a non-empty list"),
])
def test_wrong_types_fail_with_a_clear_message(tmp_path, text, problem):
    path = _yaml(tmp_path, text)
    with pytest.raises(InputError) as err:
        load_task(path)
    assert err.value.path == str(path) and problem in str(err.value)


def test_numbers_are_converted_to_the_field_types(tmp_path):
    # PyYAML reads 3e-5 (no dot) as a string: taken as the number it spells
    task = load_task(_yaml(tmp_path, "optimizer:\n  weight_decay: 3e-5\nsampling:\n  pos: 3\npatch:\n  min: [32.0, 32, 16]\n"))
    assert task.optimizer.weight_decay == pytest.approx(3e-5) and isinstance(task.optimizer.weight_decay, float)
    assert task.sampling.pos == 3.0 and isinstance(task.sampling.pos, float)
    assert task.patch.min == (32, 32, 16) and all(isinstance(v, int) for v in task.patch.min)


# --- device values --------------------------------------------------------------------------------


def test_per_device_values_resolve_by_device_and_accept_a_plain_number(tmp_path):
    value = PerDevice(cpu=50, cuda=250)
    assert value.for_device("cpu") == 50 and value.for_device("cuda") == 250 and value.for_device("mps") == 50
    assert PerDevice.of(7) == PerDevice(7, 7) and PerDevice.of({"cpu": 3}) == PerDevice(3, 3)
    assert PerDevice.of({"cuda": 9}) == PerDevice(9, 9)
    task = load_task(_yaml(tmp_path, "training:\n  steps_per_epoch: 12\n  num_workers: {cpu: 0, cuda: 4}\n"))
    assert task.training.steps_per_epoch == PerDevice(12, 12)
    assert task.training.num_workers.for_device("cuda") == 4 and task.training.num_workers.for_device("cpu") == 0


def test_the_training_loop_takes_the_device_value_of_the_task():
    from medseg.training.run import _train_config

    task = TaskConfig.from_dict({"training": {"steps_per_epoch": {"cpu": 5, "cuda": 60}, "num_workers": 2,
                                              "max_epochs": 9, "amp": "bf16"}})
    cpu = _train_config(task, "cpu", {}, None, None, seed=1, train_cases=[])
    gpu = _train_config(task, "cuda", {"num_workers": 0}, 3, None, seed=1, train_cases=[])
    assert (cpu.steps_per_epoch, cpu.num_workers, cpu.max_epochs, cpu.amp) == (5, 2, 9, "bf16")
    assert (gpu.steps_per_epoch, gpu.num_workers, gpu.max_epochs) == (60, 0, 3)  # overrides win


# --- one place per default ------------------------------------------------------------------------


def test_a_task_without_a_setting_gets_the_dataclass_default_in_every_consumer():
    """Settings absent from a task mapping come from the dataclass defaults, and the consumers use
    them (these are settings whose old hard-coded fallbacks in run.py disagreed with the task)."""
    from medseg.training.run import _train_config, _validation_subset

    task = as_task({"name": "minimal"})
    config = _train_config(task, "cpu", {}, None, None, seed=1, train_cases=[])
    assert config.num_workers == TrainingTask().num_workers.cpu == 1  # run.py used to fall back to 0
    assert config.amp == TrainingTask().amp and config.max_epochs == TrainingTask().max_epochs
    cases = [SimpleNamespace(image=f"case{i}.mha") for i in range(60)]  # not NIfTI: sized at load time
    kept = _validation_subset(cases, SimpleNamespace(spacing=(1.0, 1.0, 1.0)), task, "cpu", None, seed=0)
    assert len(kept) == ValidationTask().max_cases.cpu == 40  # run.py used to fall back to 0 (= all)
    assert len(_validation_subset(cases, SimpleNamespace(spacing=(1.0, 1.0, 1.0)), task, "cuda", None, 0)) == 60


def test_train_transforms_without_a_task_use_the_task_defaults():
    from monai.transforms import RandCropByLabelClassesd, RandFlipd

    from medseg.plan import Plan
    from medseg.transforms import train_transforms

    plan = Plan(patch_size=(16, 16, 16))
    names = [type(t).__name__ for t in train_transforms(plan).transforms]
    default_names = [type(t).__name__ for t in train_transforms(plan, TaskConfig()).transforms]
    assert names == default_names
    flips = [t for t in train_transforms(plan).transforms if isinstance(t, RandFlipd)]
    assert len(flips) == 3 and flips[0].prob == AugmentationTask().flip
    assert any(isinstance(t, RandCropByLabelClassesd) for t in train_transforms(plan).transforms)  # hard negatives on
    off = TaskConfig.from_dict({"augmentation": {"flip": 0.0}, "sampling": {"hard_negative": {"ratio": 0}}})
    off_names = [type(t).__name__ for t in train_transforms(plan, off).transforms]
    assert "RandFlipd" not in off_names and "RandCropByPosNegLabeld" in off_names


def test_planning_reads_every_setting_from_the_task():
    from medseg.data.planning import make_plan

    fp = _fingerprint()
    task = TaskConfig.from_dict({
        "labels": {"background": 0, "solid": 1, "ground_glass": 2},
        "spacing": {"min": [0.8, 0.8, 1.0], "max": [1.0, 1.0, 1.5]},
        "patch": {"min": [32, 32, 16], "max": [64, 64, 32], "batch_size": {"cpu": 3, "cuda": 5}},
        "network": {"filters_base": 8, "res_block": True, "norm_name": "batch"},
        "intensity": {"include": [-1100.0, 500.0]},
        "inference": {"overlap": 0.25, "min_confidence": 0.4, "threshold": 0.6},
    })
    plan = make_plan(fp, task, "cpu")
    assert plan.spacing == (0.8, 0.8, 1.5) and plan.batch_size == 3
    assert all(lo <= p <= hi for p, lo, hi in zip(plan.patch_size, (32, 32, 16), (64, 64, 32)))
    assert plan.network.filters[0] == 8 and plan.network.res_block and plan.network.norm_name == "batch"
    assert plan.network.out_channels == 3 and plan.labels == task.labels
    assert plan.intensity.clip == (-1100.0, 500.0)
    assert (plan.inference.overlap, plan.inference.min_confidence, plan.inference.threshold) == (0.25, 0.4, 0.6)
    # a mapping without any of these gives the plan of the bundled task
    assert make_plan(fp, TaskConfig.from_dict({}), "cpu").to_dict() == make_plan(fp, load_task(), "cpu").to_dict()


def test_loss_and_optimizer_follow_their_sections():
    import torch

    from medseg.training.losses import build_loss
    from medseg.training.optim import build_optimizer

    loss = build_loss(LossTask(deep_supervision_weights=(3.0, 1.0)))
    assert loss.head_weights(2) == [0.75, 0.25]
    assert build_loss().weights == list(LossTask().deep_supervision_weights)
    model = torch.nn.Linear(2, 2)
    sgd = build_optimizer(model, OptimizerTask(name="sgd", lr=0.02, momentum=0.9, weight_decay=0.0))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["lr"] == 0.02 and sgd.param_groups[0]["momentum"] == 0.9
    assert build_optimizer(model, OptimizerTask(), lr=0.5).param_groups[0]["lr"] == 0.5


# --- old run folders ------------------------------------------------------------------------------


def test_an_old_task_dict_from_before_typed_tasks_still_loads(tmp_path):
    """Task dicts written before these dataclasses (v2 of the bundled model had one: no
    ``augmentation.low_resolution``, no ``inference.min_confidence``) still load. The bundled
    checkpoint's task dict, with the keys added since taken out, stands in for such a file."""
    import torch

    from medseg.models.checkpoint import BUNDLED_MODEL

    if not BUNDLED_MODEL.is_file():
        pytest.skip("no bundled model")
    old = torch.load(BUNDLED_MODEL, weights_only=True)["task"]
    old["augmentation"].pop("low_resolution", None)
    old["inference"].pop("min_confidence", None)
    old["training"]["amp"] = "bf16"  # a value of its own, not the default
    assert TrainingTask().amp != "bf16"
    (tmp_path / "task.json").write_text(json.dumps(old))
    task = as_task(json.loads((tmp_path / "task.json").read_text()))
    assert task.training.amp == old["training"]["amp"] == "bf16"  # its own values are kept
    assert task.validation.max_voxels == PerDevice(cpu=3_000_000, cuda=0)
    assert task.augmentation.low_resolution == AugmentationTask().low_resolution  # missing: the default
    assert TaskConfig.from_dict(task.to_dict()) == task


def test_a_bad_task_in_a_run_folder_names_the_checkpoint(tmp_path):
    with pytest.raises(InputError) as err:
        TaskConfig.from_dict({"training": {"epochs": 3}}, tmp_path / "last.pt")
    assert err.value.path == str(tmp_path / "last.pt") and "'training.epochs'" in str(err.value)
