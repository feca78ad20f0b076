"""``train()``: dataset folders -> fingerprint, plan, split -> trained checkpoint.

Run folder contents: ``task.json``, ``config.json``, ``fingerprint.json``, ``plan.json``,
``splits.json``, ``metrics.csv`` (+ ``tensorboard/``), ``last.pt`` (with training state, for
``--resume``), ``best.pt`` (weights, plan and task only: what ``medseg infer --model`` needs) and
``final.json``. Under torchrun every rank trains; only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medseg.errors import InputError
from medseg.io.atomic import write_json_atomic
from medseg.models.device import resolve_device
from medseg.plan import Plan
from medseg.tasks import TaskConfig, as_task

if TYPE_CHECKING:
    from medseg.training.trainer import TrainConfig

log = logging.getLogger("medseg.training")

#: keyword overrides accepted by :func:`train` (None = use the task/plan default)
OVERRIDES = (
    "patch_size", "batch_size", "filters", "spacing", "lr", "steps_per_epoch", "num_workers", "folds", "seed",
    "res_block", "optimizer", "amp", "val_cases", "cache_rate", "quiet", "tensorboard", "epoch_callback",
    "log_every", "dataset_weights", "init_weights", "norm_name",
)


@dataclass
class _Setup:
    """What a run trains with, from a fresh plan or a resumed run folder."""

    plan: Plan
    task: TaskConfig
    splits: dict[str, Any]
    fold: int
    seed: int
    payload: dict[str, Any] | None = None  #: ``last.pt`` of a resumed run
    init: dict[str, Any] | None = None  #: the checkpoint a fine-tuning run starts from


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def train(
    task: str | os.PathLike[str] | Mapping[str, Any] | TaskConfig,
    data: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    fold: int = 0,
    max_epochs: int | None = None,
    max_time_minutes: float | None = None,
    device: str = "auto",
    resume: bool = False,
    **overrides: Any,
) -> Path:
    """Train a segmentation model; returns the path of the best checkpoint (``best.pt``).

    ``task`` is a task name, YAML path, :class:`~medseg.tasks.TaskConfig` or task dict; ``data``
    one or more dataset folders (layout detected). ``max_time_minutes`` bounds the training loop
    (validation and the final checkpoint included; data preparation excluded). ``resume=True``
    continues from ``out_dir/last.pt`` with the run's saved task, plan and split.
    ``init_weights=CKPT`` starts a new run from a trained model (fine-tuning): its plan and weights
    are taken, the dataset is not re-planned; put the model's ``splits.json`` in ``out_dir`` first
    to keep its validation patients held out. Overrides: see :data:`OVERRIDES`.
    """
    from medseg.data.datasets import read_datasets
    from medseg.data.splits import fold_cases
    from medseg.training.distributed import barrier, cleanup_distributed
    from medseg.training.trainer import Trainer

    ov = _options(overrides)
    task_cfg = as_task(task)
    run_dir = Path(out_dir)
    dev, dist_info = _device(device)
    try:
        _check_run_folder(run_dir, resume)
        cases = read_datasets(data)
        if resume:
            setup = _resumed(run_dir, task_cfg, fold, ov)
        else:
            setup = _planned(run_dir, task_cfg, cases, data, fold, dev, dist_info, ov)
        train_cases, val_cases = fold_cases(cases, setup.splits, setup.fold)
        # recorded in every checkpoint so accuracy can later be measured on held-out patients only
        split_record = {"fold": setup.fold, "val_patients": sorted({c.group for c in val_cases})}
        val_cases = _validation_subset(val_cases, setup.plan, setup.task, dev.type, ov.get("val_cases"), setup.seed)
        if dist_info.is_main:
            plan = setup.plan
            log.info("fold %d: %d training cases, %d validation cases used per epoch; patch %s batch %d "
                     "spacing %s filters %s", setup.fold, len(train_cases), len(val_cases), list(plan.patch_size),
                     plan.batch_size, list(plan.spacing), plan.network.filters)
        bars = _progress_bars(ov) and dist_info.is_main
        train_ds, val_ds = _datasets(train_cases, val_cases, setup.plan, setup.task,
                                     float(ov.get("cache_rate", setup.task.training.cache_rate)), not bars)
        model = _model(setup, train_cases, ov, dist_info.is_main)
        task_cfg = _with_optimizer(setup.task, ov.get("optimizer"))
        config = _train_config(task_cfg, dev.type, ov, max_epochs, max_time_minutes, setup.seed, train_cases)
        trainer = Trainer(model, setup.plan, task_cfg, train_ds, val_ds, run_dir, dev, dist_info, config)
        trainer.split = split_record
        if setup.payload is not None:
            trainer.load_training_state(setup.payload)
            if dist_info.is_main:
                log.info("resumed from %s at epoch %d step %d (%.0fs trained)", run_dir / "last.pt", trainer.epoch,
                         trainer.step, trainer.elapsed)
        result = trainer.fit()
        # every rank leaves its last collective before any tears the group down: a gloo rank
        # destroyed while rank 0 still writes the final files can abort rank 0 at exit
        barrier(dist_info)
        return result
    finally:
        cleanup_distributed()


def _options(overrides: dict[str, Any]) -> dict[str, Any]:
    """The keyword overrides that are set (None = the task's or plan's value); unknown ones fail."""
    unknown = set(overrides) - set(OVERRIDES)
    if unknown:
        raise TypeError(f"unknown training options: {sorted(unknown)}")
    return {k: v for k, v in overrides.items() if v is not None}


def _progress_bars(ov: dict[str, Any]) -> bool:
    return not ov.get("quiet", False) and sys.stderr.isatty()


def _device(device: str) -> tuple[torch.device, Any]:
    """The training device and the DDP setup (each torchrun process takes its local rank's GPU)."""
    from medseg.training.distributed import setup_distributed

    dev = resolve_device(device)
    dist_info = setup_distributed(dev.type)
    if dist_info.enabled and dev.type == "cuda":
        dev = torch.device("cuda", dist_info.local_rank)
    return dev, dist_info


def _check_run_folder(run_dir: Path, resume: bool) -> None:
    last = run_dir / "last.pt"
    if resume and not last.is_file():
        raise InputError(last, "cannot resume: no last.pt in the run folder")
    if not resume and last.is_file():
        raise InputError(run_dir, "run folder already holds a training run (use --resume or another -o)")


def _resumed(run_dir: Path, task: TaskConfig, fold: int, ov: dict[str, Any]) -> _Setup:
    """The saved state of a run: ``last.pt`` (plan, task, training state), split, fold and seed."""
    from medseg.data.splits import load_splits
    from medseg.models import load_checkpoint_dict

    last = run_dir / "last.pt"
    payload = load_checkpoint_dict(last)
    if payload.get("task"):  # the run's own task (an old run's task dict loads too)
        task = TaskConfig.from_dict(payload["task"], last)
    cfg_saved = _read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    return _Setup(plan=Plan.from_dict(payload["plan"]), task=task, splits=load_splits(run_dir / "splits.json"),
                  fold=int(cfg_saved.get("fold", fold)),
                  seed=int(cfg_saved.get("seed", ov.get("seed", task.training.seed))),
                  payload=payload)


def _planned(run_dir: Path, task: TaskConfig, cases: list, data: Any, fold: int, dev: torch.device,
             dist_info: Any, ov: dict[str, Any]) -> _Setup:
    """A new run: rank 0 splits, plans and writes the run folder; the other ranks receive the same."""
    from medseg.data.splits import fold_cases
    from medseg.models import load_checkpoint_dict
    from medseg.training.distributed import broadcast_object

    seed = int(ov.get("seed", task.training.seed))
    folds = int(ov.get("folds", task.training.folds))
    init = load_checkpoint_dict(ov["init_weights"]) if ov.get("init_weights") else None
    plan_d = splits = None
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        splits = _splits(run_dir, cases, folds, seed)
        train_cases, _ = fold_cases(cases, splits, fold)
        if init is not None:
            plan_d = _fine_tune_plan(init, task, ov)
        else:
            plan_d = _fingerprint_plan(run_dir, train_cases, task, dev, ov, seed)
        write_json_atomic(run_dir / "plan.json", plan_d)
        write_json_atomic(run_dir / "task.json", task.to_dict())
        write_json_atomic(run_dir / "config.json", {
            "data": [str(Path(d).resolve()) for d in ([data] if isinstance(data, (str, os.PathLike)) else data)],
            "fold": fold, "folds": folds, "seed": seed, "device": dev.type, "world_size": dist_info.world_size,
            "overrides": {k: v for k, v in ov.items() if k not in ("epoch_callback",)},
        })
    plan_d, splits = broadcast_object((plan_d, splits), dist_info)
    return _Setup(plan=Plan.from_dict(plan_d), task=task, splits=splits, fold=fold, seed=seed, init=init)


def _splits(run_dir: Path, cases: list, folds: int, seed: int) -> dict[str, Any]:
    """A user-provided ``splits.json`` is honoured; else patient-wise folds are made and saved."""
    from medseg.data.splits import load_splits, make_splits, save_splits

    if (run_dir / "splits.json").is_file():
        return load_splits(run_dir / "splits.json")
    splits = make_splits(cases, folds=folds, seed=seed)
    save_splits(splits, run_dir / "splits.json")
    return splits


def _fine_tune_plan(init: dict[str, Any], task: TaskConfig, ov: dict[str, Any]) -> dict[str, Any]:
    """Fine-tuning keeps the model's own plan (spacing, intensities, network); a ``patch_size``
    override is honoured, as the network is fully convolutional.

    How to run the model (overlap, threshold...) is the task's to say, not the weights'; and a
    candidate classifier fits the old weights' probabilities only: new weights need a new
    ``medseg train-fp``, so it is dropped and the confidence cut is the task's.
    """
    plan_d = dict(init["plan"])
    plan_d["inference"] = {**(plan_d.get("inference") or {}), **task.inference.plan_settings(),
                           "candidate_classifier": None}
    if ov.get("batch_size"):
        plan_d["batch_size"] = int(ov["batch_size"])
    if ov.get("patch_size"):
        plan_d["patch_size"] = _fine_tune_patch(ov["patch_size"], plan_d["network"]["strides"], ov["init_weights"])
    if ov.get("norm_name"):
        plan_d["network"] = {**plan_d["network"], "norm_name": str(ov["norm_name"])}
    return plan_d


def _fine_tune_patch(patch: Sequence[int], strides: Sequence[Sequence[int]], model: str | os.PathLike[str]) -> list[int]:
    """A new patch for the same network: fully convolutional, so any multiple of its total stride.

    Training on patches larger than the first run's is how a model is taught the context (and
    the window-placement independence) that larger inference windows need.
    """
    from medseg.data.planning import total_strides

    step = total_strides(strides)
    patch = [int(p) for p in patch]
    if len(patch) != 3 or any(p < s or p % s for p, s in zip(patch, step)):
        raise InputError(Path(model), f"--patch-size {patch} does not fit this network: "
                                      f"it needs multiples of {step}")
    return patch


def _fingerprint_plan(run_dir: Path, train_cases: list, task: TaskConfig, dev: torch.device, ov: dict[str, Any],
                      seed: int) -> dict[str, Any]:
    """Fingerprint the training cases (written to ``fingerprint.json``) and plan for the device."""
    from medseg.data.planning import fingerprint_dataset, make_plan

    log.info("fingerprinting %d training cases", len(train_cases))
    fp = fingerprint_dataset(train_cases, task.intensity.samples_per_case, seed, progress=_progress_bars(ov),
                             percentiles=task.intensity.percentiles)
    write_json_atomic(run_dir / "fingerprint.json", fp)
    mem = torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda" else None
    plan_ov = {k: ov.get(k) for k in ("patch_size", "batch_size", "filters", "spacing", "res_block", "norm_name")}
    return make_plan(fp, task, dev.type, mem, plan_ov).to_dict()


def _model(setup: _Setup, train_cases: list, ov: dict[str, Any], main: bool) -> torch.nn.Module:
    """The network of the plan, seeded; a fine-tuning run loads the initial model's weights."""
    from medseg.models import build_network
    from medseg.models.network import load_weights_across_norms

    torch.manual_seed(setup.seed)
    model = build_network(setup.plan.network)
    init = setup.init
    if init is None:
        return model
    if (init["plan"].get("network") or {}).get("norm_name", "instance") == setup.plan.network.norm_name:
        model.load_state_dict(init["state_dict"])  # same network: every tensor must fit
    else:
        load_weights_across_norms(model, init["state_dict"])
    held_out = set((init.get("split") or {}).get("val_patients") or [])
    leaked = held_out & {c.group for c in train_cases}
    if main:
        log.info("initialised from %s (normalisation: %s)", ov["init_weights"], setup.plan.network.norm_name)
        if leaked:
            log.warning("%d of the initial model's validation patients are training cases here: "
                        "its held-out figures no longer hold (reuse its splits.json)", len(leaked))
    return model


def _with_optimizer(task: TaskConfig, name: str | None) -> TaskConfig:
    """The task with ``optimizer.name`` overridden (``--optimizer``); checkpoints record the result."""
    if name is None:
        return task
    return replace(task, optimizer=replace(task.optimizer, name=name))


def _train_config(task: TaskConfig, device_type: str, ov: dict[str, Any], max_epochs: int | None,
                  max_time_minutes: float | None, seed: int, train_cases: list) -> TrainConfig:
    """The loop's settings: the task's ``training`` section for the device, then the overrides."""
    from medseg.training.trainer import TrainConfig

    tcfg = task.training
    loop = {k: ov[k] for k in ("log_every", "tensorboard", "epoch_callback") if k in ov}
    return TrainConfig(
        max_epochs=int(max_epochs if max_epochs is not None else tcfg.max_epochs),
        steps_per_epoch=int(ov.get("steps_per_epoch", tcfg.steps_per_epoch.for_device(device_type))),
        num_workers=int(ov.get("num_workers", tcfg.num_workers.for_device(device_type))),
        seed=seed,
        amp=str(ov.get("amp", tcfg.amp)),
        max_time_s=float(max_time_minutes) * 60.0 if max_time_minutes else None,
        lr=ov.get("lr"),
        quiet=bool(ov.get("quiet", False)),
        case_weights=case_weights(train_cases, ov.get("dataset_weights")),
        **loop,
    )


def case_weights(cases: Sequence[Any], dataset_weights: Sequence[float] | None) -> list[float] | None:
    """Per-case sampling weights so that dataset ``d`` supplies a ``dataset_weights[d]`` share of patches.

    Without weights every case is drawn equally often, so a few large whole-scan datasets (e.g. phantom
    negatives) next to hundreds of crops would barely be seen.
    """
    if not dataset_weights:
        return None
    names = list(dict.fromkeys(c.dataset for c in cases))
    if len(dataset_weights) != len(names):
        raise InputError(None, f"--dataset-weights needs one weight per --data folder ({len(names)}), "
                               f"got {len(dataset_weights)}")
    if any(w < 0 for w in dataset_weights) or sum(dataset_weights) <= 0:
        raise InputError(None, "--dataset-weights must be non-negative and not all zero")
    share = dict(zip(names, dataset_weights))
    counts = {n: sum(1 for c in cases if c.dataset == n) for n in names}
    return [share[c.dataset] / counts[c.dataset] for c in cases]


def _validation_subset(val_cases: list, plan: Plan, task: TaskConfig, device_type: str,
                       max_cases: int | None, seed: int) -> list:
    """Per-epoch validation cases: skip cases too large for the device budget, cap the count."""
    import numpy as np

    limit = int(max_cases if max_cases is not None else task.validation.max_cases.for_device(device_type))
    max_vox = task.validation.max_voxels.for_device(device_type)
    keep = val_cases
    if max_vox:
        keep = [c for c in val_cases if _resampled_voxels(c, plan.spacing) <= max_vox]
    if limit and len(keep) > limit:
        idx = np.random.default_rng(seed).choice(len(keep), limit, replace=False)
        keep = [keep[i] for i in sorted(idx)]
    return keep


def _resampled_voxels(case: Any, spacing: Sequence[float]) -> float:
    import nibabel as nib
    import numpy as np

    try:
        img = nib.load(case.image)
        zooms = np.abs(np.asarray(img.header.get_zooms()[:3], dtype=float))
        shape = np.asarray(img.shape[:3], dtype=float)
        return float(np.prod(shape * zooms) / np.prod(np.asarray(spacing, dtype=float)))
    except Exception:  # non-NIfTI: keep it (sized at load time)
        return 0.0


def training_dataset(cases: Sequence[Any], plan: Plan, task: TaskConfig | None = None, cache_rate: float = 1.0,
                     quiet: bool = True) -> Any:
    """The training ``CacheDataset``: each case preprocessed once, then random patches per draw.

    ``copy_cache=False``: MONAI's default deep-copies the whole cached case before every draw; for
    whole-scan cases (a 3 mm torso CT is 60 M voxels at the plan spacing) that is 0.1 s a patch on
    2 cores, and it made the real-anatomy recipe's step 2.9x slower. The crop reads the cache and :class:`~medseg.transforms.OwnMemoryd` copies the
    patch alone (``benchmarks/train_throughput.py --draws`` measures both).
    """
    from monai.data import CacheDataset

    from medseg.transforms import train_transforms

    items = [{"image": c.image, "label": c.label, "key": c.key} for c in cases]
    workers = max(1, min(4, (os.cpu_count() or 1)))
    return CacheDataset(items, train_transforms(plan, task), cache_rate=cache_rate, num_workers=workers,
                        progress=not quiet, copy_cache=False)


def _datasets(train_cases: list, val_cases: list, plan: Plan, task: TaskConfig, cache_rate: float,
              quiet: bool) -> tuple[Any, Any]:
    from medseg.training.trainer import ValidationCase

    train_ds = training_dataset(train_cases, plan, task, cache_rate, quiet)
    # validation cases are read as inference reads them: the scan on its own grid, no transforms
    val_ds = [ValidationCase.read(c.image, c.label) for c in val_cases]
    return train_ds, val_ds
