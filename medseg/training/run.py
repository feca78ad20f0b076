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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medseg.errors import InputError
from medseg.io.atomic import write_json_atomic
from medseg.models.device import resolve_device

log = logging.getLogger("medseg.training")

#: keyword overrides accepted by :func:`train` (None = use the task/plan default)
OVERRIDES = (
    "patch_size", "batch_size", "filters", "spacing", "lr", "steps_per_epoch", "num_workers", "folds", "seed",
    "res_block", "optimizer", "amp", "val_cases", "cache_rate", "quiet", "tensorboard", "epoch_callback",
    "log_every", "dataset_weights", "init_weights",
)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def train(
    task: str | os.PathLike[str] | dict[str, Any],
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

    ``task`` is a task name, YAML path or task dict; ``data`` one or more dataset folders (layout
    detected). ``max_time_minutes`` bounds the training loop (validation and the final checkpoint
    included; data preparation excluded). ``resume=True`` continues from ``out_dir/last.pt`` with
    the run's saved plan and split. ``init_weights=CKPT`` starts a new run from a trained model
    (fine-tuning): its plan and weights are taken, the dataset is not re-planned; put the model's
    ``splits.json`` in ``out_dir`` first to keep its validation patients held out. Overrides: see
    :data:`OVERRIDES`.
    """
    from medseg.data.datasets import read_datasets
    from medseg.data.planning import fingerprint_dataset, make_plan
    from medseg.data.splits import fold_cases, load_splits, make_splits, save_splits
    from medseg.models import build_network, load_checkpoint_dict
    from medseg.plan import Plan
    from medseg.tasks import device_value, load_task
    from medseg.training.distributed import broadcast_object, cleanup_distributed, setup_distributed
    from medseg.training.trainer import TrainConfig, Trainer

    unknown = set(overrides) - set(OVERRIDES)
    if unknown:
        raise TypeError(f"unknown training options: {sorted(unknown)}")
    ov = {k: v for k, v in overrides.items() if v is not None}
    task_dict = dict(task) if isinstance(task, dict) else load_task(task)
    run_dir = Path(out_dir)
    dev = resolve_device(device)
    dist_info = setup_distributed(dev.type)
    if dist_info.enabled and dev.type == "cuda":
        dev = torch.device("cuda", dist_info.local_rank)
    main = dist_info.is_main
    quiet = bool(ov.get("quiet", False))
    bars = not quiet and sys.stderr.isatty()
    tcfg = task_dict.get("training", {})
    seed = int(ov.get("seed", tcfg.get("seed", 12345)))
    folds = int(ov.get("folds", tcfg.get("folds", 5)))

    try:
        last = run_dir / "last.pt"
        if resume and not last.is_file():
            raise InputError(last, "cannot resume: no last.pt in the run folder")
        if not resume and last.is_file():
            raise InputError(run_dir, "run folder already holds a training run (use --resume or another -o)")

        cases = read_datasets(data)
        payload = init = None
        if ov.get("init_weights") and not resume:
            init = load_checkpoint_dict(ov["init_weights"])
        if resume:
            payload = load_checkpoint_dict(last)
            plan = Plan.from_dict(payload["plan"])
            task_dict = payload["task"] or task_dict
            splits = load_splits(run_dir / "splits.json")
            cfg_saved = _read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
            fold = int(cfg_saved.get("fold", fold))
            seed = int(cfg_saved.get("seed", seed))
        else:
            # rank 0 plans and splits; the others receive the identical objects
            plan_d = splits = None
            if main:
                run_dir.mkdir(parents=True, exist_ok=True)
                if (run_dir / "splits.json").is_file():  # a user-provided split is honoured
                    splits = load_splits(run_dir / "splits.json")
                else:
                    splits = make_splits(cases, folds=folds, seed=seed)
                    save_splits(splits, run_dir / "splits.json")
                train_cases, _ = fold_cases(cases, splits, fold)
                if init is not None:  # fine-tuning: the model's own plan (spacing, intensities, network)
                    plan_d = dict(init["plan"])
                    # how to run the model is the task's to say (overlap, threshold...), not the weights'
                    inf = {k: v for k, v in (task_dict.get("inference") or {}).items()
                           if k in ("overlap", "blend_mode", "sw_batch_size", "threshold")}
                    plan_d["inference"] = {**(plan_d.get("inference") or {}), **inf}
                    # a candidate classifier and its cut fit the old weights' probabilities only:
                    # new weights need a new `medseg train-fp`
                    plan_d["inference"]["candidate_classifier"] = None
                    plan_d["inference"]["min_confidence"] = 0.0
                    if ov.get("batch_size"):
                        plan_d["batch_size"] = int(ov["batch_size"])
                else:
                    int_cfg = task_dict.get("intensity", {})
                    log.info("fingerprinting %d training cases", len(train_cases))
                    fp = fingerprint_dataset(train_cases, int(int_cfg.get("samples_per_case", 10000)), seed,
                                             progress=bars)
                    write_json_atomic(run_dir / "fingerprint.json", fp)
                    mem = torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda" else None
                    plan_obj = make_plan(fp, task_dict, dev.type, mem, {
                        k: ov.get(k) for k in ("patch_size", "batch_size", "filters", "spacing", "res_block")})
                    plan_d = plan_obj.to_dict()
                write_json_atomic(run_dir / "plan.json", plan_d)
                write_json_atomic(run_dir / "task.json", task_dict)
                write_json_atomic(run_dir / "config.json", {
                    "data": [str(Path(d).resolve()) for d in ([data] if isinstance(data, (str, os.PathLike)) else data)],
                    "fold": fold, "folds": folds, "seed": seed, "device": dev.type,
                    "world_size": dist_info.world_size,
                    "overrides": {k: v for k, v in ov.items() if k not in ("epoch_callback",)},
                })
            plan_d, splits = broadcast_object((plan_d, splits), dist_info)
            plan = Plan.from_dict(plan_d)

        train_cases, val_cases = fold_cases(cases, splits, fold)
        # recorded in every checkpoint so accuracy can later be measured on held-out patients only
        split_record = {"fold": fold, "val_patients": sorted({c.group for c in val_cases})}
        val_cases = _validation_subset(val_cases, plan, task_dict, dev.type, ov.get("val_cases"), seed)
        if main:
            log.info("fold %d: %d training cases, %d validation cases used per epoch; patch %s batch %d "
                     "spacing %s filters %s", fold, len(train_cases), len(val_cases), list(plan.patch_size),
                     plan.batch_size, list(plan.spacing), plan.network.filters)

        train_ds, val_ds = _datasets(train_cases, val_cases, plan, task_dict,
                                     float(ov.get("cache_rate", tcfg.get("cache_rate", 1.0))), not bars or not main)
        torch.manual_seed(seed)
        model = build_network(plan.network)
        if init is not None:
            model.load_state_dict(init["state_dict"])
            held_out = set((init.get("split") or {}).get("val_patients") or [])
            leaked = held_out & {c.group for c in train_cases}
            if main:
                log.info("initialised from %s", ov["init_weights"])
                if leaked:
                    log.warning("%d of the initial model's validation patients are training cases here: "
                                "its held-out figures no longer hold (reuse its splits.json)", len(leaked))
        opt_cfg = dict(task_dict.get("optimizer", {}))
        if "optimizer" in ov:
            opt_cfg["name"] = ov["optimizer"]
        task_dict = {**task_dict, "optimizer": opt_cfg}
        config = TrainConfig(
            max_epochs=int(max_epochs if max_epochs is not None else tcfg.get("max_epochs", 1000)),
            max_time_s=float(max_time_minutes) * 60.0 if max_time_minutes else None,
            steps_per_epoch=int(ov.get("steps_per_epoch", device_value(tcfg.get("steps_per_epoch", 50), dev.type))),
            num_workers=int(ov.get("num_workers", device_value(tcfg.get("num_workers", 0), dev.type))),
            seed=seed,
            amp=str(ov.get("amp", tcfg.get("amp", "auto"))),
            lr=ov.get("lr"),
            grad_clip=float(opt_cfg.get("grad_clip", 12.0)),
            log_every=int(ov.get("log_every", 5)),
            quiet=quiet,
            tensorboard=bool(ov.get("tensorboard", True)),
            epoch_callback=ov.get("epoch_callback"),
            case_weights=case_weights(train_cases, ov.get("dataset_weights")),
        )
        trainer = Trainer(model, plan, task_dict, train_ds, val_ds, run_dir, dev, dist_info, config)
        trainer.split = split_record
        if payload is not None:
            trainer.load_training_state(payload)
            if main:
                log.info("resumed from %s at epoch %d step %d (%.0fs trained)", last, trainer.epoch,
                         trainer.step, trainer.elapsed)
        return trainer.fit()
    finally:
        cleanup_distributed()


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


def _validation_subset(val_cases: list, plan: Any, task: dict[str, Any], device_type: str,
                       max_cases: int | None, seed: int) -> list:
    """Per-epoch validation cases: skip cases too large for the device budget, cap the count."""
    import numpy as np

    from medseg.tasks import device_value

    vcfg = task.get("validation", {})
    limit = int(max_cases if max_cases is not None else device_value(vcfg.get("max_cases", 0), device_type) or 0)
    max_vox = int(device_value(vcfg.get("max_voxels", 0), device_type) or 0)
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


def _datasets(train_cases: list, val_cases: list, plan: Any, task: dict[str, Any], cache_rate: float,
              quiet: bool) -> tuple[Any, Any]:
    from monai.data import CacheDataset

    from medseg.training.trainer import ValidationCase
    from medseg.transforms import train_transforms

    def items(cs: list) -> list[dict[str, str]]:
        return [{"image": c.image, "label": c.label, "key": c.key} for c in cs]

    workers = max(1, min(4, (os.cpu_count() or 1)))
    train_ds = CacheDataset(items(train_cases), train_transforms(plan, task), cache_rate=cache_rate,
                            num_workers=workers, progress=not quiet)
    # validation cases are read as inference reads them: the scan on its own grid, no transforms
    val_ds = [ValidationCase.read(c.image, c.label) for c in val_cases]
    return train_ds, val_ds
