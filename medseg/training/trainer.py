"""The training loop: epochs of fixed step count, validation, checkpoints, resume, DDP."""

from __future__ import annotations

import hashlib
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.io.volume import Volume
from medseg.models import save_checkpoint
from medseg.plan import Plan
from medseg.tasks import TaskConfig
from medseg.training.distributed import DistInfo, all_reduce_sum, gather_objects
from medseg.training.losses import build_loss
from medseg.training.metrics import MetricsLogger
from medseg.training.optim import WarmupCosine, build_optimizer

log = logging.getLogger("medseg.training")


@dataclass
class ValidationCase:
    """A validation case as inference sees it: the scan on its own grid and its foreground."""

    volume: Volume
    truth: np.ndarray  # bool, on the volume's grid

    @classmethod
    def read(cls, image: str, label: str) -> ValidationCase:
        from medseg.io import read_volume

        volume = read_volume(image)
        return cls(volume, np.asarray(read_volume(label, reference=volume).array) > 0)


@dataclass
class TrainConfig:
    """How this run trains: the task's ``training`` settings resolved for the device, plus overrides.

    The task-derived values have no defaults here: :func:`medseg.training.run.train` fills them
    from the :class:`~medseg.tasks.TaskConfig`, the one place their defaults live.
    """

    max_epochs: int
    steps_per_epoch: int
    num_workers: int
    seed: int
    amp: str  # auto | bf16 | fp16 | none: autocast precision (bf16 on CPUs that run it natively)
    max_time_s: float | None = None
    #: peak learning rate overriding the task's ``optimizer.lr``
    lr: float | None = None
    log_every: int = 5
    quiet: bool = False
    tensorboard: bool = True
    #: called after each epoch's checkpoint with (epoch, row); returning True stops training
    epoch_callback: Callable[[int, dict[str, Any]], bool] | None = None
    #: per-training-case sampling weights (see ``--dataset-weights``); None = uniform over cases
    case_weights: list[float] | None = None


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def state_hash(model: torch.nn.Module) -> str:
    """SHA-256 of the weights (DDP wrapper ignored): equal on all ranks of a correct DDP run."""
    module = model.module if hasattr(model, "module") else model
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


