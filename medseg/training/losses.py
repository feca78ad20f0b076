"""Dice + Focal loss with nnU-Net style weighted deep supervision."""

from __future__ import annotations

from typing import Any

import torch


class DeepSupervisedDiceFocal(torch.nn.Module):
    """MONAI ``DiceFocalLoss`` (softmax, one-hot target) summed over deep-supervision heads.

    DynUNet in training mode stacks its heads along dim 1 (``[B, heads, C, ...]``, all upsampled
    to full resolution, full-resolution head first). Head weights are normalised to sum to 1 so
    the loss scale does not depend on the depth.
    """

    def __init__(self, weights: list[float] | None = None, lambda_dice: float = 1.0, lambda_focal: float = 1.0) -> None:
        super().__init__()
        from monai.losses import DiceFocalLoss

        self.loss = DiceFocalLoss(
            to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_focal=lambda_focal,
            smooth_nr=1e-5, smooth_dr=1e-5, batch=True,
        )
        self.weights = list(weights or [1.0, 0.5, 0.25])

    def head_weights(self, heads: int) -> list[float]:
        w = (self.weights + [self.weights[-1] / 2 ** (i + 1) for i in range(heads)])[:heads]
        total = sum(w)
        return [x / total for x in w]

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.dim() == target.dim() + 1:  # stacked deep-supervision heads
            heads = torch.unbind(output, dim=1)
            return sum(w * self.loss(h.float(), target) for w, h in zip(self.head_weights(len(heads)), heads))
        return self.loss(output.float(), target)


def build_loss(task: dict[str, Any]) -> DeepSupervisedDiceFocal:
    cfg = task.get("loss", {})
    return DeepSupervisedDiceFocal(
        weights=[float(w) for w in cfg.get("deep_supervision_weights", [1.0, 0.5, 0.25])],
        lambda_dice=float(cfg.get("lambda_dice", 1.0)),
        lambda_focal=float(cfg.get("lambda_focal", 1.0)),
    )
