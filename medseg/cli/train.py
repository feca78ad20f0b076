"""``medseg train --task lung_nodule --data DIR [--data DIR2] -o RUN``: train a model from labelled data."""

from __future__ import annotations

import argparse

from medseg.cli._common import add_output_option, device_name
from medseg.plan import NORMS
from medseg.tasks import DEFAULT_TASK, OptimizerTask, TrainingTask, setting_choices


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace("x", ",").split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.replace("x", ",").split(",") if x.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a segmentation model from labelled data",
        description="Train a 3D U-Net (MONAI DynUNet, deep supervision, Dice+Focal loss) from one or more "
        "labelled dataset folders (MSD/nnU-Net dataset.json, image/+mask/ folders, or phantom sets). "
        "Works under torchrun for multi-GPU/multi-node DDP.",
    )
    p.add_argument("--task", default=DEFAULT_TASK,
                   help=f"bundled task name or task YAML file (default {DEFAULT_TASK})")
    p.add_argument("--data", "-i", "--input", dest="data", action="append", required=True, metavar="DIR",
                   help="dataset folder; repeat to combine datasets")
    add_output_option(p, "RUN_DIR", "run folder (plan, split, checkpoints, metrics)", required=True)
    p.add_argument("--fold", type=int, default=0, help="validation fold (default 0)")
    p.add_argument("--folds", type=int, default=None, help="number of folds (default: the task's training.folds)")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--max-time", type=float, default=None, metavar="MINUTES",
                   help="training time budget incl. validation and checkpoints (data preparation excluded)")
    p.add_argument("--device", type=device_name, default="auto", metavar="auto|cpu|cuda|cuda:N",
                   help="training device (default auto); under torchrun each process takes its local rank's GPU")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from last.pt")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--patch-size", type=_ints, default=None, metavar="X,Y,Z", help="override the planned patch size (with --init-weights: a multiple of the model's total stride)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--filters", type=_ints, default=None, metavar="F1,F2,...",
                   help="filters per level (one number = first level, doubled per level)")
    p.add_argument("--spacing", type=_floats, default=None, metavar="X,Y,Z", help="override the target spacing (mm)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--optimizer", choices=setting_choices(OptimizerTask, "name"), default=None,
                   help="default: the task's optimizer.name")
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None, help="data loader worker processes")
    p.add_argument("--val-cases", type=int, default=None, help="validation cases per epoch (0 = all)")
    p.add_argument("--amp", choices=setting_choices(TrainingTask, "amp"), default=None,
                   help="mixed precision (default: the task's training.amp): auto = bf16 on GPUs and on CPUs with native "
                        "bf16 (AVX512_BF16/AMX), else fp32; fp16 is for CUDA")
    p.add_argument("--res-block", action="store_true", default=None, help="residual blocks in the U-Net")
    p.add_argument("--norm", dest="norm_name", choices=NORMS, default=None,
                   help="network normalisation (default: the task's network.norm_name; with --init-weights the "
                        "model's, and another one moves its convolutions over); batch infers with fixed statistics")
    p.add_argument("--dataset-weights", type=_floats, default=None, metavar="W1,W2,...",
                   help="share of sampled patches per --data folder, in order (default: uniform over cases)")
    p.add_argument("--init-weights", default=None, metavar="CKPT",
                   help="fine-tune: start from this model's plan and weights (copy its splits.json into -o first)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-step logs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.api import train

    filters = args.filters
    if filters is not None and len(filters) == 1:
        filters = filters[0]
    best = train(
        args.task, args.data, args.output, fold=args.fold, max_epochs=args.max_epochs,
        max_time_minutes=args.max_time, device=args.device, resume=args.resume,
        folds=args.folds, seed=args.seed, patch_size=args.patch_size, batch_size=args.batch_size,
        filters=filters, spacing=args.spacing, lr=args.lr, optimizer=args.optimizer,
        steps_per_epoch=args.steps_per_epoch, num_workers=args.num_workers, val_cases=args.val_cases,
        amp=args.amp, res_block=args.res_block, quiet=args.quiet, dataset_weights=args.dataset_weights,
        init_weights=args.init_weights, norm_name=args.norm_name,
    )
    print(f"best checkpoint: {best}")
    return 0