class EpochSampler(torch.utils.data.Sampler):
    """``num_samples`` indices per rank per epoch, from one seeded permutation sliced by rank.

    Like ``DistributedSampler`` (ranks see disjoint cases) but with a fixed epoch length in steps
    independent of the dataset size, and the dataset repeated as often as needed.
    """

    def __init__(self, n: int, num_samples: int, seed: int, rank: int = 0, world_size: int = 1,
                 weights: Sequence[float] | None = None) -> None:
        self.n, self.num_samples, self.seed, self.rank, self.world = n, num_samples, seed, rank, world_size
        self.epoch = 0
        #: per-case sampling weights (drawn with replacement); None = every case equally often
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):  # noqa: ANN204
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        need = self.num_samples * self.world
        if self.weights is not None:
            idx = torch.multinomial(self.weights, need, replacement=True, generator=g)
            return iter(idx[self.rank :: self.world].tolist())
        reps = math.ceil(need / self.n)
        idx = torch.cat([torch.randperm(self.n, generator=g) for _ in range(reps)])[:need]
        return iter(idx[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return self.num_samples


class Trainer:
    """Runs the optimisation; rank 0 writes ``last.pt``, ``best.pt`` and ``metrics.csv``."""

    def __init__(
        self, model: torch.nn.Module, plan: Plan, task: TaskConfig, train_ds: torch.utils.data.Dataset,
        val_ds: Sequence[ValidationCase], run_dir: Path, device: torch.device, dist_info: DistInfo,
        config: TrainConfig,
    ) -> None:
        self.plan, self.task, self.run_dir, self.device = plan, task, Path(run_dir), device
        self.dist, self.cfg = dist_info, config
        self.train_ds, self.val_ds = train_ds, val_ds
        self.model = model.to(device)
        if dist_info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.loss_fn = build_loss(task.loss)
        opt = task.optimizer
        self.optimizer = build_optimizer(self.model, opt, config.lr)
        total = config.max_epochs * config.steps_per_epoch if config.max_epochs else None
        self.scheduler = WarmupCosine(self.optimizer, opt.warmup_steps, total, config.max_time_s, opt.min_lr_fraction)
        from medseg.models.precision import resolve_precision

        self.amp_dtype = resolve_precision("fp32" if config.amp == "none" else config.amp, device)
        # fp16 needs loss scaling; bf16 has fp32's range and does not
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.epoch, self.step, self.elapsed = 0, 0, 0.0
        self.best_metric, self.best_epoch = -math.inf, -1
        self.rows: list[dict[str, Any]] = []
        #: fold and held-out patient groups, stored in checkpoints (set by ``train``)
        self.split: dict[str, Any] = {}

    # -- state -----------------------------------------------------------------------------
    @property
    def module(self) -> torch.nn.Module:
        return self.model.module if hasattr(self.model, "module") else self.model

    def training_state(self) -> dict[str, Any]:
        """Everything ``--resume`` needs, as tensors and plain types (``weights_only`` safe)."""
        return {
            "epoch": self.epoch, "step": self.step, "elapsed_s": self.elapsed,
            "best_metric": self.best_metric if math.isfinite(self.best_metric) else None,
            "best_epoch": self.best_epoch,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": _rng_state(), "rows": self.rows,
            "seed": self.cfg.seed, "world_size": self.dist.world_size,
        }

    def load_training_state(self, payload: dict[str, Any]) -> None:
        self.module.load_state_dict(payload["state_dict"])
        st = payload["training"]
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        # a resumed run may be given a new budget (more epochs or minutes): stretch the schedule to it
        total = self.cfg.max_epochs * self.cfg.steps_per_epoch if self.cfg.max_epochs else None
        self.scheduler.total_steps, self.scheduler.max_time_s = total, self.cfg.max_time_s
        if st["scaler"]:
            self.scaler.load_state_dict(st["scaler"])
        self.epoch, self.step, self.elapsed = int(st["epoch"]), int(st["step"]), float(st["elapsed_s"])
        self.best_metric = st["best_metric"] if st["best_metric"] is not None else -math.inf
        self.best_epoch = int(st["best_epoch"])
        self.rows = list(st["rows"])
        _set_rng_state(st["rng"])

    # -- loop ------------------------------------------------------------------------------
    def _seed_epoch(self, epoch: int) -> None:
        # Reseeding from (seed, epoch, rank) makes each epoch reproducible on its own, which is
        # what lets a resumed run continue bit-identically from an epoch boundary.
        s = (self.cfg.seed * 7919 + epoch * 104729 + self.dist.rank * 15485863) % (2**31)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)
        transform = getattr(self.train_ds, "transform", None)
        if transform is not None and hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=s)

    def _loader(self, epoch: int) -> torch.utils.data.DataLoader:
        from monai.data import DataLoader

        sampler = EpochSampler(len(self.train_ds), self.cfg.steps_per_epoch * self.plan.batch_size,
                               self.cfg.seed, self.dist.rank, self.dist.world_size, self.cfg.case_weights)
        sampler.set_epoch(epoch)
        g = torch.Generator().manual_seed(self.cfg.seed + epoch)
        return DataLoader(self.train_ds, batch_size=self.plan.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.cfg.num_workers, generator=g,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _autocast(self):  # noqa: ANN202
        from medseg.models.precision import autocast

        return autocast(self.device, self.amp_dtype)

    def _agree(self, flag: bool) -> bool:
        """True on every rank if any rank says so (time-limit decisions must not diverge)."""
        return all_reduce_sum([float(flag)], self.dist, self.device)[0] > 0

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        image = _plain(batch["image"]).to(self.device, non_blocking=True)
        label = _plain(batch["label"]).to(self.device, non_blocking=True)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.model(image)
        loss = self.loss_fn(out, label)
        self.scaler.scale(loss).backward()
        if self.task.optimizer.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.task.optimizer.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def _validation_segmenter(self):  # noqa: ANN202
        """The shipped inference path (crop mode, no CRF) around the network being trained."""
        from medseg.inference.pipeline import InferenceSettings, Segmenter
        from medseg.inference.predictor import Predictor
        from medseg.models.precision import precision_name

        predictor = Predictor(self.module, self.plan, device=self.device, precision=precision_name(self.amp_dtype))
        return Segmenter(InferenceSettings(lung_mask=False, crf=False, masses=False, quiet=True, preview=False),
                         predictor=predictor)

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean foreground Dice over this rank's share of the validation cases (all ranks).

        Each case goes through ``Segmenter.segment``, the path ``medseg infer --crop-mode`` and
        ``benchmarks/lidc_accuracy.py`` take, and is scored on its own grid: the Dice printed here
        is the Dice of what ships."""
        segmenter = self._validation_segmenter()
        threshold = self.plan.inference.threshold
        total, count = 0.0, 0
        for i in range(self.dist.rank, len(self.val_ds), self.dist.world_size):
            case = self.val_ds[i]
            if not case.truth.any():
                continue  # Dice is undefined without foreground: such cases do not count
            pred = segmenter.segment(case.volume, keep_probabilities=True).probability_full() >= threshold
            total += 2.0 * float((pred & case.truth).sum()) / float(pred.sum() + case.truth.sum())
            count += 1
        self.module.train()
        total, count = all_reduce_sum([total, float(count)], self.dist, self.device)
        return total / count if count else None

    @torch.no_grad()
    def _estimate_validation_s(self) -> float:
        """Seconds this rank's validation pass + checkpoint should take: windows x timed window."""
        share = range(self.dist.rank, len(self.val_ds), self.dist.world_size)
        roi = np.array(self.plan.patch_size)
        inf = self.plan.inference
        predictor = self._validation_segmenter().predictor
        windows = sum(predictor.count_windows(self.val_ds[i].volume, None) for i in share)
        if not windows:
            return 2.0
        net = self.module
        net.eval()
        x = torch.zeros((inf.sw_batch_size, 1, *roi.tolist()), device=self.device)
        per_batch = 0.0
        for _ in range(2):  # the first call pays one-off allocation costs: time the second
            t = time.monotonic()
            with self._autocast():
                net(x)
            per_batch = time.monotonic() - t
        est = 1.3 * per_batch * math.ceil(windows / inf.sw_batch_size) + 2.0
        return max(all_reduce_sum([est], self.dist, self.device)[0] / self.dist.world_size, est)

    def _save(self, name: str, training: bool, metrics: dict[str, Any]) -> None:
        extra: dict[str, Any] = {"metrics": metrics, "split": self.split}
        if training:
            extra["training"] = self.training_state()
        save_checkpoint(self.run_dir / name, self.model, self.plan, self.task.to_dict(), extra)

    def fit(self) -> Path:
        """Train until ``max_epochs`` or the time budget; returns the best checkpoint's path."""
        cfg = self.cfg
        main = self.dist.is_main
        logger = MetricsLogger(self.run_dir, self.rows, tensorboard=cfg.tensorboard) if main else None
        clock = _Clock(t0=time.monotonic() - self.elapsed)
        # time kept free for the final validation + checkpoint: estimated from one validation
        # forward pass now, then measured after every validation
        clock.reserve = self._estimate_validation_s() if cfg.max_time_s else 0.0
        if cfg.max_time_s and main:
            log.info("time budget %.0fs; %.0fs kept for validation + checkpoint", cfg.max_time_s, clock.reserve)
        stop = self.epoch >= cfg.max_epochs
        if stop and main:
            log.info("nothing to do: epoch %d already reached max_epochs %d", self.epoch, cfg.max_epochs)
        while not stop:
            epoch = self.epoch
            losses, out_of_time = self._train_epoch(epoch, clock)
            t_val = time.monotonic()
            row = self._end_epoch(epoch, losses, clock, logger)
            # measured validation + checkpoint time, with margin, is what the time budget keeps free
            clock.reserve = 1.5 * (time.monotonic() - t_val) + 1.0
            stop = self._agree(self._should_stop(epoch, row, clock) or out_of_time)  # the callback runs every epoch
        self._write_final()
        if logger is not None:
            logger.close()
        return self.run_dir / "best.pt"

    def _recalibrate_batch_norm(self, epoch: int, batches: int = 50) -> None:
        """Batch-norm networks: running statistics from ``batches`` fresh training batches, so the
        validated and saved model infers with its average input's statistics (see
        :mod:`medseg.training.norm_stats`). Each rank averages its own batches."""
        from medseg.training.norm_stats import batch_norms, recalibrate_batch_norm

        if not batch_norms(self.module):
            return
        self._seed_epoch(10_000 + epoch)  # a draw of its own: the next epoch's batches are unchanged
        images = (_plain(b["image"]).to(self.device) for _, b in zip(range(batches), self._loader(10_000 + epoch)))
        recalibrate_batch_norm(self.module, images, self._autocast)

    def _train_epoch(self, epoch: int, clock: _Clock) -> tuple[list[float], bool]:
        """One epoch's steps; returns the step losses and whether the time budget ran out."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self._seed_epoch(epoch)
        losses: list[float] = []
        out_of_time = False
        bar = tqdm(total=cfg.steps_per_epoch, desc=f"epoch {epoch}", leave=False,
                   disable=cfg.quiet or not self.dist.is_main or not sys.stderr.isatty())
        for batch in self._loader(epoch):
            t_step = time.monotonic()
            losses.append(self.train_step(batch))
            took = time.monotonic() - t_step
            clock.step_s = took if not clock.step_s else 0.8 * clock.step_s + 0.2 * took
            self.step += 1
            self.elapsed = time.monotonic() - clock.t0
            self.scheduler.step(self.step, self.elapsed)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            self._log_step(epoch, losses, time.monotonic() - t_step, clock.step_s)
            if cfg.max_time_s and self._agree(self.elapsed + clock.step_s + clock.reserve >= cfg.max_time_s):
                out_of_time = True
                break
        bar.close()
        return losses, out_of_time

    def _log_step(self, epoch: int, losses: list[float], took: float, step_s: float) -> None:
        every = self.cfg.log_every
        if self.dist.is_main and not self.cfg.quiet and every and self.step % every == 0:
            log.info("epoch %d step %d loss %.4f (mean of last %d: %.4f) lr %.2e", epoch, self.step, losses[-1],
                     min(len(losses), every), float(np.mean(losses[-every:])), self.scheduler.get_last_lr()[0])
        log.debug("step %d took %.2fs (avg %.2fs), elapsed %.1fs", self.step, took, step_s, self.elapsed)

    def _end_epoch(self, epoch: int, losses: list[float], clock: _Clock,
                   logger: MetricsLogger | None) -> dict[str, Any]:
        """Validate, record the epoch's row and (rank 0) write ``last.pt`` and, if better, ``best.pt``."""
        self._recalibrate_batch_norm(epoch)
        dice = self.validate()
        self.epoch = epoch + 1
        self.elapsed = time.monotonic() - clock.t0
        train_loss = float(np.mean(losses)) if losses else float("nan")
        train_loss = all_reduce_sum([train_loss], self.dist, self.device)[0] / self.dist.world_size
        row = {"epoch": epoch, "step": self.step, "train_loss": round(train_loss, 6),
               "val_dice": None if dice is None else round(dice, 6),
               "lr": self.scheduler.get_last_lr()[0], "time": round(self.elapsed, 2)}
        improved = dice is not None and dice > self.best_metric
        if improved:
            self.best_metric, self.best_epoch = dice, epoch
        self.rows.append(row)
        if logger is not None:
            logger.rows = list(self.rows[:-1])
            logger.log(row)
            metrics = {"val_dice": dice, "epoch": epoch, "step": self.step, "train_loss": train_loss}
            self._save("last.pt", True, metrics)
            if improved or not (self.run_dir / "best.pt").exists():
                self._save("best.pt", False, metrics)
            log.info("epoch %d done: step %d train_loss %.4f val_dice %s (best %s @ epoch %d) lr %.2e time %.0fs",
                     epoch, self.step, train_loss, "n/a" if dice is None else f"{dice:.4f}",
                     "n/a" if not math.isfinite(self.best_metric) else f"{self.best_metric:.4f}",
                     self.best_epoch, row["lr"], self.elapsed)
        return row

    def _should_stop(self, epoch: int, row: dict[str, Any], clock: _Clock) -> bool:
        """The epoch callback asked to stop, ``max_epochs`` is reached or no time is left for another."""
        cfg = self.cfg
        stop = cfg.epoch_callback is not None and bool(cfg.epoch_callback(epoch, row))
        no_time = bool(cfg.max_time_s and self.elapsed + clock.reserve >= cfg.max_time_s)
        return stop or self.epoch >= cfg.max_epochs or no_time

    def _write_final(self) -> None:
        """``final.json`` (rank 0): where training ended and every rank's weight hash."""
        hashes = gather_objects(state_hash(self.model), self.dist)
        if not self.dist.is_main:
            return
        from medseg.io.atomic import write_json_atomic

        write_json_atomic(self.run_dir / "final.json", {
            "epoch": self.epoch, "step": self.step, "elapsed_s": round(self.elapsed, 2),
            "best_val_dice": self.best_metric if math.isfinite(self.best_metric) else None,
            "best_epoch": self.best_epoch, "rank_weight_sha256": hashes,
        })
        if len(set(hashes)) != 1:
            log.warning("ranks ended with different weights: %s", hashes)


@dataclass
class _Clock:
    """Wall-clock bookkeeping of :meth:`Trainer.fit`: start, step time and the validation reserve."""

    t0: float
    step_s: float = 0.0  #: running average of a training step
    reserve: float = 0.0  #: seconds kept free for the final validation + checkpoint
