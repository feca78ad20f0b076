"""Which torch device to run on (one rule for training and inference), and what the machine is."""

from __future__ import annotations

import platform
import re
from dataclasses import asdict, dataclass

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


@dataclass(frozen=True)
class MachineInfo:
    """What a speed figure depends on: recorded beside every benchmark's timings.

    The same command ran 2.4x (a network window) to 5x (a training step) slower on a 2-core AVX2
    CPU than on an AVX-512 one with native bf16 (where ``precision: auto`` also switches to bf16),
    so a figure without the machine it came from cannot be compared with another.
    """

    cpu: str  #: the CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)
    cpu_capability: str  #: the widest vector ISA torch dispatches to (``AVX512``, ``AVX2``, ...)
    native_bf16: bool  #: whether ``precision: auto`` runs bf16 on this CPU
    torch_threads: int
    torch_version: str
    cuda_device: str | None  #: the first CUDA device's name, or None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def line(self) -> str:
        """One line for a benchmark's printed table."""
        bf16 = "native bf16" if self.native_bf16 else "no native bf16 (auto runs fp32)"
        gpu = f", GPU {self.cuda_device}" if self.cuda_device else ""
        return (f"machine: {self.cpu}, {self.cpu_capability}, {bf16}, {self.torch_threads} torch threads, "
                f"torch {self.torch_version}{gpu}")


def describe_machine() -> MachineInfo:
    """The facts about this machine that a benchmark's speed figures depend on."""
    from medseg.models.precision import cpu_has_native_bf16, cpuinfo_value

    return MachineInfo(
        cpu=cpuinfo_value("model name") or platform.processor() or platform.machine(),
        cpu_capability=str(torch.backends.cpu.get_cpu_capability()),
        native_bf16=cpu_has_native_bf16(),
        torch_threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        cuda_device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    )
