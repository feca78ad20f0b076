"""Training: ``train()`` in :mod:`medseg.training.run`; loop, losses, schedule, DDP and logging."""
