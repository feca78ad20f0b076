"""Dice + Focal loss with nnU-Net style weighted deep supervision."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from medseg.tasks import LossTask


class DeepSupervisedDiceFocal(torch.nn.Module):
    """MONAI ``DiceFocalLoss`` (softmax, one-hot target) summed over deep-supervision heads.

    DynUNet in training mode stacks its heads along dim 1 (``[B, heads, C, ...]``, all upsampled
    to full resolution, full-resolution head first). Head weights are normalised to sum to 1 so
    the loss scale does not depend on the depth.
    """

    def __init__(self, weights: Sequence[float], lambda_dice: float, lambda_focal: float) -> None:
        super().__init__()
        from monai.losses import DiceFocalLoss

        self.loss = DiceFocalLoss(
            to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_focal=lambda_focal,
            smooth_nr=1e-5, smooth_dr=1e-5, batch=True,
        )
        self.weights = [float(w) for w in weights]

    def head_weights(self, heads: int) -> list[float]:
        w = (self.weights + [self.weights[-1] / 2 ** (i + 1) for i in range(heads)])[:heads]
        total = sum(w)
        return [x / total for x in w]

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.dim() == target.dim() + 1:  # stacked deep-supervision heads
            heads = torch.unbind(output, dim=1)
            return sum(w * self.loss(h.float(), target) for w, h in zip(self.head_weights(len(heads)), heads))
        return self.loss(output.float(), target)


def build_loss(cfg: LossTask | None = None) -> DeepSupervisedDiceFocal:
    """The loss a task's ``loss`` section describes (None: the task defaults)."""
    from medseg.tasks import LossTask

    cfg = cfg if cfg is not None else LossTask()
    return DeepSupervisedDiceFocal(cfg.deep_supervision_weights, cfg.lambda_dice, cfg.lambda_focal)
