"""Which torch device to run on: one rule for training and inference."""

from __future__ import annotations

import re

import torch

from medseg.errors import InputError

#: the device names medseg accepts (command line, settings, pipeline files)
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` are checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not DEVICE_PATTERN.fullmatch(str(device)):
        raise InputError(None, f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, f"--device {device} requested but no CUDA device is available")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise InputError(None, f"--device {device} requested but this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return torch.device(device)
