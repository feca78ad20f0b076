"""Batch-norm running statistics measured on many training batches ("precise BN").

A batch-norm network infers with running statistics. During training they are an exponential
average (momentum 0.1) over the last few small batches, so they follow whichever dataset the
last batches came from. Before each validation and checkpoint they are recomputed as the plain
average over ``batches`` fresh training batches (Wu & Johnson, "Rethinking 'Batch' in BatchNorm",
2021), so what is validated and saved is the network's average input, not its last one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch

_BatchNorm = torch.nn.modules.batchnorm._BatchNorm


def batch_norms(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's batch-norm layers (none for an instance-norm network)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batch_norm(
    model: torch.nn.Module,
    images: Iterable[torch.Tensor],
    autocast: Callable[[], AbstractContextManager] | None = None,
) -> int:
    """Recompute every batch-norm layer's running statistics as the mean over ``images`` (input
    batches, already on the model's device). Weights are untouched; the model's train/eval mode
    is restored. Returns the number of batches used (0: no batch norm, nothing done)."""
    norms = batch_norms(model)
    if not norms:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    model.train()
    n = 0
    for x in images:
        if autocast is None:
            model(x)
        else:
            with autocast():
                model(x)
        n += 1
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return n
